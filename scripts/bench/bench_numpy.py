"""The benchmark's models written by hand in plain NumPy: gradients derived on paper, no graph.

scripts/bench/benchmark.py imports this file; it is not a script of its own. What a program with no
graph, no per-op bookkeeping and no intermediate array the maths does not need costs is a floor
for any autodiff engine built on NumPy: minivae's time minus this program's time is the engine's
overhead. The GRU's forward and backward through time are minivae's own NumPy kernels (the
gru_sequence primitive's forward function and VJP, called on plain arrays), and the update is
minivae's Adam (the form --adam picks), so both programs share the optimiser; the seconds spent
in Adam are kept apart.
tests/test_benchmark.py checks that the loss and every gradient equal minivae's engine's.
"""
import time
from types import SimpleNamespace

import numpy as np

from bench_workloads import make_adam

CLOCK = time.perf_counter  # of the Adam timing and BACKWARD_STARTS (scripts/bench/profile_step.py: CPU time)
BACKWARD_STARTS = []  # the clock when each backward pass starts (scripts/bench/profile_step.py reads it)
from minivae.fused import gru_sequence


def train(workload, job, model):
    """A step function (batch -> float32 loss) training `model`'s initial weights, copied."""
    if workload == "mlp":
        forward_backward = mlp_forward_backward(job["x"], [p.data.copy() for p in model.parameters()])
    else:
        forward_backward = sentence_vae_forward_backward({n: p.data.copy() for n, p in model.named_parameters()})
    params, adam_seconds = None, []

    def step(batch):
        nonlocal params
        loss, grads = forward_backward(batch)
        if params is None:  # Adam only needs .data and .grad: the arrays updated in place
            params = [SimpleNamespace(data=w, grad=None) for w, _ in grads]
            step.optimizer = make_adam(params, job)
        for p, (_, g) in zip(params, grads):
            p.grad = g
        t0 = CLOCK()
        step.optimizer.step()
        adam_seconds.append(CLOCK() - t0)
        return loss
    step.adam_seconds = adam_seconds
    return step


def latent_gradient(g_z, mu, std, eps, n):
    """d loss / d [mu, logvar] (B, 2d): through z = mu + std * eps, plus KL's own, KL averaged over n."""
    g_mu = g_z + mu / n
    g_logvar = g_z * eps * (0.5 * std) + (0.5 / n) * (std * std - 1)
    return np.concatenate([g_mu, g_logvar], axis=1)


def mlp_forward_backward(x, weights):
    """A function of one (indices, eps) step -> (loss, [(weight, gradient)]) for the MLP VAE.

    weights: W1 b1 W2 b2 (encoder, W2 giving [mu, logvar]) and W3 b3 W4 b4 (decoder), as
    minivae's MLPVAE orders its parameters. Loss per image: Bernoulli negative log-likelihood
    of x under sigmoid(logits) plus the analytic KL to N(0, I).
    """
    W1, b1, W2, b2, W3, b3, W4, b4 = weights
    d = W3.shape[0]

    def forward_backward(batch):
        idx, eps = batch
        xb, n = x[idx], len(idx)
        h1 = xb @ W1
        h1 += b1
        np.maximum(h1, 0, out=h1)                                         # encoder ReLU
        stats = h1 @ W2 + b2
        mu, logvar = stats[:, :d], stats[:, d:]
        std = np.exp(0.5 * logvar)
        z = mu + std * eps
        h2 = z @ W3
        h2 += b3
        np.maximum(h2, 0, out=h2)                                         # decoder ReLU
        logits = h2 @ W4
        logits += b4
        e = np.exp(-np.abs(logits))                           # softplus and sigmoid both use it
        softplus = np.log1p(e)
        softplus += np.maximum(logits, 0)
        rec = softplus.sum() - np.vdot(xb, logits)            # -sum log p(x|z) (Bernoulli)
        kl = 0.5 * np.sum(mu * mu + std * std - logvar - 1)
        loss = (rec + kl) / np.float32(n)
        BACKWARD_STARTS.append(CLOCK())
        # backward: d loss / d logits = (sigmoid(logits) - x) / n, and so on down the layers
        g = np.where(logits >= 0, np.float32(1), e)
        g /= 1 + e
        g -= xb
        g /= n
        g_h2 = g @ W4.T
        g_h2 *= h2 > 0
        g_z = g_h2 @ W3.T
        g_stats = latent_gradient(g_z, mu, std, eps, n)
        g_h1 = g_stats @ W2.T
        g_h1 *= h1 > 0
        grads = [xb.T @ g_h1, g_h1.sum(axis=0), h1.T @ g_stats, g_stats.sum(axis=0),
                 z.T @ g_h2, g_h2.sum(axis=0), h2.T @ g, g.sum(axis=0)]
        return loss, list(zip(weights, grads))
    return forward_backward


def _gru_forward(proj, h0, W_h, b_h, mask):
    """Outputs (B, T, H) of a GRU from its input projection: the gru_sequence kernel on arrays."""
    return gru_sequence.forward(proj, h0, W_h, b_h, mask=mask)


