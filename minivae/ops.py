"""The ops: primitives, each with its VJP right below it, then composites built from them.

A VJP (vector-Jacobian product) answers: given g = d loss / d ans for the op's output `ans`,
what is d loss / d input? Each is written as `vjp(g, ans, *inputs, **params)` for one input.
VJPs return gradients shaped like `ans` (or like the input); the engine undoes broadcasting.

Primitives exist only where they are the building blocks or where a composite would be
numerically unstable (softplus, sigmoid, logsumexp). Composites after them (mean, var, softmax,
log_softmax, square, clip, ...) need no gradient code at all. The bottom of the file gives
Tensor its operators and methods (x + y, x @ W, x.sum(), x.T, ...), each a call of an op here,
as HIPS autograd's ArrayBox does.

All functions accept Tensors, arrays or Python numbers and return Tensors; names follow NumPy.
"""
import builtins

import numpy as np

from .engine import Tensor, primitive


# ===================================================================== elementwise arithmetic
@primitive
def add(x, y):
    """x + y.  VJP: g for both inputs."""
    return x + y
add.defvjp(lambda g, ans, x, y: g,
           lambda g, ans, x, y: g)


@primitive
def subtract(x, y):
    """x - y.  VJP: g and -g."""
    return x - y
subtract.defvjp(lambda g, ans, x, y: g,
                lambda g, ans, x, y: -g)


@primitive
def multiply(x, y):
    """x * y.  VJP: g*y and g*x."""
    return x * y
# BEGIN SOLUTION ops: one VJP per input: g times the derivative of x*y by that input
multiply.defvjp(lambda g, ans, x, y: g * y,
                lambda g, ans, x, y: g * x)
# END SOLUTION


@primitive
def divide(x, y):
    """x / y.  VJP: g/y and -g*x/y**2 = -g*ans/y."""
    return x / y
# BEGIN SOLUTION ops: d(x/y)/dx = 1/y and d(x/y)/dy = -x/y**2; ans = x/y saves a division
divide.defvjp(lambda g, ans, x, y: g / y,
              lambda g, ans, x, y: -g * ans / y)
# END SOLUTION


@primitive
def negative(x):
    """-x.  VJP: -g."""
    return -x
negative.defvjp(lambda g, ans, x: -g)


@primitive
def power(x, y):
    """x ** y.  VJP: g*y*x**(y-1) and g*ans*log(x) (the latter needs x > 0)."""
    return x ** y
power.defvjp(lambda g, ans, x, y: g * y * x ** (y - 1),
             lambda g, ans, x, y: g * ans * np.log(x))


# ===================================================================== elementwise functions
@primitive
def exp(x):
    """e**x.  VJP: g*ans."""
    return np.exp(x)
# BEGIN SOLUTION ops: the derivative of e**x is e**x, which is already computed: ans
exp.defvjp(lambda g, ans, x: g * ans)
# END SOLUTION


@primitive
def log(x):
    """Natural logarithm.  VJP: g/x."""
    return np.log(x)
# BEGIN SOLUTION ops: d log(x) / dx = 1/x
log.defvjp(lambda g, ans, x: g / x)
# END SOLUTION


@primitive
def sqrt(x):
    """Square root.  VJP: g*0.5/ans."""
    return np.sqrt(x)
sqrt.defvjp(lambda g, ans, x: g * 0.5 / ans)


@primitive
def tanh(x):
    """Hyperbolic tangent.  VJP: g*(1 - ans**2)."""
    return np.tanh(x)
# BEGIN SOLUTION ops: write tanh'(x) with the output ans = tanh(x)
tanh.defvjp(lambda g, ans, x: g * (1 - ans * ans))
# END SOLUTION


def _stable_sigmoid(x):
    # 1/(1+exp(-x)) overflows exp for x << 0; use exp(x)/(1+exp(x)) there: e = exp(-|x|) <= 1.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


@primitive
def sigmoid(x):
    """Logistic function 1/(1+exp(-x)), never overflowing.  VJP: g*ans*(1-ans)."""
    return _stable_sigmoid(x)
