"""The benchmark's models in HIPS autograd: NumPy functions differentiated by tracing.

scripts/bench/benchmark.py imports this file; it is not a script of its own. The models are written
as an autograd user writes them (autograd.numpy expressions, a Python loop over time for the
GRU, Adam on a list of arrays) and start from minivae's initial weights, copied.
"""
import numpy as np


def numpy_adam(params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as an autograd user writes it: NumPy expressions on a list of arrays, updated in place."""
    m, v, t = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params], [0]

    def update(grads):
        t[0] += 1
        for p, g, m_i, v_i in zip(params, grads, m, v):
            m_i[...] = b1 * m_i + (1 - b1) * g
            v_i[...] = b2 * v_i + (1 - b2) * g * g
            p -= lr * (m_i / (1 - b1 ** t[0])) / (np.sqrt(v_i / (1 - b2 ** t[0])) + eps)
    return update


def train(workload, job, model):
    """A step function (batch -> float32 loss) training `model`'s initial weights, copied."""
    import autograd
    import autograd.numpy as anp
    from autograd.tracer import getval

    def sigmoid(a):
        return 0.5 * (anp.tanh(0.5 * a) + 1)  # stable for any a

    params = [p.data.copy() for p in model.parameters()]
    if workload == "mlp":
        x, d = job["x"], params[4].shape[0]  # W1 b1 W2 b2 (encoder), W3 b3 W4 b4 (decoder)

        def objective(params, batch):
            idx, eps = batch
            W1, b1, W2, b2, W3, b3, W4, b4 = params
            xb = x[idx]
            stats = anp.dot(anp.maximum(anp.dot(xb, W1) + b1, 0), W2) + b2
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + anp.exp(0.5 * logvar) * eps
            logits = anp.dot(anp.maximum(anp.dot(z, W3) + b3, 0), W4) + b4
            log_px = anp.sum(xb * logits - anp.logaddexp(0, logits), axis=1)
            kl = 0.5 * anp.sum(mu * mu + anp.exp(logvar) - logvar - 1, axis=1)
            return anp.mean(kl - log_px)
    else:
        names = [n for n, _ in model.named_parameters()]
        shapes = dict(zip(names, (p.shape for p in params)))
        H, d = shapes["encoder.cell.W_h"][0], shapes["to_state.W"][0]

        def gru(p, prefix, x, mask, h):
            B, T, E = x.shape
            W_x, b_x, W_h, b_h = (p[f"{prefix}.cell.{k}"] for k in ("W_x", "b_x", "W_h", "b_h"))
            x_proj = anp.reshape(anp.dot(anp.reshape(x, (B * T, E)), W_x) + b_x, (B, T, 3 * H))
            outputs = []
            for t in range(T):
                a, hp = x_proj[:, t], anp.dot(h, W_h) + b_h
                r, z = sigmoid(a[:, :H] + hp[:, :H]), sigmoid(a[:, H:2 * H] + hp[:, H:2 * H])
                h_new = (1 - z) * anp.tanh(a[:, 2 * H:] + r * hp[:, 2 * H:]) + z * h
                real = mask[:, t, None]
                h = anp.where(real, h_new, h)
                outputs.append(anp.where(real, h_new, 0))
            return anp.stack(outputs, axis=1), h

        def objective(params, b):
            p = dict(zip(names, params))
            B, T1 = b["dec_in"].shape
            enc_mask = b["enc_mask"] > 0
            _, h = gru(p, "encoder", p["embedding.W"][b["enc_in"]], enc_mask, anp.zeros((B, H), "float32"))
            stats = anp.dot(h, p["to_latent.W"]) + p["to_latent.b"]
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + anp.exp(0.5 * logvar) * b["eps"]
            h0 = anp.tanh(anp.dot(z, p["to_state.W"]) + p["to_state.b"])
            out, _ = gru(p, "decoder", p["embedding.W"][b["dec_in"]], b["mask"] > 0, h0)
            logits = anp.dot(out, p["to_vocab.W"]) + p["to_vocab.b"]
            m = getval(anp.max(logits, axis=-1, keepdims=True))  # a constant shift: no gradient
            lse = anp.log(anp.sum(anp.exp(logits - m), axis=-1)) + m[..., 0]
            nll = lse - logits[np.arange(B)[:, None], np.arange(T1), b["dec_target"]]
            kl = 0.5 * anp.sum(mu * mu + anp.exp(logvar) - logvar - 1, axis=1)
            return anp.sum(nll * b["mask"]) / B + anp.mean(kl)

    gradient = autograd.value_and_grad(objective)
    adam = numpy_adam(params, job["lr"])

    def step(batch):
        value, grads = gradient(params, batch)
        adam(grads)
        return value
    return step
