"""Gaussian and Bernoulli pieces of a VAE, as plain functions of Tensors.

Conventions: `logvar` is the log-VARIANCE (never the log standard deviation); the last axis is
the event axis (latent dimensions or pixels), summed over; everything else is a batch axis.
Randomness is never drawn here: the caller passes `eps`, so every function is deterministic.
"""
import numpy as np

from . import ops

LOG_2PI = float(np.log(2 * np.pi))


def sample_gaussian(mu, logvar, eps):
    """Reparameterised sample z = mu + exp(0.5*logvar) * eps, with eps ~ N(0, I) given.

    exp(0.5*logvar) is the standard deviation: the variance of z is exp(logvar), not its square.
    Reference: Kingma & Welling 2014, arXiv:1312.6114, Sec. 2.4.
    """
    # BEGIN SOLUTION distributions: mu + standard deviation * eps (logvar is the log-VARIANCE)
    return mu + ops.exp(0.5 * logvar) * eps
    # END SOLUTION


def kl_standard_normal_per_dim(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each dimension: 0.5*(mu**2 + exp(logvar) - logvar - 1).

    Reference: Kingma & Welling 2014, arXiv:1312.6114, Appendix B.
    """
    # BEGIN SOLUTION distributions: the formula above, elementwise (no sum: one KL per dimension)
    return 0.5 * (mu * mu + ops.exp(logvar) - logvar - 1.0)
    # END SOLUTION


def kl_standard_normal(mu, logvar):
    """KL(q || N(0, I)) of a diagonal Gaussian, summed over the last axis (nats)."""
    return ops.sum(kl_standard_normal_per_dim(mu, logvar), axis=-1)


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))) = -0.5*sum(log 2pi + logvar + (z - mu)**2 / exp(logvar))."""
    return -0.5 * ops.sum(LOG_2PI + logvar + (z - mu) ** 2 * ops.exp(-logvar), axis=-1)


def standard_normal_log_density(z):
    """log N(z; 0, I) = -0.5*sum(log 2pi + z**2)."""
    return -0.5 * ops.sum(LOG_2PI + z * z, axis=-1)


def bernoulli_log_likelihood(x, x_logits):
    """log p(x | logits) = sum(x*l - softplus(l)) over the last axis.

    Equal to minus the binary cross-entropy of sigmoid(l), and valid for grayscale targets x in
    [0, 1] too (the "BCE" reconstruction term of the PyTorch VAE example). Written with softplus,
    not log(sigmoid(l)), so it stays finite for any logit (|l| = 1000 included).
    """
    # BEGIN SOLUTION distributions: x*l - softplus(l), summed over the last axis (pixels)
    return ops.sum(x * x_logits - ops.softplus(x_logits), axis=-1)
    # END SOLUTION


def gaussian_log_likelihood(x, x_mean, logvar=0.0):
    """log N(x; x_mean, exp(logvar)) summed over the last axis; logvar fixed (a number) or learned.

    With a fixed logvar this is a scaled squared error plus a constant: the "L2" decoder.
    """
    if not hasattr(logvar, "shape"):  # a fixed number: give it the decoder's dtype
        logvar = np.asarray(logvar, dtype=x_mean.dtype)
    return gaussian_log_density(x, x_mean, logvar)
