"""The evidence lower bound (ELBO) and the training objectives built from it.

    elbo = E_q[log p(x|z)] - KL(q(z|x) || p(z))        (the bound: higher is better)
    rec  = -log p(x|z) for one z ~ q(z|x)              (reconstruction term, nats per example)
    objective = rec + beta * KL_term                    (what training minimises)

With beta = 1 and no free bits, objective = -elbo. A beta- or free-bits-modified objective is
never called the ELBO: `stats["elbo"]` always reports the true bound next to it.
"""
import numpy as np

from . import ops
from .distributions import kl_standard_normal_per_dim

FREE_BITS_MODES = ("batch_dim", "example_dim", "total")


def free_bits_kl(kl_per_dim, free_bits, mode="batch_dim"):
    """The KL term of the objective, floored by free bits (nats per example).

    kl_per_dim: (B, d) Tensor of KL_ij. free_bits = lambda, in nats per latent dimension.
      batch_dim   sum_j max(lambda, mean_i KL_ij): each dimension's batch-mean KL is floored, so a
                  dimension using fewer than lambda nats gets exactly zero KL gradient and the
                  encoder may spend that much information for free.
                  Reference: Kingma et al. 2016, arXiv:1606.04934, Sec. 2.2 (eq. 6) and openai/iaf.
      example_dim mean_i sum_j KL_ij * [KL_ij > lambda]: each example's dimension is dropped from
                  the objective while it is below lambda ("fb 2" of Li et al. 2019,
                  arXiv:1909.00868, whose total target is lambda * d).
      total       mean_i max(lambda * d, sum_j KL_ij): the whole per-example KL is floored.
    With free_bits = 0 every mode is the plain mean_i sum_j KL_ij.
    """
    if mode not in FREE_BITS_MODES:
        raise ValueError(f"unknown free-bits mode '{mode}'; choose from {FREE_BITS_MODES}")
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0 nats per dimension, got {free_bits}")
    if free_bits == 0:
        return ops.mean(ops.sum(kl_per_dim, axis=-1))
    # BEGIN SOLUTION free_bits: one branch per mode of the docstring; ops.maximum floors a Tensor
    if mode == "batch_dim":
        return ops.sum(ops.maximum(ops.mean(kl_per_dim, axis=0), free_bits))
    if mode == "example_dim":
        return ops.mean(ops.sum(kl_per_dim * (kl_per_dim.data > free_bits), axis=-1))
    d = kl_per_dim.shape[-1]
    return ops.mean(ops.maximum(ops.sum(kl_per_dim, axis=-1), free_bits * d))
    # END SOLUTION


def vae_objective(log_px_z, mu, logvar, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim"):
    """Training objective (minimised) and statistics of a batch, all in nats per example.

    log_px_z: (B,) Tensor, log p(x|z) for one reparameterised z per example.
    mu, logvar: (B, d) Tensors, the Gaussian posterior q(z|x); the prior is N(0, I).
    Returns (objective Tensor, stats dict of floats: objective, elbo, neg_elbo, rec, kl,
    kl_term, beta, and the array kl_per_dim = batch-mean KL of each latent dimension).
    Reference: Kingma & Welling 2014, arXiv:1312.6114, eq. 10; beta: Higgins et al. 2017.
    """
    beta, free_bits = float(beta), float(free_bits)  # numbers adopt the tensors' dtype; numpy scalars would not
    kl_per_dim = kl_standard_normal_per_dim(mu, logvar)  # (B, d)
    rec = -ops.mean(log_px_z)
    kl_term = free_bits_kl(kl_per_dim, free_bits, free_bits_mode)
    objective = rec + beta * kl_term
    kl_dims = kl_per_dim.data.mean(axis=0)
    kl = float(kl_dims.sum())
    stats = {"objective": float(objective.data), "rec": float(rec.data), "kl": kl,
             "elbo": -float(rec.data) - kl, "neg_elbo": float(rec.data) + kl,
             "kl_term": float(kl_term.data), "beta": float(beta), "kl_per_dim": kl_dims}
    return objective, stats


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or inf; the message names the step and the term."""


def check_finite(stats, step, terms=("rec", "kl", "objective")):
    """Raise NonFiniteLossError naming the step and the first non-finite term of `stats`."""
    for term in terms:
        if term in stats and not np.isfinite(stats[term]):
            raise NonFiniteLossError(
                f"step {step}: the {term} term is {stats[term]} (rec={stats.get('rec')}, "
                f"kl={stats.get('kl')}). Training stopped; the last good checkpoint is kept. "
                "Try a smaller learning rate or gradient clipping (--clip).")
