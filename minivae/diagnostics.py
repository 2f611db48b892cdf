"""Diagnostics of a trained VAE: held-out ELBO, importance-weighted likelihood, active units,
mutual information, and for sentence VAEs reconstruction accuracy and a factor probe. All run
without recording a graph and return plain numbers/arrays."""
import numpy as np

from .distributions import LOG_2PI
from .engine import Tensor, no_grad
from .text import EOS_ID, levenshtein, pad_batch


def _logsumexp(a, axis):
    """log(sum(exp(a))) with the max subtracted first, so nothing overflows."""
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _log_normal(z, mu, logvar):
    return -0.5 * np.sum(LOG_2PI + logvar + (z - mu) ** 2 * np.exp(-logvar), axis=-1)


def evaluate_elbo(model, x, rng, batch_size=1000, **loss_kwargs):
    """Average stats of `model.loss` over all of x (one z per example), as a dict of floats.

    Includes 'neg_elbo' and 'rec', 'kl' (nats per example) and the 'kl_per_dim' array; with
    loss_kwargs left at their defaults the objective equals the negative ELBO.
    """
    totals, n = {}, len(x)
    with no_grad():
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size]
            eps = rng.standard_normal((len(xb), model.latent)).astype(xb.dtype)
            _, stats = model.loss(xb, eps, **loss_kwargs)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + np.asarray(value, dtype=np.float64) * len(xb)
    return {k: (v / n if np.ndim(v) else float(v / n)) for k, v in totals.items()}


def encode_all(model, x, batch_size=1000):
    """Posterior means and log-variances of every row of x: two (N, latent) arrays."""
    mus, logvars = [], []
    with no_grad():
        for start in range(0, len(x), batch_size):
            mu, logvar = model.encode(Tensor(x[start:start + batch_size]))
            mus.append(mu.data)
            logvars.append(logvar.data)
    return np.concatenate(mus), np.concatenate(logvars)


def active_units(mu, threshold=0.01):
    """Number of latent dimensions j with Var_x(E_q[z_j|x]) >= threshold, and those variances.

    mu: (N, d) posterior means over an evaluation set.
    Reference: Burda et al. 2016, arXiv:1509.00519, Sec. 5.2.
    """
    variances = np.var(np.asarray(mu, dtype=np.float64), axis=0)
    return int(np.sum(variances >= threshold)), variances


def mutual_information(mu, logvar, z):
    """Estimate of I(x; z) under q(z|x) p_data(x), from one sample z_i ~ q(z|x_i) per example.

        I = mean_i[-(d/2) log 2pi - 0.5 sum_j (1 + logvar_ij)] - mean_i log q(z_i)
        log q(z_i) ~ logsumexp_k log q(z_i | x_k) - log B

    The first term is minus the average entropy of q(z|x); the second the entropy of the
    aggregate posterior. About 0 for a collapsed encoder (q(z|x) = q(z)). At most log B up to
    sampling error: exactly, I <= log B + 0.5*mean_i(|eps_i|^2 - d), eps_i the noise of z_i.
    Reference: He et al. 2019, arXiv:1901.05534, Sec. 4.2 (their calc_mi).
    """
    mu, logvar, z = (np.asarray(a, dtype=np.float64) for a in (mu, logvar, z))
    B, d = mu.shape
    neg_entropy = np.mean(-0.5 * d * LOG_2PI - 0.5 * np.sum(1 + logvar, axis=-1))
    log_q_pairs = _log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (B_z, B_x)
    log_qz = _logsumexp(log_q_pairs, axis=1) - np.log(B)
    return float(neg_entropy - np.mean(log_qz))


