"""Classic mistakes, planted one at a time by tests/test_assignment.py into a copy whose regions
hold the reference solutions: each must be caught under its own topic, and the first failure
`scripts/grade.py --explain` shows must name the culprit in words (the phrases below).

Each entry: (region "file:where", the region's body as the mistaken student writes it, topic,
phrases the first message must contain). Kept here, out of copies, because the bodies are
nearly the solutions.
"""

MISTAKES = {
    "log-mean-exp without the max": (
        "minivae/diagnostics.py:log_mean_exp",
        "    return np.log(np.mean(np.exp(log_w), axis=0))\n",
        "iwae", ["subtract the maximum first"]),
    "exp(logvar) as the standard deviation": (
        "minivae/distributions.py:sample_gaussian",
        "    return mu + ops.exp(logvar) * eps\n",
        "distributions", ["Var(z)/exp(logvar) = ", "expected 1: standard deviation and variance mixed up?"]),
    "free bits on the total KL": (
        "minivae/elbo.py:free_bits_kl",
        "    if mode == \"batch_dim\":\n"
        "        return ops.maximum(ops.sum(ops.mean(kl_per_dim, axis=0)), free_bits)\n"
        "    if mode == \"example_dim\":\n"
        "        return ops.mean(ops.sum(kl_per_dim * (kl_per_dim.data > free_bits), axis=-1))\n"
        "    return ops.mean(ops.maximum(ops.sum(kl_per_dim, axis=-1), free_bits * kl_per_dim.shape[-1]))\n",
        "free_bits", ["free_bits_kl(mode='batch_dim', free_bits=0.5)", "yours floors the total KL"]),
    "the IW bound as the mean of log w": (
        "minivae/elbo.py:iw_objective",
        "    log_w = log_px_z + beta * log_prior_ratio  # (K, B)\n"
        "    bound = ops.mean(log_w, axis=0)\n",
        "iwae", ["that is the mean of log w (the ELBO)"]),
    "the GRU's gate roles swapped": (
        "minivae/layers.py:GRUCell.step",
        "        h_proj = h @ self.W_h + self.b_h\n"
        "        r = ops.sigmoid(x_proj[..., :H] + h_proj[..., :H])\n"
        "        z = ops.sigmoid(x_proj[..., H:2 * H] + h_proj[..., H:2 * H])\n"
        "        n = ops.tanh(x_proj[..., 2 * H:] + r * h_proj[..., 2 * H:])\n"
        "        return z * n + (1 - z) * h\n",
        "gru", ["are the roles of z and 1 - z swapped?"]),
    "unbroadcast ignoring size-1 axes": (
        "minivae/engine.py:unbroadcast",
        "        extra = g.ndim - len(shape)\n"
        "        if extra > 0:\n"
        "            g = g.sum(axis=tuple(range(extra)))\n",
        "engine", ["unbroadcast returned shape (4, 3) for an input of shape (4, 1)",
                   "size-1 axes must be summed with keepdims"]),
    "a batched matmul VJP with .T": (
        "minivae/ops.py:_matmul_vjp_y",
        "    if x.ndim == 1:\n"
        "        return x[:, None] * g[..., None, :]\n"
        "    gy = g[..., None] if y.ndim == 1 else g\n"
        "    out = x.T @ gy\n"
        "    return out[..., 0] if y.ndim == 1 else out\n",
        "ops", ["matmul's VJP for its second input (y) is wrong", ".T reverses EVERY axis"]),
}
