"""A VAE whose posterior is a Gaussian pushed through inverse autoregressive flow (IAF) steps.

    z_0 = mu + exp(0.5*logvar) * eps,           log q(z_0|x) = log N(z_0; mu, exp(logvar))
    step t: (m, s) = MADE_t(z_{t-1}, h)         m_i, s_i depend only on z_<i (and the context h)
            sigma = sigmoid(s),  z_t = sigma * z_{t-1} + (1 - sigma) * m
            log q(z_t|x) = log q(z_{t-1}|x) - sum_i log sigma_i

Because m_i and s_i do not depend on z_i or later dimensions, the Jacobian dz_t/dz_{t-1} is
lower triangular with diagonal sigma, so its log-determinant is sum_i log sigma_i: the density of
the final z stays exact and cheap. The order of z is reversed between steps, so every dimension
gets to depend on every other. The KL is then estimated by one sample, log q(z_T|x) - log p(z_T).
Reference: Kingma et al. 2016, arXiv:1606.04934, Sec. 4 and eqs. 10-14 (the LSTM-style update);
MADE: Germain et al. 2015, arXiv:1502.03509, Sec. 4 (masks from degrees).
"""
import numpy as np

from . import ops
from .distributions import LOG_2PI, bernoulli_log_likelihood, standard_normal_log_density
from .diagnostics import log_mean_exp
from .engine import Tensor, no_grad
from .layers import MLP, Module, parameter


