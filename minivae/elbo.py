"""The evidence lower bound (ELBO) and the training objective built from it, for both VAEs.

    elbo = E_q[log p(x|z)] - KL(q(z|x) || p(z))        (the bound: higher is better)
    rec  = -log p(x|z) for one z ~ q(z|x)              (reconstruction term, nats per example)
    objective = rec + beta * kl_term                    (what training minimises)

With beta = 1 and no KL floor, kl_term = KL and objective = -elbo. A beta- or floor-modified
objective is never called the ELBO: `stats["elbo"]` always reports the true bound next to it.
Models add their own extra terms (a sentence VAE's MDR and bag-of-words losses) on top of
`vae_objective`, visibly, in their `loss`.

KL floors. Each lets the encoder spend some information for free: below the floor the KL term
is constant, so it gets exactly zero gradient, and the posterior is not pulled back to the prior.
KL_ij is the KL of latent dimension j of example i (nats); lambda is in nats per dimension.
  free bits, batch_dim    sum_j max(lambda, mean_i KL_ij): each dimension's batch-mean KL is
                          floored. Reference: Kingma et al. 2016, arXiv:1606.04934, Sec. 2.2
                          (eq. 6) and their code openai/iaf.
  free bits, example_dim  mean_i sum_j KL_ij * [KL_ij > lambda]: each example's dimension is
                          dropped from the objective while it is below lambda ("fb 2" of Li et
                          al. 2019, arXiv:1909.00868, whose total target is lambda * d).
  free bits, total        mean_i max(lambda * d, sum_j KL_ij): the whole per-example KL is floored.
  HA bits                 d * max(lambda, mean_ij KL_ij): one floor for the average over every
                          example and every dimension; above it, the plain KL. The factor d puts
                          it on the per-example scale of rec. Reference: kastnerkyle/pytorch-text-vae
                          (its clamp of KLD.mean() at habits_lambda).
With lambda = 0 every floor is the plain KL, mean_i sum_j KL_ij.
"""
import numpy as np

from . import ops
from .distributions import gaussian_log_density, kl_standard_normal_per_dim, standard_normal_log_density

FREE_BITS_MODES = ("batch_dim", "example_dim", "total")


def free_bits_kl(kl_per_dim, free_bits, mode="batch_dim"):
    """The KL term floored by free bits, nats per example; the three modes are in the module docstring.

    kl_per_dim: (B, d) Tensor of KL_ij. free_bits = lambda, in nats per latent dimension.
    mode: "batch_dim" (Kingma et al. 2016), "example_dim" (Li et al. 2019) or "total".
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


def ha_bits_kl(kl_per_dim, ha_bits):
    """HA bits: max(lambda, mean over batch AND dimensions of KL_ij), in nats per DIMENSION.

    Free bits for the whole layer at once (see the module docstring); `kl_term` multiplies it
    by d to give nats per example. Reference: kastnerkyle/pytorch-text-vae.
    """
    if ha_bits < 0:
        raise ValueError(f"ha_bits must be >= 0 nats per dimension, got {ha_bits}")
    return ops.maximum(ops.mean(kl_per_dim), ha_bits)


def kl_term(kl_per_dim, free_bits=0.0, free_bits_mode="batch_dim", ha_bits=0.0):
    """The KL term of the objective (nats per example): floored by free bits or by HA bits, not both."""
    if free_bits and ha_bits:
        raise ValueError("use free bits or HA bits, not both (both floor the KL term)")
    if ha_bits:
        return kl_per_dim.shape[-1] * ha_bits_kl(kl_per_dim, ha_bits)
    return free_bits_kl(kl_per_dim, free_bits, free_bits_mode)


def vae_objective(log_px_z, mu, logvar, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim", ha_bits=0.0):
    """Training objective (minimised) and statistics of a batch, all in nats per example.

    log_px_z: (B,) Tensor, log p(x|z) for one reparameterised z per example.
    mu, logvar: (B, d) Tensors, the Gaussian posterior q(z|x); the prior is N(0, I).
    free_bits, free_bits_mode, ha_bits: the KL floor (`kl_term`; all 0: none).
    Returns (objective Tensor, stats dict of floats: objective, elbo, neg_elbo, rec, kl,
    kl_term, beta, and the array kl_per_dim = batch-mean KL of each latent dimension).
    Reference: Kingma & Welling 2014, arXiv:1312.6114, eq. 10; beta: Higgins et al. 2017.
    """
    # numbers adopt the tensors' dtype; numpy scalars would not
    beta, free_bits, ha_bits = float(beta), float(free_bits), float(ha_bits)
    kl_per_dim = kl_standard_normal_per_dim(mu, logvar)  # (B, d)
    rec = -ops.mean(log_px_z)
    floored = kl_term(kl_per_dim, free_bits, free_bits_mode, ha_bits)
    objective = rec + beta * floored
    kl_dims = kl_per_dim.data.mean(axis=0)
    kl = float(kl_dims.sum())
    stats = {"objective": float(objective.data), "rec": float(rec.data), "kl": kl,
             "elbo": -float(rec.data) - kl, "neg_elbo": float(rec.data) + kl,
             "kl_term": float(floored.data), "beta": float(beta), "kl_per_dim": kl_dims}
    return objective, stats


def iw_objective(log_px_z, z, mu, logvar, beta=1.0):
    """The K-sample importance-weighted bound (IWAE) as a training objective, nats per example.

        log w_k = log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x)),   z_k ~ q(z|x), k = 1..K
        bound   = logsumexp_k log w_k - log K       (K = 1: the ELBO; it tightens as K grows)
        objective = -mean over the batch of the bound

    log_px_z: (K, B) Tensor; z: (K, B, d) reparameterised samples; mu, logvar: (B, d) Tensors.
    beta < 1 is KL warm-up applied inside every weight (beta = 1: the true bound). The gradient is
    that of the bound: each sample's ELBO gradient, weighted by its normalised weight softmax_k(log w).
    Returns (objective Tensor, stats dict of floats: objective, iw_bound, elbo, neg_elbo, rec, kl,
    beta, kl_per_dim), where elbo, rec and kl are the usual one-sample terms averaged over the K samples.
    Reference: Burda et al. 2016, arXiv:1509.00519, eq. 8.
    """
    beta, K = float(beta), log_px_z.shape[0]
    log_prior_ratio = standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)  # (K, B)
    # BEGIN SOLUTION iwae: log w per sample, then the log-mean-exp over the K samples
    log_w = log_px_z + beta * log_prior_ratio  # (K, B)
    bound = ops.logsumexp(log_w, axis=0) - float(np.log(K))  # (B,)
    # END SOLUTION
    objective = -ops.mean(bound)
    kl_dims = kl_standard_normal_per_dim(mu, logvar).data.mean(axis=0)
    rec, kl = -float(log_px_z.data.mean()), float(kl_dims.sum())
    stats = {"objective": float(objective.data), "iw_bound": float(bound.data.mean()), "rec": rec,
             "kl": kl, "elbo": -rec - kl, "neg_elbo": rec + kl, "beta": beta, "kl_per_dim": kl_dims}
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
