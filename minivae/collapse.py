"""Remedies for posterior collapse that change the encoder, the objective or the decoder's input.

Posterior collapse: q(z|x) = p(z) for every x, the KL term is 0 and a strong autoregressive decoder
models the data without looking at z. Where each remedy lives:
  elbo.py       beta (KL weight) and the KL floors: free bits (three modes) and HA bits
  schedules.py  KL annealing: beta as a function of the step
  collapse.py   (this file) batch-normalised posteriors (BN-VAE and Su's tau variant), soft free
                bits, minimum desired rate (MDR), the bag-of-words loss, and the decoder-input
                corruptions: word dropout (p = 1: historyless decoding) and contiguous dropout

Reading order: RunningStats and batch_normalize, BNVAEMean, TauBatchNorm,
soft_free_bits_update / SoftFreeBits, mdr_update / MDR, bag_of_words_nll, word_dropout,
historyless_inputs, contiguous_dropout.

State. Layers in minivae keep no state between calls, with ONE exception here: batch norm. In
training it normalises with the statistics of the current batch, but at evaluation a single
sentence has no batch, so it needs estimates of those statistics kept from training: running
averages. They are plain arrays (not parameters: no gradient, the optimiser never sees them),
updated only when a call says `training=True`, exposed by `buffers()` and saved in checkpoints.
The two controllers (SoftFreeBits, MDR) carry one number each between steps; their update rules
are pure functions, and the classes only hold the number and save it.
"""
import numpy as np

from . import ops
from .engine import Tensor
from .layers import Module, parameter
from .text import EOS_ID, PAD_ID, SOS_ID, UNK_ID

BN_EPS = 1e-5       # added to the batch variance before the square root, as torch.nn.BatchNorm1d
BN_MOMENTUM = 0.1   # running = (1 - momentum) * running + momentum * batch, as torch.nn.BatchNorm1d


# ----------------------------------------------------------------------------- batch norm pieces

class RunningStats:
    """Running mean and variance of a (B, d) quantity, for batch norm at evaluation time.

    After every training batch: mean <- (1 - momentum) * mean + momentum * batch_mean, and the
    same for var with the UNBIASED batch variance (B / (B - 1) times the biased one used to
    normalise), exactly as torch.nn.BatchNorm1d. Starts at mean 0, var 1.
    """

    def __init__(self, dim, momentum=BN_MOMENTUM, dtype=np.float32):
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.mean = np.zeros(dim, dtype)
        self.var = np.ones(dim, dtype)

    def update(self, batch_mean, batch_var, batch_size):
        """Fold one batch's mean and biased variance (arrays of shape (d,)) into the running values."""
        m = self.momentum
        unbiased = batch_var * (batch_size / (batch_size - 1))
        self.mean[...] = (1 - m) * self.mean + m * batch_mean
        self.var[...] = (1 - m) * self.var + m * unbiased


def batch_normalize(x, stats, training, eps=BN_EPS):
    """(x - mean) / sqrt(var + eps) per column of x (B, d), with batch or running statistics.

    training=True: mean and (biased) var of this batch, differentiated through like any op, and
    stats.update is called with them. training=False: stats.mean and stats.var, as constants.
    Reference: Ioffe & Szegedy 2015, arXiv:1502.03167, Algorithm 1 (training) and 2 (inference).
    """
    if not training:
        return (x - stats.mean.astype(x.dtype)) / np.sqrt(stats.var + eps).astype(x.dtype)
    B = x.shape[0]
    if B < 2:
        raise ValueError(f"batch norm in training mode needs at least 2 examples per batch, got {B} "
                         "(its variance is undefined); drop the last batch or use training=False")
    mean = ops.mean(x, axis=0)                                  # (d,)
    centred = x - mean                                          # (B, d)
    var = ops.mean(centred * centred, axis=0)                   # (d,) biased, as the paper
    stats.update(mean.data, var.data, B)
    return centred / ops.sqrt(var + eps)