def iw_log_likelihood(model, x, K, rng, batch_size=None, chunk=500):
    """Importance-weighted estimate of log p(x) per example, with K samples from q(z|x).

        log p_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K

    K = 1 is the ELBO; the bound tightens (never loosens, in expectation) as K grows. Samples are
    drawn `chunk` at a time so memory stays bounded for K = 5000. Returns an (N,) float64 array.
    Reference: Burda et al. 2016, arXiv:1509.00519, eq. 8.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1 importance samples, got {K}")
    batch_size = batch_size or max(1, 4000 // min(K, chunk))
    out = []
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]  # (b, n_in)
            mu, logvar = (t.data for t in model.encode(Tensor(xb)))
            log_w = []
            for k0 in range(0, K, chunk):
                k = min(chunk, K - k0)
                eps = rng.standard_normal((k, *mu.shape)).astype(mu.dtype)  # (k, b, d)
                z = mu + np.exp(0.5 * logvar) * eps
                x_out = model.decode(Tensor(z.reshape(-1, mu.shape[1])))  # (k*b, n_in)
                xk = np.broadcast_to(xb, (k, *xb.shape)).reshape(-1, xb.shape[1])
                log_px_z = model.log_likelihood(Tensor(xk), x_out).data.reshape(k, -1)
                # BEGIN SOLUTION iwae: log w = log p(x|z) + log p(z) - log q(z|x), in float64
                z64 = z.astype(np.float64)
                log_pz = -0.5 * np.sum(LOG_2PI + z64 ** 2, axis=-1)
                log_qz = _log_normal(z64, mu.astype(np.float64), logvar.astype(np.float64))
                log_w.append(log_px_z.astype(np.float64) + log_pz - log_qz)  # (k, b)
                # END SOLUTION
            # BEGIN SOLUTION iwae: log p_K(x) = logsumexp of log w over the K samples, minus log K
            out.append(_logsumexp(np.concatenate(log_w), axis=0) - np.log(K))
            # END SOLUTION
    return np.concatenate(out)


# ----------------------------------------------------------------------------- sentence VAEs

def strip_eos(ids):
    """A generated id list up to (not including) its first <eos>; the whole list if it has none."""
    ids = list(ids)
    return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def reconstruction_scores(inputs, outputs):
    """(exact-match rate, mean Levenshtein distance) between input and reconstructed id lists.

    inputs: sentences as id lists without <sos>/<eos>; outputs: the decoder's id lists, cut at
    their first <eos> here (one that never emitted <eos> is compared as it is). The exact-match
    rate is the fraction of pairs that agree token for token; the distance is the fewest word
    insertions, deletions and substitutions (text.levenshtein), averaged over sentences.
    """
    if len(inputs) != len(outputs) or len(inputs) == 0:
        raise ValueError(f"need equally many inputs and outputs (at least one), got {len(inputs)} and {len(outputs)}")
    outputs = [strip_eos(ids) for ids in outputs]
    exact = np.mean([list(a) == b for a, b in zip(inputs, outputs)])
    distance = np.mean([levenshtein(list(a), b) for a, b in zip(inputs, outputs)])
    return float(exact), float(distance)


def greedy_reconstructions(model, seqs, batch_size=200, extra_len=10):
    """Greedy decoding of each sentence's posterior mean (encode -> mu -> argmax at every step).

    A SentenceVAE in evaluation mode (running batch-norm statistics), `batch_size` sentences at a
    time; a decoding stops at <eos> or after (longest input + extra_len) tokens. Returns id lists.
    """
    if not seqs:
        raise ValueError("greedy_reconstructions needs at least one sentence")
    max_len = max(map(len, seqs)) + extra_len
    out = []
    for start in range(0, len(seqs), batch_size):
        out += model.reconstruct(seqs[start:start + batch_size], max_len=max_len)
    return out


def encode_sentences(model, seqs, batch_size=200):
    """Posterior means and log-variances (each (N, d)) of a SentenceVAE for id lists, in evaluation mode."""
    mus, logvars = [], []
    with no_grad():
        for start in range(0, len(seqs), batch_size):
            batch = pad_batch(seqs[start:start + batch_size], mask_dtype=model.to_logits.W.dtype)
            mu, logvar = model.encode(batch["enc_in"], batch["lengths"], training=False)
            mus.append(mu.data)
            logvars.append(logvar.data)
    return np.concatenate(mus), np.concatenate(logvars)


def _log_softmax_rows(scores):
    m = np.max(scores, axis=1, keepdims=True)
    return scores - m - np.log(np.sum(np.exp(scores - m), axis=1, keepdims=True))


def fit_softmax_regression(features, labels, n_classes, steps=500):
    """Multinomial logistic regression by full-batch gradient descent: (W (d, K), b (K,), mean, std).

    The features (N, d) are standardised with their own mean and std (a column with std 0 is
    only centred), then the average cross-entropy -mean_i log softmax(x_i W + b)[y_i] is
    minimised from W = 0, b = 0, with gradient  X^T (softmax(XW + b) - onehot(y)) / N  and the
    fixed step 1/L, L = 0.5 * largest eigenvalue of [X, 1]^T [X, 1] / N: a bound on the
    curvature of this loss, so every step decreases it. No regularisation: a few hundred steps
    on separable data leave the weights finite.
    Reference: Bohning 1992, Ann. Inst. Statist. Math. 44(1), "Multinomial logistic regression
    algorithm" (the curvature bound 0.5 * X^T X).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need features (N, d) and N labels, got shapes {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = (x - mean) / std                                            # (N, d)
    n, d = x.shape
    x1 = np.concatenate([x, np.ones((n, 1))], axis=1)               # (N, d + 1): bias column
    lr = 1.0 / (0.5 * np.linalg.eigvalsh(x1.T @ x1 / n)[-1])
    onehot = np.eye(n_classes)[y]                                   # (N, K)
    w = np.zeros((d + 1, n_classes))
    for _ in range(steps):
        p = np.exp(_log_softmax_rows(x1 @ w))                       # (N, K)
        w -= lr * (x1.T @ (p - onehot)) / n
    return w[:d], w[d], mean, std


def predict_softmax_regression(features, W, b, mean, std):
    """Most likely class of each row of features (N, d) under fit_softmax_regression's model."""
    x = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.argmax(x @ W + b, axis=1)


def factor_probe(train_features, train_labels, test_features, test_labels, steps=500):
    """How well features (e.g. posterior means) predict a known label: {"accuracy", "chance"}.

    A multinomial logistic regression (fit_softmax_regression, standardised features, `steps`
    gradient-descent steps) is trained on (train_features, train_labels) and scored on the
    held-out (test_features, test_labels). chance is the majority-class frequency of the test
    labels: the best accuracy any constant guess could reach. Accuracy well above chance means
    the features carry the factor in a form a linear classifier can read. Standardising makes
    the probe blind to scale: it reads posterior means however small their spread, even when
    the noise of z (std ~1) hides them from the decoder, so read it next to the KL, the active
    units and the mutual information.
    Reference: linear probes, Alain & Bengio 2016, arXiv:1610.01644.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if len(test_labels) == 0 or len(test_labels) != len(test_features):
        raise ValueError(f"need one test label per test row, got {len(test_labels)} labels for "
                         f"{len(test_features)} rows")
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    W, b, mean, std = fit_softmax_regression(train_features, train_labels, n_classes, steps)
    predicted = predict_softmax_regression(test_features, W, b, mean, std)
    chance = np.bincount(test_labels, minlength=n_classes).max() / len(test_labels)
    return {"accuracy": float(np.mean(predicted == test_labels)), "chance": float(chance)}