def made_masks(d, hidden):
    """Binary masks (n_in, n_out) for a MADE with inputs 1..d, hidden sizes `hidden`, outputs 1..d.

    Hidden unit degrees cycle through 1..d-1; a unit of degree m may see inputs of degree <= m, and
    output i may see hidden units of degree < i, so output i depends only on inputs 1..i-1.
    """
    degrees = [np.arange(1, d + 1)] + [np.arange(n) % max(d - 1, 1) + 1 for n in hidden]
    masks = [(d_out[None, :] >= d_in[:, None]) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append(np.arange(1, d + 1)[None, :] > degrees[-1][:, None])  # strictly: autoregressive
    return masks


class MaskedDense(Module):
    """y = x @ (W * mask) + b, plus context @ W_context when n_context > 0 (unmasked: h sees all of x)."""

    def __init__(self, n_in, n_out, mask, rng, n_context=0, dtype=np.float32):
        k = 1.0 / np.sqrt(n_in)
        self.W = parameter(rng.uniform(-k, k, (n_in, n_out)).astype(dtype))
        self.b = parameter(rng.uniform(-k, k, n_out).astype(dtype))
        self.mask = np.asarray(mask, dtype)
        self.W_context = parameter(rng.uniform(-k, k, (n_context, n_out)).astype(dtype)) if n_context else None

    def __call__(self, x, context=None):
        y = x @ (self.W * self.mask) + self.b  # (B, n_in) @ (n_in, n_out) -> (B, n_out)
        return y if self.W_context is None else y + context @ self.W_context


class MADE(Module):
    """A masked MLP z (B, d), h (B, n_context) -> (m, s), each (B, d), autoregressive in z.

    The s output's bias starts at +1.5 so that sigma = sigmoid(s) is near 0.8: each step starts
    close to the identity (Kingma et al. 2016, Sec. 4, "forget gate bias").
    """

    def __init__(self, d, hidden, n_context, rng, dtype=np.float32):
        masks = made_masks(d, hidden)
        sizes = [d, *hidden]
        self.layers = [MaskedDense(a, b, m, rng, n_context if i == 0 else 0, dtype)
                       for i, (a, b, m) in enumerate(zip(sizes[:-1], sizes[1:], masks))]
        self.m = MaskedDense(sizes[-1], d, masks[-1], rng, 0, dtype)
        self.s = MaskedDense(sizes[-1], d, masks[-1], rng, 0, dtype)
        self.s.b.data += 1.5

    def __call__(self, z, context):
        h = z
        for i, layer in enumerate(self.layers):
            h = ops.relu(layer(h, context if i == 0 else None))
        return self.m(h), self.s(h)


def iaf_step(made, z, context):
    """One IAF step: (z_new, log_det) with z_new = sigma*z + (1-sigma)*m, log_det = sum log sigma (B,)."""
    m, s = made(z, context)
    sigma = ops.sigmoid(s)
    return sigma * z + (1 - sigma) * m, ops.sum(ops.log_sigmoid(s), axis=-1)


class IAFVAE(Module):
    """MLP encoder -> (mu, logvar, context h) -> Gaussian z_0 -> T IAF steps -> z_T -> MLP decoder."""

    def __init__(self, n_in=784, hidden=(400,), latent=20, n_steps=2, made_hidden=(80,), n_context=40,
                 activation="relu", rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.latent, self.n_context, self.likelihood = int(latent), int(n_context), "bernoulli"
        self.encoder = MLP([n_in, *hidden, 2 * self.latent + self.n_context], activation, rng, dtype)
        self.decoder = MLP([self.latent, *reversed(hidden), n_in], activation, rng, dtype)
        self.steps = [MADE(self.latent, made_hidden, self.n_context, rng, dtype) for _ in range(n_steps)]

    def encode(self, x):
        """mu, logvar of the Gaussian before the flow, each (B, latent)."""
        h = self.encoder(x)
        return h[:, :self.latent], h[:, self.latent:2 * self.latent]

    def posterior(self, x, eps):
        """z_T (B, latent) and log q(z_T|x) (B,) for the noise eps (B, latent)."""
        out = self.encoder(x)
        d = self.latent
        mu, logvar, context = out[:, :d], out[:, d:2 * d], out[:, 2 * d:]
        z = mu + ops.exp(0.5 * logvar) * eps
        log_q = -0.5 * ops.sum(LOG_2PI + logvar + eps * eps, axis=-1)  # log N(z_0; mu, exp(logvar))
        for t, made in enumerate(self.steps):
            if t > 0:
                z = z[:, ::-1]  # reverse the order: a permutation, |det| = 1
            z, log_det = iaf_step(made, z, context)
            log_q = log_q - log_det
        return z, log_q

    def noise(self, x, rng):
        return rng.standard_normal((len(x), self.latent)).astype(self.decoder.layers[0].W.dtype)

    def log_weights(self, x, eps):
        """(log p(x|z), log p(z), log q(z|x)) per example for z = z_T(eps): the three terms of the ELBO."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        z, log_q = self.posterior(x, eps)
        return bernoulli_log_likelihood(x, self.decoder(z)), standard_normal_log_density(z), log_q

    def loss(self, x, eps, beta=1.0):
        """(objective, stats): -ELBO with the one-sample KL estimate log q(z|x) - log p(z), nats per example."""
        log_px_z, log_pz, log_q = self.log_weights(x, eps)
        rec, kl = -ops.mean(log_px_z), ops.mean(log_q - log_pz)
        objective = rec + float(beta) * kl
        return objective, {"objective": float(objective.data), "rec": float(rec.data), "kl": float(kl.data),
                           "neg_elbo": float(rec.data + kl.data), "elbo": -float(rec.data + kl.data)}

    def mean_image(self, x_out):
        return ops.sigmoid(x_out).data

    def decode(self, z):
        return self.decoder(z)

    def reconstruct(self, x):
        """Decoder means at z_T(eps = 0), the flow applied to the Gaussian's mean."""
        z, _ = self.posterior(Tensor(x), np.zeros((len(x), self.latent), x.dtype))
        return self.mean_image(self.decoder(z))

    def sample(self, n, rng):
        dtype = self.decoder.layers[0].W.dtype
        return self.mean_image(self.decoder(Tensor(rng.standard_normal((n, self.latent)).astype(dtype))))


def iw_log_likelihood(model, x, K, rng, batch_size=100):
    """Importance-weighted log p(x) per example (N,) float64, with K samples of the flow posterior.

        log p_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K

    The same bound as diagnostics.iw_log_likelihood, for a posterior that is not Gaussian.
    Reference: Burda et al. 2016, arXiv:1509.00519, eq. 8.
    """
    out = []
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            xk = np.repeat(xb[None], K, axis=0).reshape(-1, xb.shape[1])  # (K*b, n_in)
            eps = rng.standard_normal((len(xk), model.latent)).astype(xb.dtype)
            log_px_z, log_pz, log_q = (t.data.astype(np.float64) for t in model.log_weights(xk, eps))
            log_w = (log_px_z + log_pz - log_q).reshape(K, -1)
            out.append(log_mean_exp(log_w))
    return np.concatenate(out)