class BNVAEMean(Module):
    """BN-VAE: batch norm on the posterior mean with a FIXED scale gamma and a learned shift.

        mu_hat_j = gamma * (mu_j - mean_B mu_j) / sqrt(var_B mu_j + eps) + shift_j

    In training mode each dimension of mu_hat has batch mean shift_j and batch variance
    gamma^2 * var/(var + eps) ~ gamma^2, so the expected KL over the data is bounded below:
        E[KL] >= 0.5 * sum_j E[mu_hat_j^2] = (d/2) * (gamma^2 + mean_j shift_j^2) > 0,
    because 0.5*(exp(logvar) - logvar - 1) >= 0. That floor is what keeps the KL from vanishing:
    with gamma = 0.5 and d = 16 it is 2 nats per example, and every dimension's posterior mean
    varies across the data (all d units active, since gamma^2 >= 0.01). gamma is a hyperparameter
    (the official code's --gamma, 0 = off); 0.5 is our default. The shift is learned, the scale is
    not: a learned scale could shrink to 0 and collapse the posterior again. The shift is called
    `shift` rather than the paper's beta, which here always names the KL weight.
    At evaluation (training=False) the running mean and variance replace the batch ones.
    Reference: Zhu et al. 2020, ACL, arXiv:2004.12585, Sec. 3; code: valdersoul/bn-vae (mu_bn).
    """

    def __init__(self, dim, gamma=0.5, momentum=BN_MOMENTUM, eps=BN_EPS, dtype=np.float32):
        if not gamma > 0:
            raise ValueError(f"BN-VAE gamma must be > 0 (the fixed scale of the posterior mean), got {gamma}")
        self.gamma, self.eps = float(gamma), float(eps)
        self.shift = parameter(np.zeros(dim, dtype))
        self.running = RunningStats(dim, momentum, dtype)

    def __call__(self, mu, training):
        """mu (B, d) -> mu_hat (B, d); updates the running statistics when training."""
        return self.gamma * batch_normalize(mu, self.running, training, self.eps) + self.shift

    def kl_lower_bound(self):
        """(d/2) * (gamma^2 + mean_j shift_j^2): the floor on the expected KL, nats per example."""
        shift = self.shift.data.astype(np.float64)
        return 0.5 * len(shift) * (self.gamma ** 2 + float(np.mean(shift ** 2)))

    def buffers(self):
        return {"running_mean": self.running.mean, "running_var": self.running.var}


class TauBatchNorm(Module):
    """Su's tau variant of BN-VAE: batch norm (no affine) on both heads, scales that trade off.

        mu  = BN(mu_raw)  * sqrt(tau + (1 - tau) * sigmoid(theta))
        std = BN(std_raw) * sqrt((1 - tau) * sigmoid(-theta))
        logvar = log(std**2 + 1e-8)

    theta (d,) is learned, starting at 0. The squared scales sum to exactly 1
    (sigmoid(t) + sigmoid(-t) = 1), so per dimension E[mu^2] + E[std^2] = 1 in training mode:
    the encoder decides how much of that unit budget is signal (mu) and how much is noise (std).
    tau >= 0 keeps the mean's share at least tau, hence the KL away from 0: per dimension the
    batch-mean KL is -0.5 * mean_B log std^2 >= -0.5 * log((1 - tau) * sigmoid(-theta)) >=
    0.5 * log(1 / (1 - tau)) (0.347 nats at tau = 0.5). At theta = 0 the scales are
    sqrt(0.75) = 0.866025 and 0.5.
    The std head is a plain linear output and can be negative: only std**2 matters (the KL and
    the sample z = mu + exp(0.5*logvar)*eps use it; eps is symmetric). The 1e-8 keeps the log
    finite if a std is exactly 0. Running statistics replace the batch ones at evaluation.
    Reference: J. Su 2020, blog post "VAE + BN = a better VAE" (kexue.fm/archives/7381), extending
    Zhu et al. 2020, arXiv:2004.12585 (whose arXiv version adds Su as an author).
    """

    def __init__(self, dim, tau=0.5, momentum=BN_MOMENTUM, eps=BN_EPS, dtype=np.float32):
        if not 0 <= tau < 1:
            raise ValueError(f"tau must be in [0, 1), got {tau}")
        self.tau, self.eps = float(tau), float(eps)
        self.theta = parameter(np.zeros(dim, dtype))
        self.running_mu = RunningStats(dim, momentum, dtype)
        self.running_std = RunningStats(dim, momentum, dtype)

    def scales(self):
        """(scale of mu, scale of std), each (d,) Tensors; their squares sum to 1."""
        return (ops.sqrt(self.tau + (1 - self.tau) * ops.sigmoid(self.theta)),
                ops.sqrt((1 - self.tau) * ops.sigmoid(-self.theta)))

    def __call__(self, mu_raw, std_raw, training):
        """Raw heads (B, d) each -> (mu, logvar); updates the running statistics when training."""
        mu_scale, std_scale = self.scales()
        mu = batch_normalize(mu_raw, self.running_mu, training, self.eps) * mu_scale
        std = batch_normalize(std_raw, self.running_std, training, self.eps) * std_scale
        return mu, ops.log(std * std + 1e-8)

    def buffers(self):
        return {"running_mu_mean": self.running_mu.mean, "running_mu_var": self.running_mu.var,
                "running_std_mean": self.running_std.mean, "running_std_var": self.running_std.var}


