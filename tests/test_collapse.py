"""The posterior-collapse toolkit: each remedy's defining property, and its gradients.

The decoder-input corruptions (word dropout, contiguous dropout) are checked against their exact
drop probabilities. HA bits, a KL floor, is tested with the other floors in tests/test_vae_math.py.

Batch norm (BN-VAE and the tau variant) is checked in both modes: training normalises with the
batch's own statistics (which gives the KL floor), evaluation with running statistics that
follow torch.nn.BatchNorm1d's update rule.
"""
import math

import numpy as np
import pytest

from minivae import Tensor, ops
from minivae.collapse import (BN_EPS, MDR, BNVAEMean, RunningStats, SoftFreeBits, TauBatchNorm, bag_of_words_nll,
                              batch_normalize, contiguous_dropout, mdr_update, soft_free_bits_update, word_dropout)
from minivae.distributions import kl_standard_normal_per_dim
from minivae.gradcheck import check_grads
from minivae.text import EOS_ID, PAD_ID, SOS_ID, UNK_ID, bag_of_words, pad_batch


def skewed_batch(rng, B=64, d=5):
    """(B, d) values with very different means and scales per column, as raw encoder heads.

    The smallest scale, 0.1, keeps every variance >> BN_EPS: a column with variance near eps would
    come out with variance gamma^2 * var / (var + eps), visibly below gamma^2.
    """
    return rng.standard_normal((B, d)) * np.array([0.1, 0.3, 1.0, 4.0, 20.0])[:d] + np.array([3., -1, 0, 5, -40])[:d]


# ------------------------------------------------------------------ BN-VAE
def test_bn_vae_training_mode_fixes_each_dimensions_batch_mean_and_variance():
    rng = np.random.default_rng(0)
    bn = BNVAEMean(5, gamma=0.5, dtype=np.float64)
    bn.shift.data[:] = [0.0, 0.3, -0.2, 1.0, 0.0]
    raw = skewed_batch(rng)
    mu_hat = bn(Tensor(raw), training=True).data
    var = raw.var(axis=0)
    np.testing.assert_allclose(mu_hat.var(axis=0), 0.25 * var / (var + BN_EPS), rtol=1e-10)
    np.testing.assert_allclose(mu_hat.mean(axis=0), bn.shift.data, atol=1e-12)
    # so every dimension is an active unit: Var_x(mu_hat_j) ~ gamma^2 = 0.25 >= 0.01
    assert np.all(mu_hat.var(axis=0) > 0.2)


def test_bn_vae_kl_lower_bound_holds_for_any_logvar():
    rng = np.random.default_rng(1)
    bn = BNVAEMean(5, gamma=0.6, dtype=np.float64)
    bn.shift.data[:] = rng.standard_normal(5) * 0.5
    for _ in range(5):
        mu_hat = bn(Tensor(skewed_batch(rng)), training=True)
        logvar = Tensor(rng.standard_normal((64, 5)) * 2)
        kl = kl_standard_normal_per_dim(mu_hat, logvar).data.sum(axis=1).mean()
        bound = bn.kl_lower_bound()
        assert bound == pytest.approx(2.5 * (0.36 + np.mean(bn.shift.data ** 2)))
        # var/(var + eps) < 1 makes the batch version of the floor a hair lower than gamma^2
        assert kl >= bound * (1 - 1e-3), (kl, bound)
    # and the floor is tight: a posterior with unit variance reaches it
    mu_hat = bn(Tensor(skewed_batch(rng)), training=True)
    kl = kl_standard_normal_per_dim(mu_hat, Tensor(np.zeros((64, 5)))).data.sum(axis=1).mean()
    assert kl == pytest.approx(bn.kl_lower_bound(), rel=1e-3)


