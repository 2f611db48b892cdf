"""The ops: primitives, each with its VJP right below it, then composites built from them.

A VJP (vector-Jacobian product) answers: given g = d loss / d ans for the op's output `ans`,
what is d loss / d input? Each is written as `vjp(g, ans, *inputs, **params)` for one input.
VJPs return gradients shaped like `ans` (or like the input); the engine undoes broadcasting.

Primitives exist only where a composite would be numerically unstable (softplus, sigmoid,
logsumexp) or where they are the building blocks. Composites at the bottom of the file
(mean, var, softmax, log_softmax, square, clip, ...) need no gradient code at all.

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
multiply.defvjp(lambda g, ans, x, y: g * y,
                lambda g, ans, x, y: g * x)


@primitive
def divide(x, y):
    """x / y.  VJP: g/y and -g*x/y**2 = -g*ans/y."""
    return x / y
divide.defvjp(lambda g, ans, x, y: g / y,
              lambda g, ans, x, y: -g * ans / y)


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
exp.defvjp(lambda g, ans, x: g * ans)


@primitive
def log(x):
    """Natural logarithm.  VJP: g/x."""
    return np.log(x)
log.defvjp(lambda g, ans, x: g / x)


@primitive
def sqrt(x):
    """Square root.  VJP: g*0.5/ans."""
    return np.sqrt(x)
sqrt.defvjp(lambda g, ans, x: g * 0.5 / ans)


@primitive
def tanh(x):
    """Hyperbolic tangent.  VJP: g*(1 - ans**2)."""
    return np.tanh(x)
tanh.defvjp(lambda g, ans, x: g * (1 - ans * ans))


def _stable_sigmoid(x):
    # 1/(1+exp(-x)) overflows exp for x << 0; use exp(x)/(1+exp(x)) there: e = exp(-|x|) <= 1.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


@primitive
def sigmoid(x):
    """Logistic function 1/(1+exp(-x)), never overflowing.  VJP: g*ans*(1-ans)."""
    return _stable_sigmoid(x)
sigmoid.defvjp(lambda g, ans, x: g * ans * (1 - ans))


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
sum.defvjp(lambda g, ans, x, axis, keepdims:
           np.broadcast_to(_expand(g, x, axis, keepdims), x.shape))


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
logsumexp.defvjp(lambda g, ans, x, axis, keepdims:
                 _expand(g, x, axis, keepdims) * np.exp(x - _expand(ans, x, axis, keepdims)))


# ===================================================================== linear algebra
def _matmul_vjp_x(g, ans, x, y):
    if y.ndim == 1:  # (..., k) @ (k,) -> (...): the outer product of g and y
        return g[..., None] * y
    gx = g[..., None, :] if x.ndim == 1 else g  # a vector x acted as a (1, k) matrix
    out = gx @ np.swapaxes(y, -1, -2)
    return out[..., 0, :] if x.ndim == 1 else out


def _matmul_vjp_y(g, ans, x, y):
    if x.ndim == 1:  # (k,) @ (..., k, m) -> (..., m)
        return x[:, None] * g[..., None, :]
    gy = g[..., None] if y.ndim == 1 else g  # a vector y acted as a (k, 1) matrix
    out = np.swapaxes(x, -1, -2) @ gy
    return out[..., 0] if y.ndim == 1 else out


@primitive
def matmul(x, y):
    """Matrix product x @ y (batched over leading axes, as np.matmul).

    VJP: g @ y.T for x and x.T @ g for y (leading batch axes are summed by the engine).
    """
    k_y = y.shape[0] if y.ndim == 1 else y.shape[-2]
    if x.ndim == 0 or y.ndim == 0 or x.shape[-1] != k_y:
        raise ValueError(f"inner dimensions must agree, got {x.shape[-1:]} and ({k_y},)")
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