# ----------------------------------------------------------------------------- objectives

def soft_free_bits_update(weight, kl, target, rate=0.01, tolerance=0.05, min_weight=1e-4, max_weight=1.0):
    """One step of the soft-free-bits KL-weight controller; returns the new weight.

        KL > (1 + tolerance) * target  ->  weight * (1 + rate)    (too much information: push)
        KL < target                    ->  weight / (1 + rate)    (too little: relax)
        otherwise                      ->  weight
    then clipped to [min_weight, max_weight]. kl and target in the same unit (nats per example).
    Reference: Chen et al. 2017, ICLR, arXiv:1611.02731 (VLAE), appendix; code: _compute_gamma in
    tom-pelsmaeker/deep-generative-lm (tolerance 0.05, weight starting at 0.1 * beta, capped at beta).
    """
    if kl > (1 + tolerance) * target:
        weight = weight * (1 + rate)
    elif kl < target:
        weight = weight / (1 + rate)
    return float(min(max(weight, min_weight), max_weight))


class SoftFreeBits:
    """The soft-free-bits controller: holds the KL weight between steps (see soft_free_bits_update).

        sfb = SoftFreeBits(target=5.0)                       # nats per sentence
        objective, stats = model.loss(batch, eps, beta=sfb.weight)
        sfb.step(stats["kl"])                               # after the optimiser step
    """

    def __init__(self, target, rate=0.01, tolerance=0.05, weight=0.1, min_weight=1e-4, max_weight=1.0):
        if not (target > 0 and rate > 0 and tolerance >= 0 and 0 < min_weight <= weight <= max_weight):
            raise ValueError("soft free bits needs target > 0, rate > 0, tolerance >= 0 and "
                             f"0 < min_weight <= weight <= max_weight; got target={target}, rate={rate}, "
                             f"tolerance={tolerance}, weights {min_weight} <= {weight} <= {max_weight}")
        self.target, self.rate, self.tolerance = float(target), float(rate), float(tolerance)
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)
        self.weight = float(weight)

    def step(self, kl):
        """Update the weight after a step whose KL (nats per example) was kl; returns it."""
        self.weight = soft_free_bits_update(self.weight, kl, self.target, self.rate, self.tolerance,
                                            self.min_weight, self.max_weight)
        return self.weight

    def state_dict(self):
        return {"weight": self.weight}

    def load_state_dict(self, state):
        self.weight = float(state["weight"])


def mdr_update(multiplier, kl, rate, lr=0.01):
    """Projected gradient ascent on the MDR Lagrange multiplier: max(0, lambda + lr * (rate - KL)).

    d objective / d lambda = rate - KL, so lambda grows while the KL is below the desired rate
    and shrinks (never below 0) once the constraint KL >= rate holds.
    Reference: Pelsmaeker & Aziz 2020, ACL, arXiv:1904.08194, Sec. 4.2 (minimum desired rate).
    """
    return float(max(0.0, multiplier + lr * (rate - kl)))


class MDR:
    """Minimum desired rate: minimise rec + KL subject to KL >= rate, by a Lagrangian.

        objective = rec + KL + lambda * (rate - KL),   lambda >= 0
    The model descends this objective; lambda ascends it (mdr_update) after every step. With
    lambda > 1 the KL's net weight (1 - lambda) is negative and the encoder is pushed to put
    information in z. lambda starts at 0, so training is the plain ELBO until the KL is found
    below the rate. The objective is not the ELBO: always report -ELBO = rec + KL beside it.

        mdr = MDR(rate=5.0)
        objective, stats = model.loss(batch, eps, mdr_rate=mdr.rate, mdr_multiplier=mdr.multiplier)
        mdr.step(stats["kl"])
    Reference: Pelsmaeker & Aziz 2020, ACL, arXiv:1904.08194, Sec. 4.2.
    """

    def __init__(self, rate, lr=0.01, multiplier=0.0):
        if not (rate > 0 and lr > 0 and multiplier >= 0):
            raise ValueError(f"MDR needs rate > 0, lr > 0 and multiplier >= 0, got {rate}, {lr}, {multiplier}")
        self.rate, self.lr, self.multiplier = float(rate), float(lr), float(multiplier)

    def step(self, kl):
        """Update lambda after a step whose KL (nats per example) was kl; returns it."""
        self.multiplier = mdr_update(self.multiplier, kl, self.rate, self.lr)
        return self.multiplier

    def state_dict(self):
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state):
        self.multiplier = float(state["multiplier"])


