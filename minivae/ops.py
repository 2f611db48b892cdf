"""The ops: primitives, each with its VJP right below it, then composites built from them.

A VJP (vector-Jacobian product) answers: given g = d loss / d ans for the op's output `ans`,
what is d loss / d input? Each is written as `vjp(g, ans, *inputs, **params)` for one input.
VJPs return gradients shaped like `ans` (or like the input); the engine undoes broadcasting.

Primitives exist only where a composite would be numerically unstable (softplus, sigmoid,
logsumexp), much slower (gru_sequence: a whole recurrent layer, backpropagated through time by
hand), or where they are the building blocks. Composites at the bottom of the file
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


def flush_subnormals(a, scratch=None, below=None, signed=True):
    """Set the subnormal entries of a (0 < |a| < tiny, 1.2e-38 in float32) to 0, in place; return a.

    x86 CPUs do arithmetic on subnormal numbers many times more slowly than on others, in every
    op and matrix product they flow into. Exponential tails make them: a trained MNIST decoder
    gives the always-blank border pixels logits below -87, where exp(-|x|) and sigmoid
    (softplus's derivative) are subnormal in float32, and its training step ran 2.7x slower
    (11 ms instead of 4); Adam's moments decay into them (see optim.py). Values this small are
    below float32's resolution next to any normal number they are added to, so 0 changes no sum
    of them; float64 (tiny 2.2e-308) is practically never affected. `scratch` (float) and
    `below` (bool), shaped like a, save the two temporaries on a hot path; signed=False skips
    |a| for an array known to be >= 0. Writing zeros only where `below` is true is a third
    faster than multiplying the whole array by a 0/1 mask.
    """
    a = np.asarray(a)  # a NumPy scalar (from 0-d inputs) becomes a 0-d array that copyto can write
    magnitude = np.abs(a, out=scratch) if signed else a
    below = np.less(magnitude, np.finfo(a.dtype).tiny, out=below)
    np.copyto(a, 0, where=below)
    return a


@primitive
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for any x.

    VJP: g*sigmoid(x), computed as g*exp(x - ans): log(sigmoid(x)) = x - softplus(x) exactly, and
    x - ans <= 0, so this never overflows and costs one exp. exp(-|x|) and the gradient have
    their entries below the smallest normal number set to 0 (see flush_subnormals): they are
    slow, not informative (log1p alone took 15x longer on an array with 3% of them).
    """
    return np.maximum(x, 0) + np.log1p(flush_subnormals(np.exp(-np.abs(x)), signed=False))
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
    (H, V) product, forwards and backwards: several times faster than one product per b.
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


# ===================================================================== fused recurrent network
# A GRU unrolled from the ops above (layers.GRUCell, the readable reference) records ~20 graph
# nodes per time step, each with its own Python overhead forwards and backwards. This one
# primitive runs the whole sequence and backpropagates through it by hand: one node, one small
# matmul per step in each direction, and every other matmul done once for all steps.
def _in_time_order(reverse, *arrays):
    """The arrays with their time axis (axis 1) reversed if `reverse` (views: nothing is copied)."""
    return [a[:, ::-1] if reverse else a for a in arrays]


def _gate(x):
    """sigmoid(x) = 0.5 + 0.5 * tanh(0.5 * x): stable, and half the passes of _stable_sigmoid.

    Near 0 it is accurate to ~1e-8 absolute (float32), not relative: enough for a gate, which
    multiplies O(1) values, though not for ops.sigmoid (a log-probability may use its tail).
    """
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _gru_shapes(x_proj, h0, W_h, b_h, mask):
    """(B, T, H) after checking that the inputs of gru_sequence fit together."""
    B, T, H3 = x_proj.shape if x_proj.ndim == 3 else (0, 0, -1)
    H = H3 // 3
    if (H3 != 3 * H or H < 1 or h0.shape != (B, H) or W_h.shape != (H, 3 * H) or b_h.shape != (3 * H,)
            or np.shape(mask) != (B, T)):
        raise ValueError(f"expected x_proj (B, T, 3H), h0 (B, H), W_h (H, 3H), b_h (3H,) and mask "
                         f"(B, T), got mask {np.shape(mask)}")
    return B, T, H


@primitive
def gru_sequence(x_proj, h0, W_h, b_h, *, mask, reverse=False):
    """The outputs of a GRU run over a padded batch, from every step's input projection.

    x_proj (B, T, 3H) = x @ W_x + b_x for all steps (one large matmul, done by the caller);
    h0 (B, H) the initial state; W_h (H, 3H), b_h (3H,) the recurrent weights, gates stacked in
    the order r, z, n as in layers.GRUCell (PyTorch's layout); mask (B, T) true at real tokens.
    Step t (t = 0, ..., T-1, or T-1, ..., 0 with reverse=True), where a_r, a_z, a_n are the
    thirds of x_proj[:, t] and p_r, p_z, p_n those of p = h @ W_h + b_h:
        r = sigmoid(a_r + p_r)    z = sigmoid(a_z + p_z)    n = tanh(a_n + r * p_n)
        h_new = (1 - z) * n + z * h
        h = h_new where mask[:, t], else h unchanged;    outputs[:, t] = h_new, or 0 where not mask
    Returns outputs (B, T, H). The final state is the output of each row's last real step in the
    order of processing: outputs[arange(B), lengths - 1] with padding at the end, outputs[:, 0]
    with reverse=True (layers.GRU picks it so).

    VJP: backpropagation through time. A primitive's forward can keep nothing for its VJP, but
    `ans` holds every state, so the VJP rebuilds h_prev (the state each step started from: the
    output of the previous real step, or h0) and recomputes r, z, n, p for all steps at once,
    with one matmul. Let g_t = dL/dh after step t: the output's gradient at t plus what flows
    back from step t+1. At a real step the chain rule through the equations above gives
        da_n = g_t * (1 - z) * (1 - n**2)         dp_n = da_n * r
        da_r = da_n * p_n * r * (1 - r)           dp_r = da_r
        da_z = g_t * (h_prev - n) * z * (1 - z)   dp_z = da_z
        g_{t-1} = (output gradient at t-1) + g_t * z + [dp_r, dp_z, dp_n] @ W_h.T
    At a padded step h passes through: da = dp = 0 and g_t flows on unchanged (as if z = 1).
    Each da and dp is g_t times a coefficient that does not depend on g, so the coefficients
    are computed for all steps before the loop, which is left with one (B, 3H) @ (3H, H) matmul
    per step. After it: dx_proj[:, t] = [da_r, da_z, da_n], dW_h = sum_t h_prev[:, t].T @ dp[:, t]
    (one matmul over all steps), db_h = dp summed over B and T, dh0 = g before the first step.
    Reference: Cho et al. 2014, arXiv:1406.1078, Sec. 2.3, eqs. 5-8 (reset-after variant, as cuDNN).
    """
    B, T, H = _gru_shapes(x_proj, h0, W_h, b_h, mask)
    x_proj, mask = _in_time_order(reverse, x_proj, np.asarray(mask, dtype=bool))
    outputs = np.empty((B, T, H), dtype=x_proj.dtype)
    h = h0
    for t in range(T):
        a, p = x_proj[:, t], h @ W_h + b_h                               # (B, 3H) each
        rz = _gate(a[:, :2 * H] + p[:, :2 * H])                          # [r, z]  (B, 2H)
        r, z = rz[:, :H], rz[:, H:]
        n = np.tanh(a[:, 2 * H:] + r * p[:, 2 * H:])
        outputs[:, t] = h_new = n + z * (h - n)                          # = (1 - z) * n + z * h
        h = np.where(mask[:, t, None], h_new, h)
    outputs[~mask] = 0
    return outputs[:, ::-1] if reverse else outputs


def _gru_sequence_vjp(g, ans, x_proj, h0, W_h, b_h, mask, reverse):
    B, T, H = ans.shape
    g, ans, x_proj, mask = _in_time_order(reverse, g, ans, x_proj, np.asarray(mask, dtype=bool))
    real = mask[:, :, None]                                              # (B, T, 1)
    # h_prev[:, t]: the output of the last real step before t, or h0 (index 0 of `states`).
    last_real = np.maximum.accumulate(np.where(mask, np.arange(T), -1), axis=1)
    before = np.concatenate([np.full((B, 1), -1), last_real[:, :-1]], axis=1)
    states = np.concatenate([h0[:, None], ans], axis=1)                  # (B, 1 + T, H)
    h_prev = states[np.arange(B)[:, None], before + 1]                   # (B, T, H)

    p = _stacked_times_matrix(h_prev, W_h) + b_h                        # (B, T, 3H)
    rz = _gate(x_proj[..., :2 * H] + p[..., :2 * H])
    r, z, p_n = rz[..., :H], rz[..., H:], p[..., 2 * H:]
    n = np.tanh(x_proj[..., 2 * H:] + r * p_n)
    c_n = (1 - z) * (1 - n * n) * real                                   # da_n = g_t * c_n
    c_p = np.empty((B, T, 3, H), dtype=ans.dtype)                        # dp = g_t * c_p
    c_p[:, :, 0] = c_n * p_n * (r - r * r)
    c_p[:, :, 1] = (h_prev - n) * (z - z * z) * real
    c_p[:, :, 2] = c_n * r
    carry = np.where(real, z, 1)                                         # dh_prev = g_t * carry + ...

    g = g * real  # a padded output is the constant 0
    g_t, gs, dp = np.zeros_like(h0), np.empty_like(ans), np.empty_like(c_p)
    W_hT = W_h.T
    for t in reversed(range(T)):
        gs[:, t] = g_t = g[:, t] + g_t
        dp[:, t] = g_t[:, None, :] * c_p[:, t]
        g_t = g_t * carry[:, t] + dp[:, t].reshape(B, 3 * H) @ W_hT      # now dL/dh before step t

    dx_proj = dp.copy()  # da_r = dp_r and da_z = dp_z; only da_n differs
    np.multiply(gs, c_n, out=dx_proj[:, :, 2])
    dx_proj, dp = dx_proj.reshape(B, T, 3 * H), dp.reshape(B * T, 3 * H)
    dW_h = h_prev.reshape(B * T, H).T @ dp
    return (dx_proj[:, ::-1] if reverse else dx_proj), g_t, dW_h, dp.sum(axis=0)
gru_sequence.defvjp_all(_gru_sequence_vjp)


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