def _gru_backward(g_out, out, proj, h0, W_h, b_h, mask):
    """(d proj, d h0, d W_h, d b_h) from d outputs: the gru_sequence VJP on arrays."""
    inputs, params = (proj, h0, W_h, b_h), {"mask": mask, "reverse": False}
    return gru_sequence.vjp(g_out, out, inputs, params, (True,) * 4)


def sentence_vae_forward_backward(w):
    """A function of one batch -> (loss, [(weight, gradient)]) for the sentence VAE.

    w: {parameter name: array} named as benchmark.minivae_sentence_vae names them. Loss per
    sentence: cross-entropy of the decoder's real targets summed over tokens, plus the KL.
    """
    emb = w["embedding.W"]
    H, d = w["encoder.cell.W_h"].shape[0], w["to_state.W"].shape[0]

    def projection(name, tokens):  # the embeddings of `tokens` and their GRU input projection
        x = emb[tokens].reshape(tokens.size, -1)
        return x, (x @ w[f"{name}.cell.W_x"] + w[f"{name}.cell.b_x"]).reshape(*tokens.shape, 3 * H)

    def forward_backward(b):
        B, T1 = b["dec_in"].shape
        lengths, rows = b["lengths"], np.arange(B)
        enc_mask = np.arange(T1 - 1) < lengths[:, None]
        dec_mask = np.arange(T1) < lengths[:, None] + 1
        x_enc, proj_enc = projection("encoder", b["enc_in"])
        h0_enc = np.zeros((B, H), np.float32)
        out_enc = _gru_forward(proj_enc, h0_enc, w["encoder.cell.W_h"], w["encoder.cell.b_h"], enc_mask)
        h = out_enc[rows, lengths - 1]
        stats = h @ w["to_latent.W"] + w["to_latent.b"]
        mu, logvar = stats[:, :d], stats[:, d:]
        std = np.exp(0.5 * logvar)
        z = mu + std * b["eps"]
        h0 = np.tanh(z @ w["to_state.W"] + w["to_state.b"])
        x_dec, proj_dec = projection("decoder", b["dec_in"])
        out_dec = _gru_forward(proj_dec, h0, w["decoder.cell.W_h"], w["decoder.cell.b_h"], dec_mask)
        real = np.nonzero(b["mask"])                 # the vocabulary layer sees the N real targets only
        out, target = out_dec[real], b["dec_target"][real]
        n = len(out)
        p = out @ w["to_vocab.W"]                    # logits, turned in place into softmax below
        p += w["to_vocab.b"]
        target_logit = p[np.arange(n), target]
        m = p.max(axis=1, keepdims=True)
        p -= m
        np.exp(p, out=p)
        total = p.sum(axis=1, keepdims=True)
        nll = np.log(total[:, 0]) + m[:, 0] - target_logit                   # -log softmax at target
        kl = 0.5 * np.sum(mu * mu + std * std - logvar - 1, axis=1)
        loss = np.sum(nll) / np.float32(B) + kl.mean()
        BACKWARD_STARTS.append(CLOCK())
        # backward: d loss / d logits = (softmax - onehot(target)) / B, from the kept exp
        p *= 1 / (B * total)
        p[np.arange(n), target] -= np.float32(1 / B)
        g = {"to_vocab.W": out.T @ p, "to_vocab.b": p.sum(axis=0)}
        g_out = np.zeros_like(out_dec)               # padded steps' outputs get no gradient
        g_out[real] = p @ w["to_vocab.W"].T
        g_proj, g_h0, g["decoder.cell.W_h"], g["decoder.cell.b_h"] = _gru_backward(
            g_out, out_dec, proj_dec, h0, w["decoder.cell.W_h"], w["decoder.cell.b_h"], dec_mask)
        g_proj = g_proj.reshape(B * T1, 3 * H)
        g["decoder.cell.W_x"], g["decoder.cell.b_x"] = x_dec.T @ g_proj, g_proj.sum(axis=0)
        g_x_dec = g_proj @ w["decoder.cell.W_x"].T
        g_a = g_h0 * (1 - h0 * h0)                                            # through tanh
        g["to_state.W"], g["to_state.b"] = z.T @ g_a, g_a.sum(axis=0)
        g_z = g_a @ w["to_state.W"].T
        g_stats = latent_gradient(g_z, mu, std, b["eps"], B)
        g["to_latent.W"], g["to_latent.b"] = h.T @ g_stats, g_stats.sum(axis=0)
        g_out_enc = np.zeros_like(out_enc)
        g_out_enc[rows, lengths - 1] = g_stats @ w["to_latent.W"].T
        g_proj, _, g["encoder.cell.W_h"], g["encoder.cell.b_h"] = _gru_backward(
            g_out_enc, out_enc, proj_enc, h0_enc, w["encoder.cell.W_h"], w["encoder.cell.b_h"], enc_mask)
        g_proj = g_proj.reshape(-1, 3 * H)
        g["encoder.cell.W_x"], g["encoder.cell.b_x"] = x_enc.T @ g_proj, g_proj.sum(axis=0)
        g_emb = np.zeros_like(emb)
        np.add.at(g_emb, b["enc_in"].reshape(-1), g_proj @ w["encoder.cell.W_x"].T)
        np.add.at(g_emb, b["dec_in"].reshape(-1), g_x_dec)
        g["embedding.W"] = g_emb
        return loss, [(w[name], g[name]) for name in w]
    return forward_backward
