"""TD-VAE, the temporal-difference VAE: a belief state that predicts jumps into the future.

A forward GRU reads the (pre-processed) observations once: b_t = GRU(b_{t-1}, pre(x_t)). Four
distributions are built on it, all diagonal Gaussians over the state z except the decoder:

    p_B(z | b_t)                 belief: the state at t, given everything seen up to t
    q_S(z_t1 | z_t2, b_t1, d)    smoothing posterior: the state at t1 inferred back from a state at t2
    p_T(z_t2 | z_t1, d)          jumpy transition over d = t2 - t1 steps
    p_D(x | z)                   decoder

For one pair of times t1 < t2 the loss (the paper's eq. 6 with its sign flipped) is

    z2 ~ p_B(. | b_t2);  z1 ~ q_S(. | z2, b_t1, d)
    loss = -log p_D(x_t2 | z2)                              rec
           + KL(q_S(. | z2, b_t1, d) || p_B(. | b_t1))       kl_t1, analytic (both diagonal Gaussians)
           + log p_B(z2 | b_t2) - log p_T(z2 | z1, d)        kl_t2, a one-sample estimate

kl_t2 cannot be analytic (z1 depends on z2) and a single draw of it may be negative. Many pairs
per sequence share one GRU pass: the belief is computed once and indexed at every t1 and t2.
With every pair t2 = t1 + 1 the loss is the sequential belief ELBO (the paper's eq. 5).

Smaller than the paper on purpose: a GRU instead of an LSTM; ONE latent layer instead of two
(the paper samples a top layer first and passes it down); q_S reads (z2, b_t1, d), not b_t2 as
well (as the public implementations do); p_T predicts the change z2 - z1 (see transition). d is fed to q_S and p_T only when use_delta is set
(the oscillator; the moving digit does not, so its rollout steps are jumps of unknown size).
p_B, q_S and p_T are the paper's gated "D blocks" (DBlock).
Reference: Gregor, Papamakarios, Besse, Buesing & Weber 2019, arXiv:1806.03107, Sec. 3-4, eqs. 5-6.
"""
import numpy as np

from . import ops
from .distributions import bernoulli_log_likelihood, gaussian_log_density, gaussian_log_likelihood, sample_gaussian
from .engine import Tensor
from .layers import GRU, MLP, Dense, Module

DECODERS = ("first", "bernoulli")  # first: N(x; z[0], exp(x_logvar)), the paper's oscillator; bernoulli: an MLP of pixel logits
OBS_LOGVAR = float(2 * np.log(0.1))  # the "first" decoder's fixed log-variance: the oscillator's observation noise, 0.1


class DBlock(Module):
    """The paper's gated block, x -> (mu, logvar):

        h = tanh(x W1 + b1) * sigmoid(x W2 + b2)
        mu = h W3 + b3;  log_sigma = h W4 + b4;  logvar = 2 * log_sigma

    The paper's head gives log sigma; minivae names the log-VARIANCE logvar, hence the factor 2
    (the same family of Gaussians, the head's output read at a different scale).
    Reference: Gregor et al. 2019, arXiv:1806.03107, Appendix (the D block).
    """

    def __init__(self, n_in, n_hidden, n_out, rng, dtype=np.float32):
        self.tanh_in, self.gate_in = Dense(n_in, n_hidden, rng, dtype), Dense(n_in, n_hidden, rng, dtype)
        self.mu, self.log_sigma = Dense(n_hidden, n_out, rng, dtype), Dense(n_hidden, n_out, rng, dtype)

    def __call__(self, x):
        h = ops.tanh(self.tanh_in(x)) * ops.sigmoid(self.gate_in(x))
        return self.mu(h), 2.0 * self.log_sigma(h)


