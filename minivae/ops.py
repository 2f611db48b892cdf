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


def flush_subnormals(a):
    """Set the subnormal entries of a (0 < |a| < tiny, 1.2e-38 in float32) to 0, in place; return a.

    Values this small are below float32's resolution next to any normal number they meet, so 0
    changes no sum of them; float64 (tiny 2.2e-308) is practically never affected.
    """
    a = np.asarray(a)  # a NumPy scalar (from 0-d inputs) becomes a 0-d array that copyto can write
    # buys 2.7x on a trained MNIST decoder's step (11 -> 4 ms): x86 computes slowly on subnormals
    np.copyto(a, 0, where=np.abs(a) < np.finfo(a.dtype).tiny)
    return a


@primitive
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for any x.

    VJP: g*sigmoid(x), computed as g*exp(x - ans): log(sigmoid(x)) = x - softplus(x) exactly, and
    x - ans <= 0, so this never overflows and costs one exp. exp(-|x|) (below -87 in float32) and
    the gradient have their subnormal entries set to 0 by flush_subnormals.
    """
    return np.maximum(x, 0) + np.log1p(flush_subnormals(np.exp(-np.abs(x))))
softplus.defvjp(lambda g, ans, x: flush_subnormals(g * np.exp(x - ans)))


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
    e = _exp_of_difference(x, m)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for an empty sum
        out = np.log(np.sum(e, axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else np.squeeze(out, axis=axis)


def _exp_of_difference(x, y):
    """exp(x - y) shaped like x, computed in one new array (the arrays can be (B, T, vocabulary) large)."""
    out = np.subtract(x, y, out=np.empty_like(x))
    return np.exp(out, out=out)


def _logsumexp_vjp(g, ans, x, axis, keepdims):
    # BEGIN SOLUTION ops: g * softmax(x), with softmax(x) = exp(x - ans) (_expand g and ans first)
    softmax = _exp_of_difference(x, _expand(ans, x, axis, keepdims))
    return np.multiply(softmax, _expand(g, x, axis, keepdims), out=softmax)
    # END SOLUTION
logsumexp.defvjp(_logsumexp_vjp)


# ===================================================================== linear algebra
def _stacked_times_matrix(x, w):
    """x (..., n, k) @ w (k, m) as ONE (N, k) @ (k, m) product: np.matmul would do one per leading index."""
    return np.matmul(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


def _matmul_vjp_x(g, ans, x, y):
    # BEGIN SOLUTION ops: g @ y.T (swap y's last two axes); treat a vector x as (1, k), y as (k, 1)
    if y.ndim == 1:  # (..., k) @ (k,) -> (...): the outer product of g and y
        return g[..., None] * y
    if y.ndim == 2 and x.ndim > 2:
        return _stacked_times_matrix(g, y.T)
    gx = g[..., None, :] if x.ndim == 1 else g  # a vector x acted as a (1, k) matrix
    out = gx @ np.swapaxes(y, -1, -2)
    return out[..., 0, :] if x.ndim == 1 else out
    # END SOLUTION


def _matmul_vjp_y(g, ans, x, y):
    # BEGIN SOLUTION ops: x.T @ g (swap x's last two axes); the engine sums over broadcast batch axes
    if x.ndim == 1:  # (k,) @ (..., k, m) -> (..., m)
        return x[:, None] * g[..., None, :]
    if y.ndim == 2 and x.ndim > 2:  # the sum over the leading axes happens inside one product
        return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    gy = g[..., None] if y.ndim == 1 else g  # a vector y acted as a (k, 1) matrix
    out = np.swapaxes(x, -1, -2) @ gy
    return out[..., 0] if y.ndim == 1 else out
    # END SOLUTION


@primitive
def matmul(x, y):
    """Matrix product x @ y (batched over leading axes, as np.matmul).

    VJP: g @ y.T for x and x.T @ g for y (leading batch axes are summed by the engine). A stack
    of matrices times one matrix, e.g. (B, T, H) @ (H, V), is computed as a single (B*T, H) @
    (H, V) product, forwards and backwards, rather than as one product per b.
    """
    k_y = y.shape[0] if y.ndim == 1 else y.shape[-2]
    if x.ndim == 0 or y.ndim == 0 or x.shape[-1] != k_y:
        raise ValueError(f"inner dimensions must agree, got {x.shape[-1:]} and ({k_y},)")
    if y.ndim == 2 and x.ndim > 2:
        return _stacked_times_matrix(x, y)
    return np.matmul(x, y)
matmul.defvjp(_matmul_vjp_x, _matmul_vjp_y)


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


# ===================================================================== composites (no VJP needed)
def mean(x, axis=None, keepdims=False):
    """Average over `axis`: sum / count."""
    shape = np.shape(x.data if isinstance(x, Tensor) else x)
    axes = range(len(shape)) if axis is None else np.atleast_1d(axis)
    count = int(np.prod([shape[a] for a in axes]))
    return sum(x, axis, keepdims) / count


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
Tensor.sum = lambda x, axis=None, keepdims=False: sum(x, axis, keepdims)
Tensor.mean = lambda x, axis=None, keepdims=False: mean(x, axis, keepdims)
Tensor.max = lambda x, axis=None, keepdims=False: max(x, axis, keepdims)
Tensor.astype = lambda x, dtype: astype(x, dtype=dtype)
