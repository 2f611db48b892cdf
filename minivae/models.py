"""The image VAE: an MLP encoder and decoder around a Gaussian latent (the sentence VAE is sentence_vae.py)."""
import numpy as np

from . import ops
from .distributions import bernoulli_log_likelihood, gaussian_log_likelihood, sample_gaussian
from .elbo import vae_objective
from .engine import Tensor
from .layers import MLP, Module, parameter

LIKELIHOODS = ("bernoulli", "gaussian")


class MLPVAE(Module):
    """A VAE with MLP encoder and decoder for flat inputs such as 28x28 images.

    encoder: x (B, n_in) -> MLP -> (mu, logvar), each (B, latent)
    decoder: z (B, latent) -> MLP -> x_logits (B, n_in)   [bernoulli: p = sigmoid(x_logits)]
                                   -> x_mean   (B, n_in)   [gaussian: with logvar x_logvar]
    The defaults are the PyTorch VAE example (pytorch/examples vae/main.py): 784-400-20 with ReLU,
    Bernoulli decoder; its mean and log-variance heads are one Dense layer here, split in two.
    """

    def __init__(self, n_in=784, hidden=(400,), latent=20, activation="relu", likelihood="bernoulli",
                 x_logvar=None, rng=None, dtype=np.float32):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood '{likelihood}'; choose from {LIKELIHOODS}")
        if int(latent) < 1:
            raise ValueError(f"latent size must be >= 1, got {latent}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.latent, self.likelihood = int(latent), likelihood
        self.encoder = MLP([n_in, *hidden, 2 * self.latent], activation, rng, dtype)
        self.decoder = MLP([self.latent, *reversed(hidden), n_in], activation, rng, dtype)
        if likelihood == "gaussian":  # a learned scalar log-variance, or a fixed one if given
            self.x_logvar = parameter(np.zeros((), dtype)) if x_logvar is None else np.asarray(x_logvar, dtype)

    def encode(self, x):
        """q(z|x): (mu, logvar), each (B, latent)."""
        h = self.encoder(x)  # (B, 2*latent)
        return h[:, :self.latent], h[:, self.latent:]

    def decode(self, z):
        """Decoder output for z: Bernoulli logits, or Gaussian means."""
        return self.decoder(z)  # (B, n_in)

    def log_likelihood(self, x, x_out):
        """log p(x|z) per example (B,), from the decoder output for z."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, x_out)
        return gaussian_log_likelihood(x, x_out, self.x_logvar)

    def loss(self, x, eps, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim"):
        """(objective, stats) for a batch x, with the reparameterisation noise eps (B, latent) given."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        mu, logvar = self.encode(x)
        z = sample_gaussian(mu, logvar, eps)
        return vae_objective(self.log_likelihood(x, self.decode(z)), mu, logvar, beta, free_bits,
                             free_bits_mode)

    def mean_image(self, x_out):
        """E[x|z] as an array: sigmoid of the logits, or the Gaussian mean."""
        return ops.sigmoid(x_out).data if self.likelihood == "bernoulli" else x_out.data

    def sample(self, n, rng):
        """n new images: decode z ~ N(0, I). Returns E[x|z] (n, n_in) as an array."""
        dtype = self.encoder.layers[0].W.dtype
        return self.mean_image(self.decode(Tensor(rng.standard_normal((n, self.latent)).astype(dtype))))

    def reconstruct(self, x):
        """E[x|z=mu(x)]: the decoder's image for the posterior mean of each input."""
        mu, _ = self.encode(Tensor(x))
        return self.mean_image(self.decode(mu))
