"""Deterministic autoencoders, the path to the VAE: plain, denoising, sparse, k-sparse, contractive.

Every model here maps x to a code h = f(x) and back to a reconstruction g(h), and is trained to
make g(f(x)) close to x. What stops it from learning the identity is what tells them apart:
a narrow code (Autoencoder), a corrupted input (DenoisingAutoencoder), a penalty on the code's
average activity (SparseAutoencoder), a hard limit on how many code units may be non-zero
(KSparseAutoencoder), or a penalty on how fast the code changes with x (ContractiveAutoencoder).

All share one interface with the VAEs, so the scripts train them with one loop:
    noise = model.noise(x, rng)                 randomness drawn outside the loss (None if unused)
    objective, stats = model.loss(x, noise)     stats["rec"]: reconstruction error, nats per example
    model.reconstruct(x)                        mean images, as an array
Reconstruction error is -log p(x|h): binary cross-entropy summed over pixels ("bernoulli"), or the
squared error of a unit-variance Gaussian, 0.5*||x - x_mean||^2 + 0.5*n*log(2 pi) ("gaussian", L2).
"""
import numpy as np

from . import ops
from .distributions import bernoulli_log_likelihood, gaussian_log_likelihood
from .engine import Tensor
from .layers import MLP, Module

LIKELIHOODS = ("bernoulli", "gaussian")
CODES = {"linear": lambda h: h, "sigmoid": ops.sigmoid, "relu": ops.relu}
CORRUPTIONS = ("gaussian", "masking")