# BEGIN SOLUTION ops: write sigmoid'(x) with the output ans = sigmoid(x)
sigmoid.defvjp(lambda g, ans, x: g * ans * (1 - ans))
# END SOLUTION


@primitive
def relu(x):
    """max(x, 0).  VJP: g where x > 0, else 0."""
    return np.maximum(x, 0)
relu.defvjp(lambda g, ans, x: g * (x > 0))


@primitive
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for any x.  VJP: g*sigmoid(x)."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
softplus.defvjp(lambda g, ans, x: g * _stable_sigmoid(x))


@primitive
def abs(x):
    """|x|.  VJP: g*sign(x) (0 at the kink)."""
    return np.abs(x)
abs.defvjp(lambda g, ans, x: g * np.sign(x))


@primitive
def maximum(x, y):
    """Elementwise max(x, y).  VJP: g goes to the larger input (to x on ties)."""
    return np.maximum(x, y)
maximum.defvjp(lambda g, ans, x, y: g * (x >= y),
               lambda g, ans, x, y: g * (x < y))


@primitive
def astype(x, *, dtype):
    """x converted to another float dtype, explicitly.  VJP: g converted back."""
    return x.astype(dtype)
astype.defvjp(lambda g, ans, x, dtype: g.astype(x.dtype))


# ===================================================================== reductions
def _expand(g, x, axis, keepdims):
    """Reshape a reduced gradient so it broadcasts against the unreduced input x."""
    if axis is not None and not keepdims:
        g = np.expand_dims(g, axis)
    return g


@primitive
def sum(x, *, axis=None, keepdims=False):
    """Sum over `axis` (all axes when None).  VJP: g copied back over the summed axes."""
    return np.sum(x, axis=axis, keepdims=keepdims)
# BEGIN SOLUTION ops: copy g back over the summed axes (_expand, then np.broadcast_to x's shape)
sum.defvjp(lambda g, ans, x, axis, keepdims:
           np.broadcast_to(_expand(g, x, axis, keepdims), x.shape))
# END SOLUTION


@primitive
def max(x, *, axis=None, keepdims=False):
    """Maximum over `axis`.  VJP: g shared equally among the entries that attain the maximum."""
    return np.max(x, axis=axis, keepdims=keepdims)


def _max_vjp(g, ans, x, axis, keepdims):
    at_max = x == _expand(ans, x, axis, keepdims)
    count = np.sum(at_max, axis=axis, keepdims=True).astype(x.dtype)
    return _expand(g, x, axis, keepdims) * at_max / count
max.defvjp(_max_vjp)


@primitive
def logsumexp(x, *, axis=None, keepdims=False):
    """log(sum(exp(x))) over `axis`, computed as m + log(sum(exp(x - m))) with m = max(x).

    Subtracting the max keeps every exp() in (0, 1], so nothing overflows.
    VJP: g * softmax(x) = g * exp(x - ans).
    """
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # an all -inf slice gives -inf, not nan
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for an empty sum
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else np.squeeze(out, axis=axis)


def _logsumexp_vjp(g, ans, x, axis, keepdims):
    # BEGIN SOLUTION ops: g * softmax(x), with softmax(x) = exp(x - ans) (_expand g and ans first)
    return _expand(g, x, axis, keepdims) * np.exp(x - _expand(ans, x, axis, keepdims))
    # END SOLUTION
logsumexp.defvjp(_logsumexp_vjp)


# ===================================================================== linear algebra
def _matmul_vjp_x(g, ans, x, y):
    # BEGIN SOLUTION ops: g @ y.T, with .T swapping the last two axes (np.swapaxes(y, -1, -2))
    return g @ np.swapaxes(y, -1, -2)
    # END SOLUTION


def _matmul_vjp_y(g, ans, x, y):
    # BEGIN SOLUTION ops: x.T @ g, with .T swapping the last two axes; the engine sums over batch axes
    return np.swapaxes(x, -1, -2) @ g
    # END SOLUTION