def test_running_statistics_follow_torch_batchnorm_and_are_used_at_evaluation():
    rng = np.random.default_rng(2)
    bn = BNVAEMean(5, gamma=0.5, momentum=0.1, dtype=np.float64)
    bn.shift.data[:] = 0.1
    batches = [skewed_batch(rng, B=16) for _ in range(3)]
    mean, var = np.zeros(5), np.ones(5)
    for x in batches:
        bn(Tensor(x), training=True)
        mean = 0.9 * mean + 0.1 * x.mean(axis=0)
        var = 0.9 * var + 0.1 * x.var(axis=0, ddof=1)  # unbiased, as torch.nn.BatchNorm1d
    np.testing.assert_allclose(bn.running.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running.var, var, rtol=1e-12)

    x = batches[0]
    evaluated = bn(Tensor(x), training=False).data
    np.testing.assert_allclose(evaluated, 0.5 * (x - mean) / np.sqrt(var + BN_EPS) + 0.1, rtol=1e-12)
    assert not np.allclose(evaluated, bn(Tensor(x), training=True).data, atol=1e-3)
    before = bn.running.mean.copy(), bn.running.var.copy()
    bn(Tensor(x), training=False)  # evaluation never moves the running statistics
    np.testing.assert_array_equal(bn.running.mean, before[0])
    # ... and one sentence alone can be encoded at evaluation time
    assert bn(Tensor(x[:1]), training=False).shape == (1, 5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        bn(Tensor(x[:1]), training=True)


@pytest.mark.parametrize("training", [True, False])
def test_bn_layers_gradients(training):
    rng = np.random.default_rng(3)
    x, s, shift, theta = (rng.standard_normal((6, 3)) * [1, 2, 0.5] + 1, rng.standard_normal((6, 3)),
                          rng.standard_normal(3), rng.standard_normal(3))
    bn, tau = BNVAEMean(3, 0.5, dtype=np.float64), TauBatchNorm(3, 0.5, dtype=np.float64)
    # non-trivial running statistics, so evaluation mode is not just the identity
    bn.running.mean[:], bn.running.var[:] = [0.5, -1, 2], [2, 0.5, 3]
    tau.running_mu.mean[:], tau.running_std.var[:] = [0.3, 0.1, -0.2], [1.5, 0.7, 2.0]

    def f_bn(x, shift):
        bn.shift = shift
        return bn(x, training)

    def f_tau(x, s, theta):
        tau.theta = theta
        mu, logvar = tau(x, s, training)
        return ops.concatenate([mu, logvar], axis=1)
    check_grads(f_bn, x, shift)
    check_grads(f_tau, x, s, theta)


def test_running_stats_argument_checks():
    with pytest.raises(ValueError, match="momentum"):
        RunningStats(3, momentum=0)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        BNVAEMean(3, gamma=0)
    with pytest.raises(ValueError, match="tau must be in"):
        TauBatchNorm(3, tau=1.0)
    stats = RunningStats(2, dtype=np.float64)
    out = batch_normalize(Tensor(np.array([[1.0, 2], [3, 6]])), stats, training=True)
    np.testing.assert_allclose(out.data, [[-1, -1], [1, 1]], rtol=1e-5)


# ------------------------------------------------------------------ Su's tau variant
def test_tau_variant_scales_trade_off_and_sum_to_one():
    tau = TauBatchNorm(4, tau=0.5, dtype=np.float64)
    mu_scale, std_scale = (s.data for s in tau.scales())
    np.testing.assert_allclose(mu_scale, math.sqrt(0.75), rtol=1e-12)
    np.testing.assert_allclose(mu_scale, 0.8660254, atol=1e-7)
    np.testing.assert_allclose(std_scale, 0.5, rtol=1e-12)
    tau.theta.data[:] = [-30.0, -1.0, 2.5, 30.0]
    for t in (0.0, 0.3, 0.5, 0.9):
        tau.tau = t
        mu_scale, std_scale = (s.data for s in tau.scales())
        np.testing.assert_allclose(mu_scale ** 2 + std_scale ** 2, 1.0, rtol=1e-12)
        assert np.all(mu_scale ** 2 >= t - 1e-12)  # the mean always keeps at least a tau share


def test_tau_variant_training_batch_moments_and_kl_floor():
    rng = np.random.default_rng(4)
    tau = TauBatchNorm(5, tau=0.5, dtype=np.float64)
    tau.theta.data[:] = rng.standard_normal(5)
    mu_raw, std_raw = skewed_batch(rng), skewed_batch(rng)[:, ::-1].copy()
    mu, logvar = tau(Tensor(mu_raw), Tensor(std_raw), training=True)
    std2 = np.exp(logvar.data)  # = std**2 + 1e-8: the std head may be negative, only its square counts
    mu_scale, std_scale = (s.data for s in tau.scales())
    # per dimension: batch second moments ~ the squared scales, which sum to 1
    shrink = lambda raw: raw.var(axis=0) / (raw.var(axis=0) + BN_EPS)  # noqa: E731  (~1: the eps)
    np.testing.assert_allclose((mu.data ** 2).mean(axis=0), mu_scale ** 2 * shrink(mu_raw), rtol=1e-10)
    np.testing.assert_allclose(std2.mean(axis=0), std_scale ** 2 * shrink(std_raw) + 1e-8, rtol=1e-10)
    np.testing.assert_allclose((mu.data ** 2).mean(axis=0) + std2.mean(axis=0), 1.0, rtol=2e-3)
    kl_dims = kl_standard_normal_per_dim(mu, logvar).data.mean(axis=0)
    assert np.all(kl_dims >= -0.5 * np.log(std_scale ** 2) - 1e-4)       # Jensen on -log std^2
    assert np.all(kl_dims >= 0.5 * math.log(1 / (1 - 0.5)) - 1e-4)       # 0.347 nats at tau = 0.5
    assert np.all(np.isfinite(logvar.data)) and (std_raw < std_raw.mean(axis=0)).any()


def test_tau_variant_uses_running_statistics_at_evaluation():
    rng = np.random.default_rng(5)
    tau = TauBatchNorm(3, tau=0.5, dtype=np.float64)
    for _ in range(4):
        tau(Tensor(skewed_batch(rng, d=3)), Tensor(skewed_batch(rng, d=3)), training=True)
    x, s = skewed_batch(rng, d=3), skewed_batch(rng, d=3)
    mu, logvar = tau(Tensor(x), Tensor(s), training=False)
    rm, rs = tau.running_mu, tau.running_std
    np.testing.assert_allclose(mu.data, (x - rm.mean) / np.sqrt(rm.var + BN_EPS) * math.sqrt(0.75), rtol=1e-12)
    std = (s - rs.mean) / np.sqrt(rs.var + BN_EPS) * 0.5
    np.testing.assert_allclose(logvar.data, np.log(std ** 2 + 1e-8), rtol=1e-10)
    assert set(tau.buffers()) == {"running_mu_mean", "running_mu_var", "running_std_mean", "running_std_var"}


# ------------------------------------------------------------------ soft free bits
def test_soft_free_bits_controller_moves_the_weight_the_right_way():
    target, a, tol = 5.0, 0.1, 0.05
    assert soft_free_bits_update(0.5, 6.0, target, a, tol) == pytest.approx(0.5 * 1.1)    # KL too high: push
    assert soft_free_bits_update(0.5, 4.0, target, a, tol) == pytest.approx(0.5 / 1.1)    # KL too low: relax
    assert soft_free_bits_update(0.5, 5.2, target, a, tol) == 0.5                         # inside the band
    assert soft_free_bits_update(0.99, 9.0, target, a, tol, max_weight=1.0) == 1.0        # clipped
    assert soft_free_bits_update(1e-4, 0.0, target, a, tol, min_weight=1e-4) == 1e-4

    sfb = SoftFreeBits(target, rate=a, weight=0.1)
    weights = [sfb.step(kl) for kl in (10, 10, 1)]
    np.testing.assert_allclose(weights, [0.11, 0.121, 0.11])
    other = SoftFreeBits(target, rate=a)
    other.load_state_dict(sfb.state_dict())
    assert other.weight == sfb.weight and sfb.state_dict() == {"weight": pytest.approx(0.11)}
    with pytest.raises(ValueError, match="soft free bits needs"):
        SoftFreeBits(target, weight=2.0, max_weight=1.0)


# ------------------------------------------------------------------ MDR
def test_mdr_multiplier_grows_below_the_rate_and_shrinks_to_zero_above():
    assert mdr_update(0.0, kl=1.0, rate=5.0, lr=0.1) == pytest.approx(0.4)    # KL < r: lambda grows
    assert mdr_update(1.0, kl=7.0, rate=5.0, lr=0.1) == pytest.approx(0.8)    # KL > r: lambda shrinks
    assert mdr_update(0.1, kl=50.0, rate=5.0, lr=0.1) == 0.0                  # ... but never below 0
    mdr = MDR(rate=5.0, lr=0.1)
    path = [mdr.step(kl) for kl in (0.0, 0.0, 9.0, 9.0, 9.0, 9.0)]
    np.testing.assert_allclose(path, [0.5, 1.0, 0.6, 0.2, 0.0, 0.0])
    assert min(path) >= 0
    again = MDR(rate=5.0, lr=0.1)
    again.load_state_dict(MDR(rate=5.0, multiplier=2.5).state_dict())
    assert again.multiplier == 2.5
    with pytest.raises(ValueError, match="MDR needs"):
        MDR(rate=0.0)


# ------------------------------------------------------------------ bag of words
def test_bag_of_words_is_order_free_and_n_log_v_for_uniform_logits():
    rng = np.random.default_rng(6)
    V = 11
    batch = pad_batch([[4, 5, 6, 7], [8, 8, 9]])
    counts = bag_of_words(batch["dec_target"], batch["mask"], V)
    logits = Tensor(rng.standard_normal((2, V)))
    loss = bag_of_words_nll(logits, counts).data
    shuffled = pad_batch([[7, 5, 4, 6], [8, 9, 8]])  # the same words in another order
    np.testing.assert_allclose(
        bag_of_words_nll(logits, bag_of_words(shuffled["dec_target"], shuffled["mask"], V)).data, loss)
    n = batch["mask"].sum(axis=1)  # words + <eos>: 5 and 4
    np.testing.assert_allclose(bag_of_words_nll(Tensor(np.zeros((2, V))), counts).data, n * np.log(V))
    check_grads(lambda f: bag_of_words_nll(f, counts), logits.data)
    # the loss is -sum log softmax at each target, counted with multiplicity
    log_p = logits.data - np.log(np.exp(logits.data).sum(axis=1, keepdims=True))
    assert loss[1] == pytest.approx(-(2 * log_p[1, 8] + log_p[1, 9] + log_p[1, 2]))


# ------------------------------------------------------------------ decoder corruption

def decoder_inputs(rng, B=4000, T=30):
    """dec_in-like ids: <sos>, random word ids >= 4 (no <unk>), then <pad>; one <eos> planted per row."""
    lengths = rng.integers(1, T, size=B)
    dec_in = np.where(np.arange(T + 1) <= lengths[:, None], rng.integers(4, 500, size=(B, T + 1)), PAD_ID)
    dec_in[:, 0] = SOS_ID
    dec_in[np.arange(B), lengths] = EOS_ID
    return dec_in


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_word_dropout_rate_and_specials(p):
    rng = np.random.default_rng(0)
    dec_in = decoder_inputs(rng)
    before = dec_in.copy()
    out = word_dropout(dec_in, p, rng)
    np.testing.assert_array_equal(dec_in, before)                      # input untouched
    words = dec_in >= 4
    np.testing.assert_array_equal(out[~words], dec_in[~words])         # <sos>, <eos>, <pad> kept
    dropped = out[words] == UNK_ID
    assert np.all(out[words][~dropped] == dec_in[words][~dropped])
    n = words.sum()
    assert abs(dropped.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_word_dropout_edge_cases():
    rng = np.random.default_rng(1)
    dec_in = decoder_inputs(rng, B=50)
    out = word_dropout(dec_in, 0.0, None)
    np.testing.assert_array_equal(out, dec_in)
    assert out is not dec_in
    historyless = word_dropout(dec_in, 1.0, rng)
    np.testing.assert_array_equal(historyless, np.where(dec_in >= 4, UNK_ID, dec_in))
    assert historyless.dtype == dec_in.dtype
    for p in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            word_dropout(dec_in, p, rng)


def poisson_tail(lam, k):
    """P(L > k) for L ~ Poisson(lam)."""
    return 1 - sum(math.exp(-lam) * lam ** i / math.factorial(i) for i in range(k + 1))


@pytest.mark.parametrize("p, lam", [(0.1, 2.0), (0.3, 0.7)])
def test_contiguous_dropout_marginals_match_the_exact_formula(p, lam):
    # Position j (1 = first word) is dropped iff some start at j-k (1 <= j-k) has span L > k:
    # P = 1 - prod_{k=0}^{j-1} (1 - p * P(L > k)). Exact, including merged spans.
    # A protected token (here an <eos> at column 6) cuts every span, so the count restarts after it.
    rng = np.random.default_rng(2)
    B, T = 20000, 12
    dec_in = np.concatenate([np.full((B, 1), SOS_ID), rng.integers(4, 500, size=(B, T))], axis=1)
    dec_in[:, 6] = EOS_ID
    out = contiguous_dropout(dec_in, p, lam, rng)
    assert np.all(out[:, [0, 6]] == [SOS_ID, EOS_ID])
    rate = (out[:, 1:] == UNK_ID).mean(axis=0)
    marginal = lambda j: 1 - math.prod(1 - p * poisson_tail(lam, k) for k in range(j))
    expected = [marginal(j) if j < 6 else 0.0 if j == 6 else marginal(j - 6) for j in range(1, T + 1)]
    se = np.sqrt(np.array(expected) * (1 - np.array(expected)) / B)
    assert np.all(np.abs(rate - expected) <= 4 * se), (rate, expected)


def test_contiguous_dropout_span_lengths():
    # Rare starts on very long rows, so spans almost never merge (expected bias ~0.02 tokens, far
    # below the tolerance) and few reach the row end (those are excluded). A span of length 0 leaves
    # no trace, so the visible runs have the zero-truncated Poisson mean lam / (1 - exp(-lam)).
    rng = np.random.default_rng(3)
    lam, B, T = 3.0, 1000, 1000
    dec_in = np.concatenate([np.full((B, 1), SOS_ID), rng.integers(4, 500, size=(B, T)), np.full((B, 1), PAD_ID)], axis=1)
    out = contiguous_dropout(dec_in, 0.0005, lam, rng)
    dropped = (out == UNK_ID).astype(np.int8)
    edges = np.diff(dropped, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    assert np.all(out[:, [0, -1]] == [SOS_ID, PAD_ID])
    runs = ends[1] - starts[1]                                          # the pad column is never dropped
    assert len(runs) > 300
    mean, se = lam / (1 - math.exp(-lam)), math.sqrt(lam) / math.sqrt(len(runs))
    assert abs(runs.mean() - mean) < 4 * se, (runs.mean(), mean)
    assert runs.max() >= 7 and runs.min() == 1


def test_contiguous_dropout_protects_specials_and_validates():
    rng = np.random.default_rng(4)
    dec_in = decoder_inputs(rng, B=500)
    before = dec_in.copy()
    out = contiguous_dropout(dec_in, 0.5, 5.0, rng)
    np.testing.assert_array_equal(dec_in, before)
    np.testing.assert_array_equal(out[dec_in < 4], dec_in[dec_in < 4])
    assert (out[dec_in >= 4] == UNK_ID).mean() > 0.5
    np.testing.assert_array_equal(contiguous_dropout(dec_in, 0.0, 3.0, None), dec_in)
    np.testing.assert_array_equal(contiguous_dropout(dec_in, 0.5, 0.0, None), dec_in)
    # A span never crosses a protected token: everything after a mid-row <eos> survives.
    row = np.array([[SOS_ID, 7, 8, EOS_ID, 9, 10]])
    out = contiguous_dropout(row, 1.0, 50.0, np.random.default_rng(0), protect=(SOS_ID, EOS_ID))
    np.testing.assert_array_equal(out, [[SOS_ID, UNK_ID, UNK_ID, EOS_ID, UNK_ID, UNK_ID]])
    out = contiguous_dropout(row, 1.0, 50.0, np.random.default_rng(0), protect=(SOS_ID, EOS_ID, 9))
    np.testing.assert_array_equal(out, [[SOS_ID, UNK_ID, UNK_ID, EOS_ID, 9, UNK_ID]])
    for p, lam in ((1.5, 1.0), (0.5, -1.0)):
        with pytest.raises(ValueError):
            contiguous_dropout(dec_in, p, lam, rng)
