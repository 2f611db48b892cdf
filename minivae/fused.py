"""Fused primitives: a computation the other ops could express, written as one primitive.

gru_sequence runs a GRU over a whole padded batch as ONE graph node, with its backward pass
through time derived by hand. The same function unrolled from ops (layers.GRUCell.step once per
time step, through layers.GRU(fused=False)) records about twenty nodes per step; that composed
form is the readable reference, and tests/test_layers.py checks that both give the same outputs
and gradients.

softmax_cross_entropy is the per-token loss of a language model, -log softmax(logits)[target],
as one node whose VJP reuses the softmax its forward computed (returned to the engine as saved). Its composed form,
softmax_cross_entropy_composed (ops.logsumexp minus the picked logit), sits beside it as the
reference, and tests/test_fused.py checks that both give the same values and gradients.
"""
import numpy as np

from . import ops
from .engine import primitive


def _in_time_order(reverse, *arrays):
    """The arrays with their time axis (axis 1) reversed if `reverse` (views: nothing is copied)."""
    return [a[:, ::-1] if reverse else a for a in arrays]


def _gate(x):
    """sigmoid(x) = 0.5 + 0.5 * tanh(0.5 * x), which cannot overflow.

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
    the order r, z, n; mask (B, T) true at real tokens. Each step t (t = 0, ..., T-1, or
    T-1, ..., 0 with reverse=True) is layers.GRUCell.step, with a_r, a_z, a_n the thirds of
    x_proj[:, t] and p_r, p_z, p_n those of p = h @ W_h + b_h:
        r = sigmoid(a_r + p_r)    z = sigmoid(a_z + p_z)    n = tanh(a_n + r * p_n)
        h_new = (1 - z) * n + z * h
        h = h_new where mask[:, t], else h unchanged;    outputs[:, t] = h_new, or 0 where not mask
    Returns outputs (B, T, H). The final state is the output of each row's last real step in the
    order of processing: outputs[arange(B), lengths - 1] with padding at the end, outputs[:, 0]
    with reverse=True (layers.GRU picks it so).

    VJP: backpropagation through time. The forward saves nothing for it: `ans` holds every
    state, so the VJP rebuilds h_prev (the state each step started from: the
    output of the previous real step, or h0) and recomputes r, z, n, p for all steps at once.
    Let g_t = dL/dh after step t: the output's gradient at t plus what flows back from step
    t+1. At a real step the chain rule through the equations above gives
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

    p = (h_prev.reshape(B * T, H) @ W_h + b_h).reshape(B, T, 3 * H)     # one GEMM for all steps
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


# ============================================================================ softmax cross-entropy
def softmax_cross_entropy_composed(logits, target):
    """-log softmax(logits)[target] over the last axis, from ops: logsumexp(logits) - logits[target].

    logits (..., V) a Tensor, target (...) integer ids. The textbook form and the tested reference
    of softmax_cross_entropy: ops.logsumexp is stable, and its VJP and the index's make the gradient.
    """
    picked = logits[np.indices(target.shape, sparse=True) + (target,)]     # logits[..., target]
    return ops.logsumexp(logits, axis=-1) - picked


@primitive(saves=True)
def softmax_cross_entropy(logits, *, target):
    """Per-token cross-entropy nll = -log softmax(logits)[target] over the last axis, stably.

    logits (..., V), target (...) integer ids in 0..V-1; returns nll (...). With m = max(logits),
        p = exp(logits - m) / sum(exp(logits - m))      (every exp in (0, 1]: nothing overflows)
        nll = (m - logits[target]) + log(sum(exp(logits - m)))
    VJP: d nll / d logits = p - onehot(target), so d logits = g[..., None] * (p - onehot(target)).
    The forward has p in hand and returns it beside nll, as saved={"softmax": p} (a primitive made
    with saves=True); the engine passes it to the VJP, which so never computes exp again.
    """
    V = logits.shape[-1]
    target = np.asarray(target)
    if target.shape != logits.shape[:-1] or target.dtype.kind not in "iu":
        raise ValueError(f"target must hold integer ids shaped like logits without its last axis "
                         f"{logits.shape[:-1]}, got {target.dtype} {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= V):
        raise ValueError(f"target ids must lie in 0..{V - 1} (the logits' last axis), got "
                         f"{target.min()}..{target.max()}")
    m = np.max(logits, axis=-1, keepdims=True)
    p = np.exp(logits - m)
    total = np.sum(p, axis=-1, keepdims=True)
    p /= total
    picked = np.take_along_axis(logits, target[..., None], axis=-1)
    nll = (m - picked) + np.log(total)    # m - picked first: exact when the target is the max
    return nll[..., 0], {"softmax": p}


def _softmax_cross_entropy_vjp(g, ans, logits, target, softmax):
    grad = g[..., None] * softmax                                           # g * p
    rows = np.indices(target.shape, sparse=True)
    grad[rows + (np.asarray(target),)] -= g                                 # - g * onehot(target)
    return grad
softmax_cross_entropy.defvjp(_softmax_cross_entropy_vjp)