def bag_of_words_nll(bow_logits, counts):
    """Bag-of-words loss per example: -sum_v counts[b, v] * log_softmax(bow_logits[b])[v], shape (B,).

    bow_logits (B, V) come from an MLP on z; counts (B, V) from text.bag_of_words (each real
    target counted, <eos> included, <pad> not). The order of the words is ignored, so z alone
    must predict which words occur: an auxiliary loss that makes the latent code informative.
    For uniform logits it is n * log V, n = number of targets.
    Reference: Zhao et al. 2017, ACL, arXiv:1703.10960, Sec. 3.3 (eq. 5).
    """
    counts = counts.data if isinstance(counts, Tensor) else np.asarray(counts)
    return -ops.sum(ops.log_softmax(bow_logits, axis=-1) * counts.astype(bow_logits.dtype), axis=-1)


# ----------------------------------------------------------------------------- decoder corruption

def word_dropout(dec_in, p, rng, unk_id=UNK_ID, protect=(PAD_ID, SOS_ID, EOS_ID)):
    """Replace each decoder input token by <unk> with probability p; ids in `protect` are never replaced.

    Only the decoder input is corrupted; targets and encoder input stay intact, so the decoder
    must get the dropped words from z. p=1 is the historyless ("inputless") decoder. Returns a new
    array; with p=0 it is a copy and rng is not used (may be None).
    Reference: Bowman et al. 2016, arXiv:1511.06349, Sec. 3.1 "Word dropout and historyless decoding".
    """
    if not 0 <= p <= 1:
        raise ValueError(f"word dropout probability p must be in [0, 1], got {p}")
    dec_in = np.asarray(dec_in)
    if p == 0:
        return dec_in.copy()
    drop = (rng.random(dec_in.shape) < p) & ~np.isin(dec_in, protect)
    return np.where(drop, unk_id, dec_in).astype(dec_in.dtype)


def historyless_inputs(dec_in, unk_id=UNK_ID, protect=(PAD_ID, SOS_ID, EOS_ID)):
    """The historyless decoder's inputs: every token of dec_in replaced by <unk> except those in `protect`.

    word_dropout with p = 1, without the random draw: the decoder reads <sos> and then only <unk>,
    so all it knows of the sentence comes from z. SentenceVAE(historyless=True) applies it in
    training, evaluation and generation alike.
    Reference: Bowman et al. 2016, arXiv:1511.06349, Sec. 3.1 "Word dropout and historyless decoding".
    """
    dec_in = np.asarray(dec_in)
    return np.where(np.isin(dec_in, protect), dec_in, unk_id).astype(dec_in.dtype)


def contiguous_dropout(dec_in, p, span_lambda, rng, unk_id=UNK_ID, protect=(PAD_ID, SOS_ID, EOS_ID)):
    """Replace spans of decoder input tokens by <unk>: spans start at each droppable position with
    probability p and cover Poisson(span_lambda) tokens (possibly 0), rightwards.

    A span stops at the first protected token (the sentence end: <pad>/<eos>); overlapping spans
    merge. So position j (1 = first word) is dropped with probability
    1 - prod_{k=0}^{j-1} (1 - p * P(L > k)), L ~ Poisson(span_lambda); the expected fraction
    dropped is about p * span_lambda for small p. Returns a new array; with p=0 or span_lambda=0
    it is a copy and rng is not used (may be None).
    """
    if not 0 <= p <= 1 or not span_lambda >= 0:
        raise ValueError(f"need p in [0, 1] and span_lambda >= 0, got p={p}, span_lambda={span_lambda}")
    dec_in = np.asarray(dec_in)
    if p == 0 or span_lambda == 0:
        return dec_in.copy()
    droppable = ~np.isin(dec_in, protect)
    starts = (rng.random(dec_in.shape) < p) & droppable
    span = np.where(starts, rng.poisson(span_lambda, dec_in.shape), 0)
    drop = np.zeros(dec_in.shape, dtype=bool)
    left = np.zeros(dec_in.shape[:-1], dtype=span.dtype)  # tokens still to drop in the current span
    for t in range(dec_in.shape[-1]):
        left = np.maximum(left, span[..., t])
        drop[..., t] = droppable[..., t] & (left > 0)
        left = np.where(droppable[..., t], np.maximum(left - 1, 0), 0)
    return np.where(drop, unk_id, dec_in).astype(dec_in.dtype)


__all__ = ["RunningStats", "batch_normalize", "BNVAEMean", "TauBatchNorm", "soft_free_bits_update",
           "SoftFreeBits", "mdr_update", "MDR", "bag_of_words_nll", "word_dropout", "historyless_inputs",
           "contiguous_dropout",
           "BN_EPS", "BN_MOMENTUM"]