@primitive
def _matmul(x, y):
    """Matrix product x @ y of arrays with at least 2 axes, batched over leading axes as np.matmul.

    VJP: g @ y.T for x and x.T @ g for y, .T swapping the last two axes; a batch axis one input
    broadcast is summed back by the engine.
    """
    return np.matmul(x, y)
_matmul.defvjp(_matmul_vjp_x, _matmul_vjp_y)


# ===================================================================== shape and indexing
@primitive
def reshape(x, *, shape):
    """x with a new shape.  VJP: g reshaped back."""
    return np.reshape(x, shape)
reshape.defvjp(lambda g, ans, x, shape: np.reshape(g, x.shape))


@primitive
def transpose(x, *, axes=None):
    """x with its axes permuted (reversed when axes is None).  VJP: g with the inverse permutation."""
    return np.transpose(x, axes)
transpose.defvjp(lambda g, ans, x, axes:
                 np.transpose(g, None if axes is None else np.argsort(axes)))


@primitive
def _concatenate(*xs, axis=0):
    """Join arrays along an existing axis.  VJP: g cut back into the pieces."""
    return np.concatenate(xs, axis=axis)


def _concatenate_vjp(g, ans, *xs, axis):
    cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return np.split(g, cuts, axis=axis)
_concatenate.defvjp_all(_concatenate_vjp)


@primitive
def _stack(*xs, axis=0):
    """Join same-shaped arrays along a new axis.  VJP: g sliced along that axis."""
    return np.stack(xs, axis=axis)
_stack.defvjp_all(lambda g, ans, *xs, axis: [np.take(g, i, axis=axis) for i in range(len(xs))])


@primitive
def getitem(x, *, index):
    """x[index] for basic (slices, ints) and integer-array indexing.

    VJP: scatter-add g into zeros shaped like x. With integer arrays an entry may be picked
    several times (an embedding lookup), so the scatter must add, not assign: np.add.at.
    """
    return x[index]


def _getitem_vjp(g, ans, x, index):
    gx = np.zeros_like(x)
    parts = index if isinstance(index, tuple) else (index,)
    if builtins.any(isinstance(p, (list, np.ndarray)) for p in parts):
        np.add.at(gx, index, g)
    else:  # basic indexing picks each entry at most once
        gx[index] = g
    return gx
getitem.defvjp(_getitem_vjp)


@primitive
def _where(x, y, *, cond):
    """x where cond is true, else y.  VJP: g masked by cond for x and by ~cond for y."""
    return np.where(cond, x, y)
_where.defvjp(lambda g, ans, x, y, cond: np.where(cond, g, 0),
              lambda g, ans, x, y, cond: np.where(cond, 0, g))


# ===================================================================== public wrappers
def concatenate(xs, axis=0):
    """Join a sequence of tensors along an existing axis (as np.concatenate)."""
    return _concatenate(*xs, axis=axis)


def stack(xs, axis=0):
    """Join a sequence of same-shaped tensors along a new axis (as np.stack)."""
    return _stack(*xs, axis=axis)


def where(cond, x, y):
    """x where the boolean array `cond` is true, else y (as np.where). `cond` has no gradient."""
    return _where(x, y, cond=np.asarray(cond.data if isinstance(cond, Tensor) else cond, dtype=bool))


def matmul(x, y):
    """Matrix product x @ y as np.matmul: a vector x acts as one row (1, k), a vector y as one column (k, 1)."""
    ndim_x, ndim_y = (np.ndim(a.data if isinstance(a, Tensor) else a) for a in (x, y))
    if ndim_x == 0 or ndim_y == 0:
        shapes = [np.shape(a.data if isinstance(a, Tensor) else a) for a in (x, y)]
        raise ValueError(f"op 'matmul': a scalar operand is not allowed (got shapes {shapes[0]} and "
                         f"{shapes[1]}), as in NumPy; scale with * instead")
    if ndim_y == 1:  # (..., k) @ (k,) is (..., k) @ (k, 1) without its last axis
        out = matmul(x, reshape(y, shape=(-1, 1)))
        return reshape(out, shape=out.shape[:-1])
    if ndim_x == 1:  # (k,) @ (..., k, m) is (1, k) @ (..., k, m) without its second-to-last axis
        out = _matmul(reshape(x, shape=(1, -1)), y)
        return reshape(out, shape=out.shape[:-2] + out.shape[-1:])
    return _matmul(x, y)


