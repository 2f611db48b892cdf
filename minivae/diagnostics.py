"""Diagnostics of a trained VAE: held-out ELBO, importance-weighted likelihood, active units and
mutual information. All run without recording a graph and return plain numbers/arrays; the
densities are distributions.py's and log-sum-exp is ops.logsumexp, applied to arrays. Sentence
diagnostics (reconstruction, linear probes) are in text_diagnostics.py."""
import numpy as np

from . import ops
from .distributions import gaussian_log_density, sample_gaussian, standard_normal_log_density
from .engine import Tensor, no_grad


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


def mutual_information(mu, logvar, z, chunk=256):
    """Estimate of I(x; z) under q(z|x) p_data(x), with its standard error, from one z_i ~ q(z|x_i) per example.

        I = E[log q(z|x) - log q(z)] ~ mean_i t_i,     t_i = log q(z_i|x_i) - log q(z_i)
        log q(z_i) ~ logsumexp_k log q(z_i|x_k) - log N      (q(z): the average of all N posteriors)
        standard error = std_i(t_i) / sqrt(N)

    Bias or sample size: what is fixed here is the noise of the sample, not a bias. The estimate
    has no upward bias: its expectation is a lower bound on I (InfoNCE with the critic
    log q(z|x), Poole et al. 2019, arXiv:1905.06922), I is at most the average KL, and each t_i
    <= log N exactly (the k = i term is in the sum), so an estimate above the KL is sampling
    error. He et al. take the first term in closed form, minus the entropy of q(z|x): the same
    expectation, but an error of about 0.5*sqrt(2d/N) nats whatever the encoder (0.09 for d = 16,
    N = 1,000) that nothing cancels. Evaluated at the sample z_i, its error cancels that of
    log q(z_i): a collapsed encoder (q(z|x) = p(z) for every x) scores exactly 0, and the error
    shrinks with the information. All N examples enter log q(z), which keeps the ceiling log N
    as high as the data allow; `chunk` rows of z are scored at a time, so memory stays (chunk, N, d).
    Returns (estimate, standard error), in nats.
    Reference: He et al. 2019, arXiv:1901.05534, Sec. 4.2 (their calc_mi).
    """
    mu, logvar, z = (np.asarray(a, dtype=np.float64) for a in (mu, logvar, z))
    N = len(mu)
    log_qz = np.empty(N)  # log q(z_i), the aggregate posterior at each sample
    with no_grad():
        for start in range(0, N, chunk):
            rows = slice(start, start + chunk)
            # log q(z_i|x_k) for every sample i of the chunk and every example k: (rows, N)
            log_q_pairs = gaussian_log_density(z[rows, None, :], mu[None, :, :], logvar[None, :, :]).data
            log_qz[rows] = ops.logsumexp(log_q_pairs, axis=1).data - np.log(N)
        log_q_own = gaussian_log_density(z, mu, logvar).data  # log q(z_i|x_i), (N,)
    terms = log_q_own - log_qz
    se = np.std(terms, ddof=1) / np.sqrt(N) if N > 1 else np.inf  # one example tells nothing of the spread
    return float(np.mean(terms)), float(se)


def iw_log_likelihood(model, x, K, rng, batch_size=None, chunk=500, progress=None):
    """Importance-weighted estimate of log p(x) per example, with K samples from q(z|x).

        log p_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K

    K = 1 is the ELBO; the bound tightens (never loosens, in expectation) as K grows. Each batch of
    examples is encoded once; its samples are decoded `chunk` at a time (all chunk * batch_size rows
    in one pass), so memory stays bounded for K = 5000. progress: None, or a function wrapping an
    iterable and its length (e.g. a tqdm bar) that sees the batches. fast.iw_log_likelihood gives
    the same numbers on every core. Returns an (N,) float64 array.
    Reference: Burda et al. 2016, arXiv:1509.00519, eq. 8.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1 importance samples, got {K}")
    batch_size = batch_size or max(1, 4000 // min(K, chunk))
    starts = range(0, len(x), batch_size)
    out = []
    with no_grad():
        for start in (progress(starts, len(starts)) if progress else starts):
            xb = x[start:start + batch_size]  # (b, n_in)
            mu, logvar = (t.data for t in model.encode(Tensor(xb)))  # (b, d) each
            log_w = []  # (k, b) for each chunk of samples
            for k0 in range(0, K, chunk):
                eps = rng.standard_normal((min(chunk, K - k0), *mu.shape)).astype(mu.dtype)  # (k, b, d)
                log_w.append(_log_weights(model, xb, mu, logvar, eps))
            out.append(log_mean_exp(np.concatenate(log_w)))
    return np.concatenate(out)


def log_mean_exp(log_w):
    """log((1/K) sum_k exp(log_w[k])) over axis 0 of K log-weights (K, b): the IW bound of each example."""
    # BEGIN SOLUTION iwae: log p_K(x) = logsumexp of log w over the K samples, minus log K
    return ops.logsumexp(log_w, axis=0).data - np.log(len(log_w))
    # END SOLUTION


def _log_weights(model, xb, mu, logvar, eps, log_likelihood=None):
    """log w (k, b) in float64 of the k samples z = mu + exp(0.5*logvar) * eps, eps (k, b, d).

    log_likelihood: a function of the arrays (xb, x_out) giving log p(x|z) (k, b); None: the model's.
    """
    z = sample_gaussian(mu, logvar, eps).data
    x_out = model.decode(Tensor(z.reshape(-1, mu.shape[1]))).data.reshape(*eps.shape[:2], -1)  # (k, b, n_in)
    if log_likelihood is None:
        log_px_z = model.log_likelihood(Tensor(xb), Tensor(x_out)).data  # xb broadcasts over k
    else:
        log_px_z = log_likelihood(xb, x_out)
    # BEGIN SOLUTION iwae: log w = log p(x|z) + log p(z) - log q(z|x), in float64
    z64 = z.astype(np.float64)
    log_pz = standard_normal_log_density(z64).data
    log_qz = gaussian_log_density(z64, mu.astype(np.float64), logvar.astype(np.float64)).data
    return log_px_z.astype(np.float64) + log_pz - log_qz  # (k, b)
    # END SOLUTION
