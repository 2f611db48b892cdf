"""Reference implementations the tests compare against, kept out of student copies.

scripts/make_assignment.py does not copy this folder: each function here is a worked solution
of an assignment topic (the GRU equations, Adam's Algorithm 1, the cyclical schedule, the three
free-bits modes). tests/conftest.py puts the folder on sys.path when it exists, or the folder
named by the environment variable MINIVAE_GRADER, which scripts/grade.py sets when it grades a
copy: the grader brings the references. In a student copy without them, the tests that need one
skip, saying so (conftest.reference).
"""
import autograd.numpy as anp
import numpy as np


# ---- GRU (tests/test_layers.py, tests/test_ops.py): gate by gate from the equations, with 0/1 masks.
def _sigmoid(a):
    return 1 / (1 + anp.exp(-a))


def gru_cell(p, x, h, prefix=""):
    W_x, b_x, W_h, b_h = (p[prefix + k] for k in ("W_x", "b_x", "W_h", "b_h"))
    H = W_h.shape[0]
    r_, z_, n_ = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    r = _sigmoid(x @ W_x[:, r_] + b_x[r_] + h @ W_h[:, r_] + b_h[r_])
    z = _sigmoid(x @ W_x[:, z_] + b_x[z_] + h @ W_h[:, z_] + b_h[z_])
    n = anp.tanh(x @ W_x[:, n_] + b_x[n_] + r * (h @ W_h[:, n_] + b_h[n_]))
    return (1 - z) * n + z * h


def _gru_direction(p, x, lengths, h, prefix, reverse):
    """Unroll forwards; the reverse direction flips each sequence within its own length first."""
    B, T, _ = x.shape
    flip = np.array([[n - 1 - t if t < n else t for t in range(T)] for n in lengths])
    if reverse:
        x = x[np.arange(B)[:, None], flip]
    outs = []
    for t in range(T):
        m = (t < np.asarray(lengths))[:, None].astype(np.float64)
        h = m * gru_cell(p, x[:, t], h, prefix) + (1 - m) * h
        outs.append(m * h)
    out = anp.stack(outs, axis=1)
    return (out[np.arange(B)[:, None], flip] if reverse else out), h


def gru(p, x, lengths, h0=None, bidirectional=False):
    H = p["cell.W_h"].shape[0]
    h0 = np.zeros((x.shape[0], H * (1 + bidirectional))) if h0 is None else h0
    out, h = _gru_direction(p, x, lengths, h0[:, :H], "cell.", False)
    if bidirectional:
        out_b, h_b = _gru_direction(p, x, lengths, h0[:, H:], "cell_reverse.", True)
        out, h = anp.concatenate([out, out_b], axis=2), anp.concatenate([h, h_b], axis=1)
    return anp.concatenate([anp.ravel(out), anp.ravel(h)])


def gru_sequence(x_proj, h0, W_h, b_h, mask, reverse=False):
    """fused.gru_sequence as an autograd.numpy loop over time, padding handled with 0/1 masks."""
    H = h0.shape[1]
    sigmoid = lambda a: 1 / (1 + anp.exp(-a))  # noqa: E731
    h, outputs = h0, [None] * mask.shape[1]
    for t in (reversed(range(mask.shape[1])) if reverse else range(mask.shape[1])):
        a, p = x_proj[:, t], anp.dot(h, W_h) + b_h
        r, z = sigmoid(a[:, :H] + p[:, :H]), sigmoid(a[:, H:2 * H] + p[:, H:2 * H])
        h_new = (1 - z) * anp.tanh(a[:, 2 * H:] + r * p[:, 2 * H:]) + z * h
        m = mask[:, t, None].astype(np.float64)
        h, outputs[t] = m * h_new + (1 - m) * h, m * h_new
    return anp.stack(outputs, axis=1)


# ---- Adam (tests/test_optim.py): Kingma & Ba 2015, arXiv:1412.6980, Algorithm 1, by hand.
def adam_steps(p0, grads, lr, b1, b2, eps, weight_decay):
    """[(theta, m, v)] after each of the steps taking the gradients `grads` from p0."""
    theta, m, v, out = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append((theta, m, v))
    return out


# ---- cyclical annealing (tests/test_schedules.py)
def frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. 2019, github.com/haofuml/cyclical_annealing (plot code), as published."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


# ---- free bits (tests/test_vae_math.py)
def free_bits(kl, lam, mode):
    """The free-bits KL term from the papers' descriptions, with explicit loops."""
    B, d = kl.shape
    if mode == "batch_dim":  # Kingma et al. 2016: floor each dimension's batch-mean KL
        return sum(max(lam, sum(kl[i, j] for i in range(B)) / B) for j in range(d))
    if mode == "example_dim":  # Li et al. 2019 "fb 2": drop each KL_ij not above lambda
        return sum(kl[i, j] for i in range(B) for j in range(d) if kl[i, j] > lam) / B
    return sum(max(lam * d, sum(kl[i])) for i in range(B)) / B  # floor each example's total KL