class Autoencoder(Module):
    """x (B, n_in) -> MLP -> code h (B, latent) -> MLP -> x_logits or x_mean (B, n_in).

    `code` is the activation of the code layer: "linear" (plain and k-sparse), "sigmoid" (sparse and
    contractive: a unit's activation is then a firing rate in (0, 1)) or "relu". The encoder's
    hidden sizes are `hidden` unless `encoder_hidden` says otherwise (the contractive encoder is
    one layer); the decoder mirrors `hidden`.
    Reference: Hinton & Salakhutdinov 2006, Science 313, "Reducing the dimensionality of data
    with neural networks"; Bourlard & Kamp 1988 (a linear autoencoder learns the PCA subspace).
    """

    def __init__(self, n_in=784, hidden=(400,), latent=32, activation="relu", likelihood="bernoulli",
                 code="linear", rng=None, dtype=np.float32, encoder_hidden=None):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood '{likelihood}'; choose from {LIKELIHOODS}")
        if code not in CODES:
            raise ValueError(f"unknown code activation '{code}'; choose from {sorted(CODES)}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.latent, self.likelihood, self.code = int(latent), likelihood, code
        encoder_hidden = hidden if encoder_hidden is None else encoder_hidden
        self.encoder = MLP([n_in, *encoder_hidden, self.latent], activation, rng, dtype)
        self.decoder = MLP([self.latent, *reversed(hidden), n_in], activation, rng, dtype)

    def encode(self, x):
        """The code h = f(x), (B, latent)."""
        return CODES[self.code](self.encoder(x))

    def decode(self, h):
        """Bernoulli logits or Gaussian means, (B, n_in)."""
        return self.decoder(h)

    def reconstruction_error(self, x, x_out):
        """-log p(x | decoder output) per example (B,): BCE summed over pixels, or the Gaussian (L2) error."""
        if self.likelihood == "bernoulli":
            return -bernoulli_log_likelihood(x, x_out)
        return -gaussian_log_likelihood(x, x_out, 0.0)

    def noise(self, x, rng):
        """What loss() needs drawn outside it: nothing, for a plain autoencoder."""
        return None

    def penalty(self, x, h):
        """The regulariser added to the reconstruction error (nats per example); none here."""
        return None

    def loss(self, x, noise=None):
        """(objective, stats): objective = mean reconstruction error + penalty."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        h = self.encode(self._input(x, noise))
        rec = ops.mean(self.reconstruction_error(x, self.decode(h)))
        penalty = self.penalty(x, h)
        objective = rec if penalty is None else rec + penalty
        stats = {"objective": float(objective.data), "rec": float(rec.data),
                 "penalty": 0.0 if penalty is None else float(penalty.data)}
        return objective, stats

    def _input(self, x, noise):
        return x

    def mean_image(self, x_out):
        """E[x | h] as an array."""
        return ops.sigmoid(x_out).data if self.likelihood == "bernoulli" else x_out.data

    def reconstruct(self, x):
        """g(f(x)) as mean images (B, n_in)."""
        return self.mean_image(self.decode(self.encode(Tensor(x))))


def corrupt(x, kind, level, rng):
    """A corrupted copy of the array x: "gaussian" adds N(0, level^2) noise; "masking" sets a random
    fraction `level` of each example's inputs to 0 (Vincent et al.'s masking noise)."""
    if kind == "gaussian":
        return (x + level * rng.standard_normal(x.shape)).astype(x.dtype)
    if kind == "masking":
        return (x * (rng.random(x.shape) >= level)).astype(x.dtype)
    raise ValueError(f"unknown corruption '{kind}'; choose from {CORRUPTIONS}")


class DenoisingAutoencoder(Autoencoder):
    """Reconstruct the clean x from a corrupted copy: rec = -log p(x | g(f(corrupt(x)))).

    The corruption is drawn by noise(x, rng) and passed to loss(x, x_noisy), so the loss is a
    deterministic function; reconstruct() feeds the clean input, as at test time.
    Reference: Vincent et al. 2008, ICML, "Extracting and composing robust features with denoising
    autoencoders" (Sec. 2.3, masking noise); Vincent et al. 2010, JMLR 11 (Gaussian noise).
    """

    def __init__(self, *args, corruption="masking", noise_level=0.3, **kwargs):
        super().__init__(*args, **kwargs)
        if corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption '{corruption}'; choose from {CORRUPTIONS}")
        self.corruption, self.noise_level = corruption, float(noise_level)

    def noise(self, x, rng):
        return corrupt(np.asarray(x.data if isinstance(x, Tensor) else x), self.corruption,
                       self.noise_level, rng)

    def _input(self, x, noise):
        return x if noise is None else Tensor(noise)


def sparsity_kl(rho, rho_hat):
    """sum_j KL(Bernoulli(rho) || Bernoulli(rho_hat_j)) = sum_j rho log(rho/rho_hat_j)
    + (1 - rho) log((1 - rho)/(1 - rho_hat_j)), for rho_hat (latent,) in (0, 1)."""
    return ops.sum(rho * np.log(rho) - rho * ops.log(rho_hat)
                   + (1 - rho) * np.log(1 - rho) - (1 - rho) * ops.log(1 - rho_hat))


class SparseAutoencoder(Autoencoder):
    """Sigmoid code; penalty = beta * sum_j KL(rho || rho_hat_j), rho_hat_j = batch mean of h_j.

    Each code unit is pushed to fire on a fraction rho of the inputs, so each learns a feature
    that only some digits have. The encoder is one layer, as in the notes, so each unit's weights
    are an image of what it detects (the training script's filters figure): strokes.
    Reference: Ng 2011, "Sparse autoencoder", CS294A lecture notes, Sec. 3 (the KL-to-rho penalty).
    """

    def __init__(self, *args, rho=0.05, sparsity_weight=3.0, **kwargs):
        kwargs.setdefault("encoder_hidden", ())
        super().__init__(*args, code="sigmoid", **kwargs)
        if not 0 < rho < 1:
            raise ValueError(f"target activation rho must be in (0, 1), got {rho}")
        self.rho, self.sparsity_weight = float(rho), float(sparsity_weight)

    def penalty(self, x, h):
        return self.sparsity_weight * sparsity_kl(self.rho, ops.mean(h, axis=0))


def k_sparse(h, k):
    """Keep the k largest entries of each row of h (B, latent), set the rest to exactly 0.

    A composite: ops.where passes the gradient to the kept units and none to the dropped ones.
    Reference: Makhzani & Frey 2013, arXiv:1312.5663, Sec. 2 (the support-selection step).
    """
    if k >= h.shape[-1]:
        return h
    threshold = -np.partition(-h.data, k - 1, axis=-1)[:, k - 1:k]  # (B, 1) the k-th largest value
    keep = h.data >= threshold  # ties may keep a few more than k; measure-zero for real codes
    return ops.where(keep, h, 0.0)


class KSparseAutoencoder(Autoencoder):
    """Linear code with only the k largest units kept per example; k may start dense and shrink.

    k_at(step) is the schedule of the paper's Sec. 3.3: k goes linearly from `latent` (dense) to k
    over the first `k_warmup` steps, so every unit gets gradient before the support narrows (units
    that never win otherwise stay dead). Training passes the step; evaluation uses the final k.
    The encoder is one linear layer, as in the paper, so its weights are the units' filters.
    Reference: Makhzani & Frey 2013, arXiv:1312.5663, "k-Sparse Autoencoders".
    """

    def __init__(self, *args, k=25, k_warmup=0, **kwargs):
        kwargs.setdefault("encoder_hidden", ())
        super().__init__(*args, code="linear", **kwargs)
        if not 1 <= k <= self.latent:
            raise ValueError(f"k must be in 1..latent = 1..{self.latent}, got {k}")
        self.k, self.k_warmup = int(k), int(k_warmup)

    def k_at(self, step):
        """The number of kept units after `step` training steps (None: the final k)."""
        if step is None or step >= self.k_warmup:
            return self.k
        return int(round(self.latent + (self.k - self.latent) * step / self.k_warmup))

    def encode(self, x, step=None):
        return k_sparse(self.encoder(x), self.k_at(step))

    def loss(self, x, noise=None, step=None):
        x = x if isinstance(x, Tensor) else Tensor(x)
        rec = ops.mean(self.reconstruction_error(x, self.decode(self.encode(x, step))))
        return rec, {"objective": float(rec.data), "rec": float(rec.data), "penalty": 0.0,
                     "k": self.k_at(step)}


def contractive_penalty(h, W):
    """||J_f(x)||_F^2 per example for f(x) = sigmoid(x @ W + b), in closed form (B,):

        J_ji = dh_j/dx_i = h_j (1 - h_j) W_ij   =>   ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ij^2

    Reference: Rifai et al. 2011, ICML, "Contractive auto-encoders", Sec. 5 (eq. 5 for sigmoid).
    """
    return ops.sum(ops.square(h * (1 - h)) * ops.sum(ops.square(W), axis=0), axis=-1)


class ContractiveAutoencoder(Autoencoder):
    """One sigmoid encoder layer; penalty = lambda * mean_x ||J_f(x)||_F^2 (contractive_penalty).

    The penalty makes the code insensitive to directions in which the data do not vary, while
    reconstruction keeps it sensitive along the data: the code is locally flat off the manifold.
    """

    def __init__(self, n_in=784, hidden=(400,), latent=32, activation="relu", likelihood="bernoulli",
                 rng=None, dtype=np.float32, contraction=0.1):
        # one encoder layer, so that the penalty has its closed form
        super().__init__(n_in, hidden, latent, activation, likelihood, "sigmoid", rng, dtype, encoder_hidden=())
        self.contraction = float(contraction)

    def penalty(self, x, h):
        return self.contraction * ops.mean(contractive_penalty(h, self.encoder.layers[0].W))