# ===================================================================== composites (no VJP needed)
def mean(x, axis=None, keepdims=False):
    """Average over `axis`: sum / count."""
    shape = np.shape(x.data if isinstance(x, Tensor) else x)
    axes = range(len(shape)) if axis is None else np.atleast_1d(axis)
    count = int(np.prod([shape[a] for a in axes]))
    return sum(x, axis=axis, keepdims=keepdims) / count


def var(x, axis=None, keepdims=False):
    """Biased variance over `axis`: mean((x - mean(x))**2)."""
    return mean(square(x - mean(x, axis, keepdims=True)), axis, keepdims)


def square(x):
    """x * x."""
    return multiply(x, x)


def minimum(x, y):
    """Elementwise min(x, y) = -max(-x, -y)."""
    return negative(maximum(negative(x), negative(y)))


def clip(x, lo, hi):
    """x limited to [lo, hi]; the gradient is zero where clipping happened."""
    return minimum(maximum(x, lo), hi)


def log_softmax(x, axis=-1):
    """log(softmax(x)) = x - logsumexp(x): stable for any logits."""
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)), computed as exp(log_softmax(x))."""
    return exp(log_softmax(x, axis))


def log_sigmoid(x):
    """log(sigmoid(x)) = -softplus(-x), finite for any x."""
    return negative(softplus(negative(x)))


def stop_gradient(x):
    """The same values, but no gradient flows back through them."""
    return Tensor(x.data if isinstance(x, Tensor) else x)


def straight_through(x, y):
    """Forward value y, gradient as if it were x: x + stop_gradient(y - x) (Bengio et al. 2013)."""
    return add(x, stop_gradient(subtract(y, x)))


# ===================================================================== Tensor's operators
def _index_data(index):
    """An index may hold Tensors (e.g. token ids); numpy needs their arrays."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


def _transpose_method(x, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = axes[0]
    return transpose(x, axes=tuple(axes) or None)


# Python calls these with the Tensor first: x + 2 is x.__add__(2), 2 + x is x.__radd__(2).
Tensor.__add__, Tensor.__radd__ = lambda x, y: add(x, y), lambda x, y: add(y, x)
Tensor.__sub__, Tensor.__rsub__ = lambda x, y: subtract(x, y), lambda x, y: subtract(y, x)
Tensor.__mul__, Tensor.__rmul__ = lambda x, y: multiply(x, y), lambda x, y: multiply(y, x)
Tensor.__truediv__, Tensor.__rtruediv__ = lambda x, y: divide(x, y), lambda x, y: divide(y, x)
Tensor.__matmul__, Tensor.__rmatmul__ = lambda x, y: matmul(x, y), lambda x, y: matmul(y, x)
Tensor.__pow__, Tensor.__rpow__ = lambda x, y: power(x, y), lambda x, y: power(y, x)
Tensor.__neg__ = lambda x: negative(x)
Tensor.__getitem__ = lambda x, index: getitem(x, index=_index_data(index))
Tensor.T = property(lambda x: transpose(x))
Tensor.reshape = lambda x, *shape: reshape(x, shape=shape[0] if len(shape) == 1 else shape)
Tensor.transpose = _transpose_method
Tensor.sum = lambda x, axis=None, keepdims=False: sum(x, axis=axis, keepdims=keepdims)
Tensor.mean = lambda x, axis=None, keepdims=False: mean(x, axis, keepdims)
Tensor.max = lambda x, axis=None, keepdims=False: max(x, axis=axis, keepdims=keepdims)
Tensor.astype = lambda x, dtype: astype(x, dtype=dtype)