def kl_gaussians(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) of diagonal Gaussians, summed over the last axis:

        0.5 * sum(logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)**2) / exp(logvar_p) - 1)
    """
    ratio = (ops.exp(logvar_q) + (mu_q - mu_p) ** 2) * ops.exp(-logvar_p)
    return 0.5 * ops.sum(logvar_p - logvar_q + ratio - 1.0, axis=-1)


def draw_pairs(rng, shape, length, max_delta, long_delta=0, p_long=0.0):
    """Times (t1, t2), int arrays of `shape`, with 0 <= t1 < t2 < length.

    d = t2 - t1 is uniform on 1..max_delta, or with probability p_long uniform on 1..long_delta;
    then t1 is uniform on the times that leave room for the jump (the paper's Sec. 4.1 and 5.3).
    """
    delta = rng.integers(1, max_delta + 1, shape)
    if p_long > 0:
        delta = np.where(rng.random(shape) < p_long, rng.integers(1, long_delta + 1, shape), delta)
    t1 = (rng.random(shape) * (length - delta)).astype(np.int64)
    return t1, t1 + delta


class TDVAE(Module):
    """The TD-VAE of the module docstring, for observations of n_obs numbers per time step."""

    def __init__(self, n_obs, rng, n_pre=32, n_belief=32, n_latent=8, n_hidden=50, decoder="first",
                 decoder_hidden=200, use_delta=True, delta_scale=10.0, x_logvar=OBS_LOGVAR, belief_log_sigma=None,
                 dtype=np.float32):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.n_obs, self.n_latent, self.decoder_kind = n_obs, n_latent, decoder
        self.use_delta, self.delta_scale = bool(use_delta), float(delta_scale)
        d = int(self.use_delta)
        self.pre = MLP([n_obs, n_pre, n_pre], "relu", rng, dtype)
        self.belief = GRU(n_pre, n_belief, rng, dtype)
        self.p_B = DBlock(n_belief, n_hidden, n_latent, rng, dtype)
        if belief_log_sigma is not None:  # p_B's initial log sigma (its head's bias); default: about 0, sigma about 1
            self.p_B.log_sigma.b.data[...] = belief_log_sigma
        self.q_S = DBlock(n_latent + n_belief + d, n_hidden, n_latent, rng, dtype)
        self.p_T = DBlock(n_latent + d, n_hidden, n_latent, rng, dtype)
        if decoder == "first":  # a fixed variance: a learned one grows to the signal's while z is unused
            self.x_logvar = float(x_logvar)
        else:
            self.decoder = MLP([n_latent, decoder_hidden, n_obs], "relu", rng, dtype)

    def beliefs(self, x):
        """x (B, T, n_obs) -> b (B, T, n_belief): the belief after each observation."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        B, T, _ = x.shape
        pre = self.pre(ops.reshape(x, shape=(B * T, self.n_obs))).reshape(B, T, -1)  # (B, T, n_pre)
        b, _ = self.belief(pre, np.full(B, T))
        return b

    def _with_delta(self, h, delta):
        """h with d / delta_scale appended on its last axis when the model reads d."""
        if not self.use_delta:
            return h
        d = np.asarray(delta, h.dtype)[..., None] / self.delta_scale  # (..., 1)
        return ops.concatenate([h, Tensor(np.broadcast_to(d, h.shape[:-1] + (1,)).copy())], axis=-1)

    def transition(self, z1, delta):
        """p_T(z2 | z1, d) -> (mu, logvar), with mu = z1 + the D block's mean: the block learns the change.

        Residual, unlike the paper's plain D block: from the first update p_T passes z1 on, so its
        prediction depends on z1 and the gradient asks q_S and p_B to put what predicts z2 (the
        velocity, the direction) into z1. With a plain block, p_T first learns the marginal of z2,
        ignores z1, and the gradient that would teach the belief the dynamics is zero.
        """
        mu, logvar = self.p_T(self._with_delta(z1, delta))
        return z1 + mu, logvar

    def smoothing(self, z2, b1, delta):
        """q_S(z1 | z2, b_t1, d) -> (mu, logvar)."""
        return self.q_S(self._with_delta(ops.concatenate([z2, b1], axis=-1), delta))

    def log_likelihood(self, x, z):
        """log p_D(x | z), summed over the observation's numbers: (...,)."""
        if self.decoder_kind == "first":
            return gaussian_log_likelihood(x, z[..., :self.n_obs], self.x_logvar)
        return bernoulli_log_likelihood(x, self.decoder(z))

    def decode_mean(self, z):
        """E[x | z] as an array: z[0] for the oscillator, the pixel probabilities for images."""
        if self.decoder_kind == "first":
            return z.data[..., :self.n_obs]
        return ops.sigmoid(self.decoder(z)).data

    def loss_terms(self, x, t1, t2, eps1, eps2):
        """rec, kl_t1, kl_t2 (each (B, P) Tensors, nats) of the pairs (t1, t2) (B, P) of each sequence.

        x (B, T, n_obs) array or Tensor; eps1, eps2 (B, P, n_latent) ~ N(0, I) reparameterise z1 and z2.
        The GRU runs once, up to the last t2 needed.
        """
        T = int(np.max(t2)) + 1
        x = (x if isinstance(x, Tensor) else Tensor(x))[:, :T]
        b = self.beliefs(x)  # (B, T, n_belief)
        rows = np.arange(len(x))[:, None]
        b1, b2 = b[rows, t1], b[rows, t2]  # (B, P, n_belief): the same p_B reads both times
        mu_b2, logvar_b2 = self.p_B(b2)
        z2 = sample_gaussian(mu_b2, logvar_b2, eps2)
        mu_s, logvar_s = self.smoothing(z2, b1, t2 - t1)
        z1 = sample_gaussian(mu_s, logvar_s, eps1)
        mu_b1, logvar_b1 = self.p_B(b1)
        mu_t, logvar_t = self.transition(z1, t2 - t1)
        rec = -self.log_likelihood(x[rows, t2], z2)
        kl_t1 = kl_gaussians(mu_s, logvar_s, mu_b1, logvar_b1)
        kl_t2 = gaussian_log_density(z2, mu_b2, logvar_b2) - gaussian_log_density(z2, mu_t, logvar_t)
        return {"rec": rec, "kl_t1": kl_t1, "kl_t2": kl_t2}

    def loss(self, x, t1, t2, eps1, eps2, beta=1.0):
        """(objective, stats): the mean over sequences and pairs of rec + beta * (kl_t1 + kl_t2),
        and the terms' means (floats). beta = 1 is the loss of eq. 6; beta < 1 early in training
        (a KL warm-up) lets z carry x_t2 before p_T has learned to predict it."""
        terms = self.loss_terms(x, t1, t2, eps1, eps2)
        objective = ops.mean(terms["rec"] + beta * (terms["kl_t1"] + terms["kl_t2"]))
        return objective, {name: float(ops.mean(value).data) for name, value in terms.items()}

    def rollout(self, x, deltas, rng):
        """Imagined futures: b from the context x (B, T, n_obs), z ~ p_B(. | b_{T-1}), then one
        z ~ p_T(. | z, d) per d in deltas. Returns the decoded means (B, len(deltas), n_obs).
        Call it under no_grad."""
        mu, logvar = self.p_B(self.beliefs(x)[:, -1])
        z = sample_gaussian(mu, logvar, rng.standard_normal(mu.shape).astype(mu.dtype))
        means = []
        for d in deltas:
            mu, logvar = self.transition(z, np.full(len(x), d))
            z = sample_gaussian(mu, logvar, rng.standard_normal(mu.shape).astype(mu.dtype))
            means.append(self.decode_mean(z))
        return np.stack(means, axis=1)


def from_config(config, rng=None):
    """The TDVAE that scripts/train_tdvae.py builds for these flags (a dict: task, pre, belief,
    latent, hidden, dtype, optionally init_log_sigma): pixel logits and no d for the moving digit,
    z[0] and d for the oscillator."""
    digit = config["task"] == "moving-digit"
    return TDVAE(196 if digit else 1, rng or np.random.default_rng(0), n_pre=config["pre"], n_belief=config["belief"],
                 n_latent=config["latent"], n_hidden=config["hidden"], decoder="bernoulli" if digit else "first",
                 use_delta=not digit, belief_log_sigma=config.get("init_log_sigma"), dtype=np.dtype(config["dtype"]))


class NextStepGRU(Module):
    """The baseline: the TD-VAE's pre-processing and GRU, trained to predict x_{t+1} from b_t
    with a Gaussian N(x_{t+1}; mu, exp(logvar)) read from b_t by one Dense layer."""

    def __init__(self, n_obs, rng, n_pre=32, n_belief=32, dtype=np.float32):
        self.n_obs = n_obs
        self.pre = MLP([n_obs, n_pre, n_pre], "relu", rng, dtype)
        self.belief = GRU(n_pre, n_belief, rng, dtype)
        self.head = Dense(n_belief, 2 * n_obs, rng, dtype)

    beliefs = TDVAE.beliefs

    def loss(self, x):
        """-log p(x_{t+1} | b_t), mean over sequences and steps."""
        out = self.head(self.beliefs(x[:, :-1]))  # (B, T-1, 2 n_obs)
        mu, logvar = out[..., :self.n_obs], out[..., self.n_obs:]
        return -ops.mean(gaussian_log_density(np.asarray(x)[:, 1:], mu, logvar))

    def rollout(self, x, steps):
        """Feed the predicted mean back in for `steps` steps after the context x: (B, steps, n_obs)."""
        b = self.beliefs(x)[:, -1]
        means = []
        for _ in range(steps):
            mu = self.head(b)[:, :self.n_obs]
            means.append(mu.data)
            b = self.belief.cell(self.pre(mu), b)
        return np.stack(means, axis=1)
