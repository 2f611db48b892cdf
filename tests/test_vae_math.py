"""The VAE maths: distributions.py, elbo.py, the MLP VAE of models.py and diagnostics.py.

Four kinds of evidence, because each catches bugs the others miss:
  gradients   every function of distributions.py from one table of rows, in float64, by the
              random-projection finite-difference check and against HIPS autograd's full
              gradients; then the whole MLPVAE objective (beta != 1, every free-bits mode);
  values      hand-computed check values and independent NumPy computations;
  statistics  sampler moments and analytic KL against Monte Carlo. A sampler with the
              std-vs-variance mistake has perfectly self-consistent gradients, so only these
              catch it; each test also shows that the wrong formula would be rejected (power);
  closed form a linear-Gaussian model whose exact log p(x) is known, for the IW bound.
"""
import inspect
from dataclasses import dataclass
from typing import Callable

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import minivae.distributions as D
from minivae import Tensor
from minivae.diagnostics import (active_units, evaluate_elbo, iw_log_likelihood,
                                 mutual_information)
from minivae.elbo import FREE_BITS_MODES, free_bits_kl, ha_bits_kl, vae_objective
from minivae.gradcheck import check_grads

from conftest import reference  # worked solutions, brought by the grader
from minivae.models import MLPVAE

LOG_2PI = np.log(2 * np.pi)  # our own constant: the tests do not borrow the module's


# ================================================================== 1. gradients, one row each
# References in autograd.numpy, deliberately written in a different (textbook) form from ours.
def ref_sample(mu, logvar, eps):
    return mu + anp.sqrt(anp.exp(logvar)) * eps  # std = sqrt(variance)


def ref_kl_per_dim(mu, logvar):
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, m2=0, s2=1
    return -0.5 * logvar + 0.5 * (anp.exp(logvar) + mu ** 2) - 0.5


def ref_log_normal(x, mean, logvar):
    var = anp.exp(logvar) + 0 * x  # broadcast a scalar log-variance to every element
    return anp.sum(-0.5 * anp.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var), axis=-1)


def ref_bernoulli(x, logits):  # the cross-entropy form, fine for moderate logits
    p = 1 / (1 + anp.exp(-logits))
    return anp.sum(x * anp.log(p) + (1 - x) * anp.log(1 - p), axis=-1)


def real(rng, shape):
    return rng.standard_normal(shape)


def unit(rng, shape):  # grayscale pixels in [0, 1]
    return rng.uniform(0.0, 1.0, shape)


EPS = np.random.default_rng(100).standard_normal((4, 3))  # fixed noise: sample_gaussian is deterministic


@dataclass
class DistSpec:
    """One function of minivae.distributions: ours on Tensors, the autograd reference on arrays,
    and its float64 inputs as (shape, domain) pairs."""
    name: str
    id: str
    fn: Callable
    ref: Callable
    inputs: list


DIST_SPECS = [
    DistSpec("sample_gaussian", "mu_logvar", lambda m, lv: D.sample_gaussian(m, lv, EPS),
             lambda m, lv: ref_sample(m, lv, EPS), [((4, 3), real), ((4, 3), real)]),
    DistSpec("sample_gaussian", "shared_logvar", lambda m, lv: D.sample_gaussian(m, lv, EPS),
             lambda m, lv: ref_sample(m, lv, EPS), [((4, 3), real), ((3,), real)]),
    DistSpec("kl_standard_normal_per_dim", "batch", D.kl_standard_normal_per_dim, ref_kl_per_dim,
             [((4, 3), real), ((4, 3), real)]),
    DistSpec("kl_standard_normal", "batch", D.kl_standard_normal,
             lambda m, lv: anp.sum(ref_kl_per_dim(m, lv), axis=-1), [((4, 3), real), ((4, 3), real)]),
    DistSpec("kl_standard_normal", "one_example", D.kl_standard_normal,
             lambda m, lv: anp.sum(ref_kl_per_dim(m, lv), axis=-1), [((3,), real), ((3,), real)]),
    DistSpec("gaussian_log_density", "batch", D.gaussian_log_density, ref_log_normal,
             [((4, 3), real), ((4, 3), real), ((4, 3), real)]),
    DistSpec("gaussian_log_density", "all_pairs", D.gaussian_log_density, ref_log_normal,  # (z_i, x_k)
             [((5, 1, 3), real), ((1, 4, 3), real), ((1, 4, 3), real)]),
    DistSpec("standard_normal_log_density", "batch", D.standard_normal_log_density,
             lambda z: ref_log_normal(z, 0.0, 0.0 * z), [((4, 3), real)]),
    DistSpec("bernoulli_log_likelihood", "grayscale", D.bernoulli_log_likelihood, ref_bernoulli,
             [((4, 6), unit), ((4, 6), lambda rng, s: 3 * real(rng, s))]),
    DistSpec("gaussian_log_likelihood", "unit_variance", D.gaussian_log_likelihood,
             lambda x, m: ref_log_normal(x, m, 0.0), [((4, 6), real), ((4, 6), real)]),
    DistSpec("gaussian_log_likelihood", "fixed_logvar", lambda x, m: D.gaussian_log_likelihood(x, m, -0.7),
             lambda x, m: ref_log_normal(x, m, -0.7), [((4, 6), real), ((4, 6), real)]),
    DistSpec("gaussian_log_likelihood", "learned_scalar_logvar", D.gaussian_log_likelihood,
             ref_log_normal, [((4, 6), real), ((4, 6), real), ((), real)]),
    DistSpec("gaussian_log_likelihood", "learned_pixel_logvar", D.gaussian_log_likelihood,
             ref_log_normal, [((4, 6), real), ((4, 6), real), ((6,), real)]),
]
DIST_IDS = [f"{s.name}-{s.id}" for s in DIST_SPECS]


def _dist_inputs(spec, rng):
    return [np.asarray(domain(rng, shape), dtype=np.float64) for shape, domain in spec.inputs]


@pytest.mark.parametrize("spec", DIST_SPECS, ids=DIST_IDS)
def test_distribution_random_projection_check(spec):
    check_grads(spec.fn, *_dist_inputs(spec, np.random.default_rng(0)))


@pytest.mark.parametrize("spec", DIST_SPECS, ids=DIST_IDS)
def test_distribution_matches_autograd(spec):
    rng = np.random.default_rng(1)
    inputs = _dist_inputs(spec, rng)
    ours, ref = spec.fn(*[Tensor(x) for x in inputs]).data, spec.ref(*inputs)
    assert np.shape(ours) == np.shape(ref)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)

    u = rng.standard_normal(np.shape(ref))
    tensors = [Tensor(x, requires_grad=True) for x in inputs]
    spec.fn(*tensors).backward(u)
    for i, t in enumerate(tensors):
        expected = autograd.grad(lambda *xs: anp.sum(u * spec.ref(*xs)), i)(*inputs)
        np.testing.assert_allclose(t.grad, expected, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{spec.name} input {i} disagrees with autograd")


def test_every_distribution_function_has_a_row():
    functions = {name for name, obj in inspect.getmembers(D, inspect.isfunction)
                 if obj.__module__ == D.__name__ and not name.startswith("_")}
    rows = {spec.name for spec in DIST_SPECS}
    assert functions == rows, f"without a row: {functions - rows}; naming nothing: {rows - functions}"


# ================================================================== 2. check values
def _kl(mu, logvar):
    return D.kl_standard_normal(Tensor(np.atleast_1d(np.asarray(mu, float))),
                                Tensor(np.atleast_1d(np.asarray(logvar, float)))).data


def test_kl_check_values():
    assert _kl(1.0, 0.0) == pytest.approx(0.5, abs=1e-15)
    assert _kl(0.0, 1.0) == pytest.approx(0.5 * (np.e - 2), rel=1e-14)
    assert _kl(0.0, 1.0) == pytest.approx(0.359141, abs=5e-7)
    assert _kl([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.5 + 0.5 * (np.e - 2), rel=1e-14)  # sums dims
    assert _kl(0.0, 0.0) == 0.0


def test_kl_is_zero_only_at_the_prior():
    grid = np.concatenate([np.arange(-20, 21) / 10, [-1e-3, 1e-3]])  # contains 0.0 exactly
    mu, logvar = np.meshgrid(grid, grid)
    kl = D.kl_standard_normal_per_dim(Tensor(mu), Tensor(logvar)).data
    at_prior = (mu == 0) & (logvar == 0)
    assert at_prior.sum() == 1 and kl[at_prior] == 0.0
    assert np.all(kl[~at_prior] > 0)


def test_kl_gradients_are_the_closed_form():
    rng = np.random.default_rng(2)
    mu, logvar = rng.standard_normal((5, 4)), 1.5 * rng.standard_normal((5, 4))
    for kl_fn in (D.kl_standard_normal, D.kl_standard_normal_per_dim):
        mu_t, lv_t = Tensor(mu, requires_grad=True), Tensor(logvar, requires_grad=True)
        kl_fn(mu_t, lv_t).sum().backward()
        np.testing.assert_allclose(mu_t.grad, mu, rtol=1e-14)  # dKL/dmu = mu
        np.testing.assert_allclose(lv_t.grad, 0.5 * (np.exp(logvar) - 1), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_log_likelihood_finite_at_huge_logits(dtype):
    x = np.array([0.0, 0.0, 1.0, 1.0, 0.3, 0.3], dtype)[:, None]  # one pixel per row
    logits = Tensor(np.array([-1000.0, 1000.0, -1000.0, 1000.0, -1000.0, 1000.0], dtype)[:, None],
                    requires_grad=True)
    out = D.bernoulli_log_likelihood(x, logits)
    # softplus(l) = max(l, 0) + log1p(exp(-|l|)) and exp(-1000) is 0 in any float: exact form
    l64, x64 = logits.data.astype(np.float64)[:, 0], x.astype(np.float64)[:, 0]
    expected = x64 * l64 - np.maximum(l64, 0)  # [0, -1000, -1000, 0, -300, -700]
    assert out.dtype == dtype and out.shape == (6,) and np.all(np.isfinite(out.data))
    np.testing.assert_allclose(out.data, expected, rtol=1e-6 if dtype == np.float32 else 1e-15)
    out.sum().backward()
    assert logits.grad.dtype == dtype
    np.testing.assert_allclose(logits.grad[:, 0], x64 - (l64 > 0), rtol=1e-6, atol=0)  # x - sigmoid(l)


# ================================================================== 3. statistics
N_DRAWS = 100_000
N_SE = 4.5


def _mean_ok(z, mean, var):
    """Per dimension: the sample mean of z (N, d) is within N_SE standard errors of `mean`."""
    return np.abs(z.mean(axis=0) - mean) < N_SE * np.sqrt(var / len(z))


def _var_ok(z, var):
    """Per dimension: the sample variance is within N_SE standard errors of `var`
    (for normal data the sample variance has standard deviation var*sqrt(2/(N-1)))."""
    return np.abs(z.var(axis=0, ddof=1) - var) < N_SE * var * np.sqrt(2 / (len(z) - 1))


def test_sampler_mean_and_variance():
    rng = np.random.default_rng(3)
    mu, logvar = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.2, -1.0, -2.5, 0.6])
    assert np.all(np.abs(logvar) > 0.5)  # at logvar = 0 the right and wrong variances coincide
    eps = rng.standard_normal((N_DRAWS, 4))
    z = D.sample_gaussian(Tensor(mu), Tensor(logvar), eps).data
    assert np.all(_mean_ok(z, mu, np.exp(logvar)))
    assert np.all(_var_ok(z, np.exp(logvar)))
    # power: the variances of the classic mistakes are rejected by the same test, in every dimension
    for wrong in (np.exp(2 * logvar), np.exp(0.5 * logvar)):
        assert not np.any(_var_ok(z, wrong))
    z_bug = mu + np.exp(logvar) * eps  # exp(logvar) used as the std
    assert not np.any(_var_ok(z_bug, np.exp(logvar)))


def test_analytic_kl_matches_monte_carlo():
    rng = np.random.default_rng(4)
    mu = np.array([[0.8, -0.3, 1.5], [0.0, 0.0, 0.0], [-2.0, 0.5, 0.1]])
    logvar = np.array([[0.7, -1.2, 0.2], [0.9, -0.8, 0.3], [-0.3, 0.5, -2.0]])
    eps = rng.standard_normal((N_DRAWS, 3, 3))
    z = D.sample_gaussian(Tensor(mu), Tensor(logvar), eps)  # (N, 3 posteriors, 3 dims)
    log_ratio = (D.gaussian_log_density(z, Tensor(mu), Tensor(logvar))
                 - D.standard_normal_log_density(z)).data  # (N, 3)
    mc, se = log_ratio.mean(axis=0), log_ratio.std(axis=0) / np.sqrt(N_DRAWS)
    kl = D.kl_standard_normal(Tensor(mu), Tensor(logvar)).data
    assert np.all(np.abs(kl - mc) < 4 * se), (kl, mc, se)
    # power: a KL that treats logvar as the log standard deviation is rejected
    wrong = 0.5 * np.sum(mu ** 2 + np.exp(2 * logvar) - 2 * logvar - 1, axis=-1)
    assert np.all(np.abs(wrong - mc) > 4 * se)


# ================================================================== 4. the objective
def _np_kl(mu, logvar):
    return 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1)  # (B, d)


def _batch(rng, B=6, d=4):
    return -rng.uniform(50, 100, B), rng.standard_normal((B, d)), 0.7 * rng.standard_normal((B, d))


def _objective(log_px_z, mu, logvar, **kwargs):
    """(objective, stats, (grad log_px_z, grad mu, grad logvar)) from the engine."""
    ts = [Tensor(a, requires_grad=True) for a in (log_px_z, mu, logvar)]
    obj, stats = vae_objective(*ts, **kwargs)
    obj.backward()
    return obj, stats, [t.grad for t in ts]


def test_objective_is_negative_elbo_at_beta_one():
    log_px_z, mu, logvar = _batch(np.random.default_rng(5))
    obj, s, _ = _objective(log_px_z, mu, logvar)
    rec, kl_dims = -log_px_z.mean(), _np_kl(mu, logvar).mean(axis=0)
    kl = kl_dims.sum()
    np.testing.assert_allclose([s["rec"], s["kl"]], [rec, kl], rtol=1e-13)
    for value in (obj.data, s["objective"], s["neg_elbo"], -s["elbo"], s["rec"] + s["kl"]):
        assert value == pytest.approx(rec + kl, rel=1e-13)
    assert s["kl_term"] == pytest.approx(kl, rel=1e-13) and s["beta"] == 1.0
    np.testing.assert_allclose(s["kl_per_dim"], kl_dims, rtol=1e-13)
    assert s["kl_per_dim"].sum() == pytest.approx(s["kl"], rel=1e-13)


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.5])
def test_beta_scales_only_the_kl_term(beta):
    log_px_z, mu, logvar = _batch(np.random.default_rng(6))
    B = len(mu)
    _, s1, _ = _objective(log_px_z, mu, logvar)
    obj, s, (g_lp, g_mu, g_lv) = _objective(log_px_z, mu, logvar, beta=beta)
    assert obj.data == pytest.approx(s1["rec"] + beta * s1["kl"], rel=1e-13)
    assert s["beta"] == beta and s["kl_term"] == pytest.approx(s1["kl"], rel=1e-13)
    for key in ("elbo", "neg_elbo", "rec", "kl"):
        assert s[key] == s1[key]
    np.testing.assert_allclose(g_lp, np.full(B, -1 / B), rtol=1e-14)  # rec gradient untouched
    np.testing.assert_allclose(g_mu, beta * mu / B, rtol=1e-13, atol=0)
    np.testing.assert_allclose(g_lv, beta * 0.5 * (np.exp(logvar) - 1) / B, rtol=1e-13, atol=0)


@pytest.mark.parametrize("beta, free_bits, mode", [(0.2, 0.0, "batch_dim"), (1.0, 0.5, "batch_dim"),
                                                   (3.0, 0.5, "example_dim"), (0.7, 2.0, "total")])
def test_stats_elbo_is_always_the_true_bound(beta, free_bits, mode):
    log_px_z, mu, logvar = _batch(np.random.default_rng(7))
    _, s = vae_objective(Tensor(log_px_z), Tensor(mu), Tensor(logvar), beta, free_bits, mode)
    assert s["elbo"] == pytest.approx(log_px_z.mean() - _np_kl(mu, logvar).sum(axis=1).mean(), rel=1e-13)
    assert s["neg_elbo"] == -s["elbo"] == s["rec"] + s["kl"]
    assert s["kl_per_dim"].sum() == pytest.approx(s["kl"], rel=1e-13)
    assert s["objective"] != pytest.approx(s["neg_elbo"])  # the modified target differs here ...
    assert s["objective"] == pytest.approx(s["rec"] + beta * s["kl_term"], rel=1e-13)  # ... as stated


# ================================================================== 5. free bits and HA bits
def _thresholded(kl, mode):
    """The quantity compared with lambda in each mode, and where each (i, j) reads it."""
    B, d = kl.shape
    if mode == "batch_dim":
        return kl.mean(axis=0), lambda below: np.broadcast_to(below, (B, d))
    if mode == "example_dim":
        return kl.ravel(), lambda below: below.reshape(B, d)
    return kl.sum(axis=1) / d, lambda below: np.broadcast_to(below[:, None], (B, d))


def _lambda_between(values):
    """A free-bits threshold in the widest gap between the values (some below, some above),
    and its distance to the nearest value: the kink stays away from finite differences."""
    v = np.sort(values)
    k = np.argmax(np.diff(v))
    return (v[k] + v[k + 1]) / 2, (v[k + 1] - v[k]) / 2


def _free_bits_batch(rng, B=8, d=4):
    """A batch whose dimensions and examples use very different amounts of KL."""
    dim_scale, row_scale = np.array([0.2, 1.5, 0.3, 1.0]), np.linspace(0.3, 1.5, B)[:, None]
    mu = rng.standard_normal((B, d)) * dim_scale * row_scale
    logvar = rng.standard_normal((B, d)) * 0.5 * dim_scale * row_scale
    return -rng.uniform(50, 100, B), mu, logvar


@pytest.mark.parametrize("mode", FREE_BITS_MODES)
def test_free_bits_value_and_zero_gradient_below_threshold(mode):
    log_px_z, mu, logvar = _free_bits_batch(np.random.default_rng(8))
    B, beta = len(mu), 0.7
    kl = _np_kl(mu, logvar)
    values, per_entry = _thresholded(kl, mode)
    lam, margin = _lambda_between(values)
    below = per_entry(values < lam)
    assert below.any() and (~below).any() and margin > 1e-3

    obj, s, (g_lp, g_mu, g_lv) = _objective(log_px_z, mu, logvar, beta=beta, free_bits=lam,
                                            free_bits_mode=mode)
    expected_term = reference("free_bits")(kl, lam, mode)
    assert s["kl_term"] == pytest.approx(expected_term, rel=1e-13)
    assert obj.data == pytest.approx(-log_px_z.mean() + beta * expected_term, rel=1e-13)
    assert s["elbo"] == pytest.approx(log_px_z.mean() - kl.sum(axis=1).mean(), rel=1e-13)
    np.testing.assert_allclose(g_lp, np.full(B, -1 / B), rtol=1e-14)
    # below the threshold: exactly zero; above: the ordinary KL gradient of beta * mean_i sum_j KL_ij
    np.testing.assert_array_equal(g_mu[below], 0.0)
    np.testing.assert_array_equal(g_lv[below], 0.0)
    np.testing.assert_allclose(g_mu[~below], (beta * mu / B)[~below], rtol=1e-13, atol=0)
    np.testing.assert_allclose(g_lv[~below], (beta * 0.5 * (np.exp(logvar) - 1) / B)[~below],
                               rtol=1e-13, atol=0)
    # power: without free bits the same entries do get a gradient
    _, _, (_, g_mu0, g_lv0) = _objective(log_px_z, mu, logvar, beta=beta, free_bits_mode=mode)
    assert np.all(g_mu0[below] != 0) and np.all(g_lv0[below] != 0)


@pytest.mark.parametrize("mode", FREE_BITS_MODES)
def test_free_bits_zero_is_the_plain_kl(mode):
    log_px_z, mu, logvar = _free_bits_batch(np.random.default_rng(9))
    kl = free_bits_kl(D.kl_standard_normal_per_dim(Tensor(mu), Tensor(logvar)), 0.0, mode)
    assert kl.data == pytest.approx(_np_kl(mu, logvar).sum(axis=1).mean(), rel=1e-13)


def _ref_kl_term(kl, lam, mode):
    """The free-bits KL term in autograd.numpy (kl: (B, d) array or box)."""
    d = kl.shape[1]
    if lam == 0:
        return anp.mean(anp.sum(kl, axis=1))
    if mode == "batch_dim":
        return anp.sum(anp.maximum(anp.mean(kl, axis=0), lam))
    if mode == "example_dim":
        return anp.mean(anp.sum(kl * (kl > lam), axis=1))
    return anp.mean(anp.maximum(anp.sum(kl, axis=1), lam * d))


@pytest.mark.parametrize("mode", FREE_BITS_MODES)
def test_free_bits_objective_gradients(mode):
    log_px_z, mu, logvar = _free_bits_batch(np.random.default_rng(10))
    lam, margin = _lambda_between(_thresholded(_np_kl(mu, logvar), mode)[0])
    assert margin > 1e-3  # finite differences of size ~1e-6 never cross the kink

    def f(lp, m, lv):
        return vae_objective(lp, m, lv, beta=0.7, free_bits=lam, free_bits_mode=mode)[0]
    check_grads(f, log_px_z, mu, logvar)

    def ref(lp, m, lv):
        return -anp.mean(lp) + 0.7 * _ref_kl_term(ref_kl_per_dim(m, lv), lam, mode)
    ts = [Tensor(a, requires_grad=True) for a in (log_px_z, mu, logvar)]
    obj = f(*ts)
    obj.backward()
    assert obj.data == pytest.approx(ref(log_px_z, mu, logvar), rel=1e-13)
    for i, t in enumerate(ts):
        np.testing.assert_allclose(t.grad, autograd.grad(ref, i)(log_px_z, mu, logvar),
                                   rtol=1e-12, atol=1e-15)


def test_free_bits_bad_arguments():
    log_px_z, mu, logvar = (Tensor(a) for a in _batch(np.random.default_rng(11)))
    for free_bits in (0.0, 0.5):
        with pytest.raises(ValueError, match=r"unknown free-bits mode 'per_dim'.*batch_dim"):
            vae_objective(log_px_z, mu, logvar, free_bits=free_bits, free_bits_mode="per_dim")
    for mode in FREE_BITS_MODES:
        with pytest.raises(ValueError, match=r"free_bits must be >= 0.*-0.1"):
            vae_objective(log_px_z, mu, logvar, free_bits=-0.1, free_bits_mode=mode)


def test_ha_bits_value_and_zero_gradient_below_the_floor():
    kl = np.array([[0.1, 0.3, 0.0], [0.2, 0.1, 0.5]])  # mean 0.2
    for lam, value, grad in ((0.5, 0.5, 0.0), (0.1, 0.2, 1 / 6), (0.0, 0.2, 1 / 6)):
        t = Tensor(kl, requires_grad=True)
        out = ha_bits_kl(t, lam)
        assert out.item() == pytest.approx(value)
        out.backward()
        np.testing.assert_allclose(t.grad, grad)  # below the floor: no KL gradient at all
    with pytest.raises(ValueError, match="ha_bits must be >= 0"):
        ha_bits_kl(Tensor(kl), -1)


def test_ha_bits_objective_is_d_times_the_floor_and_excludes_free_bits():
    log_px_z, mu, logvar = (Tensor(a) for a in _batch(np.random.default_rng(12)))
    d = mu.shape[1]
    _, stats = vae_objective(log_px_z, mu, logvar, ha_bits=100.0)
    assert stats["kl_term"] == pytest.approx(d * 100.0)  # nats per example, like rec
    _, plain = vae_objective(log_px_z, mu, logvar)
    _, low = vae_objective(log_px_z, mu, logvar, ha_bits=1e-9)  # below the floor: the plain KL
    assert low["kl_term"] == pytest.approx(plain["kl_term"]) and low["kl"] == plain["kl"]
    with pytest.raises(ValueError, match="not both"):
        vae_objective(log_px_z, mu, logvar, free_bits=0.1, ha_bits=0.1)


# ================================================================== 6. the whole MLP VAE
def _set_param(model, dotted_name, tensor):
    """Replace the parameter called e.g. "encoder.layers.0.W" by another Tensor."""
    *path, last = dotted_name.split(".")
    owner = model
    for part in path:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    setattr(owner, last, tensor)


def _ref_vae_objective(p, x, eps, likelihood, x_logvar, beta, lam, mode, y_onehot=None, label_into="input"):
    """MLPVAE(6, (5,), 3, tanh).loss written out from the parameter arrays in autograd.numpy.

    With y_onehot (B, C), the conditional VAE: the label is appended to the encoder's input x and
    to the decoder's input z, and with label_into="every-layer" to the decoder's hidden layer too.
    """
    label = (lambda a: a) if y_onehot is None else (lambda a: anp.concatenate([a, y_onehot], axis=1))
    x_in = label(x)
    h = anp.tanh(x_in @ p["encoder.layers.0.W"] + p["encoder.layers.0.b"])
    out = h @ p["encoder.layers.1.W"] + p["encoder.layers.1.b"]
    mu, logvar = out[:, :3], out[:, 3:]
    z = ref_sample(mu, logvar, eps)
    g = anp.tanh(label(z) @ p["decoder.layers.0.W"] + p["decoder.layers.0.b"])
    g = label(g) if label_into == "every-layer" else g
    x_out = g @ p["decoder.layers.1.W"] + p["decoder.layers.1.b"]
    if likelihood == "bernoulli":
        log_px_z = ref_bernoulli(x, x_out)
    else:
        learned = x_logvar in (None, "learned-scalar", "learned-pixel")
        log_px_z = ref_log_normal(x, x_out, p["x_logvar"] if learned else x_logvar)
    return -anp.mean(log_px_z) + beta * _ref_kl_term(ref_kl_per_dim(mu, logvar), lam, mode)


# (likelihood, x_logvar, n_classes): n_classes > 0 is the conditional VAE (Sohn et al. 2015)
MODELS = [("bernoulli", None, 0), ("gaussian", None, 0), ("gaussian", -0.5, 0), ("gaussian", "learned-pixel", 0),
          ("bernoulli", None, 4), ("gaussian", "learned-pixel", 4)]
MODEL_CASES = [(lik, x_logvar, n_classes, mode) for lik, x_logvar, n_classes in MODELS
               for mode in (None, *FREE_BITS_MODES)]


def _tiny_model_case(likelihood, x_logvar, n_classes, mode, label_into="input"):
    """A float64 MLPVAE(6, (5,), 3), a batch, fixed eps, and a free-bits threshold off the kinks.

    kwargs holds the labels y of a conditional model (n_classes > 0), one of each class at least.
    """
    rng = np.random.default_rng(12)
    model = MLPVAE(n_in=6, hidden=(5,), latent=3, activation="tanh", likelihood=likelihood,
                   x_logvar=x_logvar, rng=rng, dtype=np.float64, n_classes=n_classes, label_into=label_into)
    for p in model.parameters():  # larger than the default init, so the KLs differ a lot
        p.data *= 2.5
    x = rng.uniform(0, 1, (7, 6)) if likelihood == "bernoulli" else rng.standard_normal((7, 6))
    eps = rng.standard_normal((7, 3))
    y = np.arange(7) % n_classes if n_classes else None
    if likelihood == "gaussian" and isinstance(x_logvar, str):  # a learned per-pixel variance, not all equal
        model.x_logvar.data[...] = rng.normal(0, 0.5, model.x_logvar.shape)
    lam = 0.0
    if mode is not None:
        mu, logvar = (t.data for t in model.encode(Tensor(x), y))
        lam, margin = _lambda_between(_thresholded(_np_kl(mu, logvar), mode)[0])
        assert margin > 1e-4
    return model, x, eps, dict(beta=0.6, free_bits=lam, free_bits_mode=mode or "batch_dim", y=y)


@pytest.mark.parametrize("likelihood, x_logvar, n_classes, mode", MODEL_CASES)
def test_mlpvae_objective_gradient_check(likelihood, x_logvar, n_classes, mode):
    model, x, eps, kwargs = _tiny_model_case(likelihood, x_logvar, n_classes, mode)
    names = [n for n, _ in model.named_parameters()]
    learned = likelihood == "gaussian" and not isinstance(x_logvar, float)  # x_logvar is a parameter
    assert len(names) == 8 + learned
    if learned:
        assert model.x_logvar.shape == ((6,) if x_logvar == "learned-pixel" else ())
    assert model.encoder.layers[0].W.shape == (6 + n_classes, 5) and model.decoder.layers[0].W.shape == (3 + n_classes, 5)

    def f(*params):
        for name, t in zip(names, params):
            _set_param(model, name, t)
        return model.loss(x, eps, **kwargs)[0]
    check_grads(f, *[p.data.copy() for p in model.parameters()])


@pytest.mark.parametrize("likelihood, x_logvar, n_classes, mode", MODEL_CASES)
def test_mlpvae_objective_matches_autograd(likelihood, x_logvar, n_classes, mode):
    model, x, eps, kwargs = _tiny_model_case(likelihood, x_logvar, n_classes, mode)
    y_onehot = np.eye(n_classes)[kwargs["y"]] if n_classes else None
    names = [n for n, _ in model.named_parameters()]
    values = [p.data.copy() for p in model.parameters()]

    def ref(*vals):
        return _ref_vae_objective(dict(zip(names, vals)), x, eps, likelihood, x_logvar,
                                  kwargs["beta"], kwargs["free_bits"], kwargs["free_bits_mode"], y_onehot)
    obj, stats = model.loss(x, eps, **kwargs)
    obj.backward()
    assert obj.data == pytest.approx(ref(*values), rel=1e-12)
    assert stats["objective"] != pytest.approx(stats["neg_elbo"])  # beta and free bits are on
    for i, (name, p) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(ref, i)(*values), rtol=1e-10, atol=1e-13,
                                   err_msg=name)


# The importance-weighted objective (Burda et al. 2016), written out again in autograd.numpy: the
# decoder runs once per sample k (a loop, where the model batches all K*B rows), log-mean-exp
# with the max subtracted by hand.
def _ref_iw_objective(p, x, eps, likelihood, x_logvar, beta, y_onehot=None):
    label = (lambda a: a) if y_onehot is None else (lambda a: anp.concatenate([a, y_onehot], axis=1))
    h = anp.tanh(label(x) @ p["encoder.layers.0.W"] + p["encoder.layers.0.b"])
    out = h @ p["encoder.layers.1.W"] + p["encoder.layers.1.b"]
    mu, logvar = out[:, :3], out[:, 3:]
    log_w = []
    for e in eps:  # one (B, d) draw per importance sample
        z = ref_sample(mu, logvar, e)
        g = anp.tanh(label(z) @ p["decoder.layers.0.W"] + p["decoder.layers.0.b"])
        x_out = g @ p["decoder.layers.1.W"] + p["decoder.layers.1.b"]
        if likelihood == "bernoulli":
            log_px_z = ref_bernoulli(x, x_out)
        else:
            learned = x_logvar in (None, "learned-scalar", "learned-pixel")
            log_px_z = ref_log_normal(x, x_out, p["x_logvar"] if learned else x_logvar)
        log_pz = anp.sum(-0.5 * LOG_2PI - 0.5 * z ** 2, axis=1)
        log_qz = anp.sum(-0.5 * LOG_2PI - 0.5 * logvar - 0.5 * (z - mu) ** 2 / anp.exp(logvar), axis=1)
        log_w.append(log_px_z + beta * (log_pz - log_qz))
    log_w = anp.stack(log_w)  # (K, B)
    m = anp.max(log_w, axis=0)
    return -anp.mean(m + anp.log(anp.mean(anp.exp(log_w - m), axis=0)))


def _tiny_iw_case(likelihood, x_logvar, n_classes, beta):
    model, x, _, kwargs = _tiny_model_case(likelihood, x_logvar, n_classes, None)
    eps = np.random.default_rng(30).standard_normal((4, len(x), 3))  # K = 4 samples per example
    return model, x, eps, dict(beta=beta, y=kwargs["y"])


IW_CASES = [(*m, beta) for m in MODELS for beta in (1.0, 0.6)]


@pytest.mark.parametrize("likelihood, x_logvar, n_classes, beta", IW_CASES)
def test_iw_objective_gradient_check(likelihood, x_logvar, n_classes, beta):
    model, x, eps, kwargs = _tiny_iw_case(likelihood, x_logvar, n_classes, beta)
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        for name, t in zip(names, params):
            _set_param(model, name, t)
        return model.iw_loss(x, eps, **kwargs)[0]
    check_grads(f, *[p.data.copy() for p in model.parameters()])


@pytest.mark.parametrize("likelihood, x_logvar, n_classes, beta", IW_CASES)
def test_iw_objective_matches_autograd(likelihood, x_logvar, n_classes, beta):
    model, x, eps, kwargs = _tiny_iw_case(likelihood, x_logvar, n_classes, beta)
    y_onehot = np.eye(n_classes)[kwargs["y"]] if n_classes else None
    names = [n for n, _ in model.named_parameters()]
    values = [p.data.copy() for p in model.parameters()]

    def ref(*vals):
        return _ref_iw_objective(dict(zip(names, vals)), x, eps, likelihood, x_logvar, beta, y_onehot)
    obj, stats = model.iw_loss(x, eps, **kwargs)
    obj.backward()
    assert obj.data == pytest.approx(ref(*values), rel=1e-12)
    if beta == 1.0:
        assert stats["iw_bound"] == pytest.approx(-obj.data, rel=1e-12)
    for i, (name, p) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(ref, i)(*values), rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_iw_objective_one_sample_and_jensen():
    """K = 1 is the one-sample ELBO (its KL a Monte-Carlo estimate); for the same samples the
    K-sample bound is at least their average ELBO (Jensen), with equality only if all weights agree."""
    model, x, eps, _ = _tiny_iw_case("bernoulli", None, 0, 1.0)
    mu, logvar = (t.data for t in model.encode(x))
    one_sample = []
    for e in eps:
        z = mu + np.exp(0.5 * logvar) * e
        log_px_z = D.bernoulli_log_likelihood(Tensor(x), model.decode(Tensor(z))).data
        log_w = log_px_z + np.sum(-0.5 * z ** 2 + 0.5 * logvar + 0.5 * e ** 2, axis=1)  # log p(z) - log q(z|x)
        one_sample.append(log_w)
        assert model.iw_loss(x, e[None])[1]["iw_bound"] == pytest.approx(log_w.mean(), rel=1e-12)
    one_sample = np.array(one_sample)  # (K, B)
    bound = model.iw_loss(x, eps)[1]["iw_bound"]
    assert bound > one_sample.mean() + 1e-3
    m = one_sample.max(axis=0)
    assert bound == pytest.approx(np.mean(m + np.log(np.mean(np.exp(one_sample - m), axis=0))), rel=1e-12)


def test_gaussian_decoder_elbo_is_in_true_nats():
    """log p(x|z) of a Gaussian decoder includes -0.5*log(2*pi*var) per pixel: the squared error
    alone (the "L2 loss") is not a log-likelihood, and its ELBO would not be comparable."""
    rng = np.random.default_rng(3)
    x, eps = rng.uniform(0, 1, (5, 6)), rng.standard_normal((5, 3))
    for x_logvar in (-2.0, "learned-pixel"):
        model = MLPVAE(6, (5,), 3, "tanh", "gaussian", x_logvar, rng=rng, dtype=np.float64)
        if x_logvar == "learned-pixel":
            model.x_logvar.data[...] = rng.normal(0, 1, 6)
        var = np.exp(np.broadcast_to(np.asarray(getattr(model.x_logvar, "data", model.x_logvar)), (6,)))
        mu, logvar = (t.data for t in model.encode(x))
        mean = model.decode(mu + np.exp(0.5 * logvar) * eps).data
        squared = np.sum((x - mean) ** 2 / (2 * var), axis=1)
        _, stats = model.loss(x, eps)
        assert stats["rec"] == pytest.approx(np.mean(squared) + 0.5 * np.sum(np.log(2 * np.pi * var)), rel=1e-12)


# the conditional decoder that reads the label at every layer (models.LabelledMLP)
LABELLED_CASES = [("bernoulli", None, 4, None), ("gaussian", "learned-pixel", 4, "batch_dim")]


@pytest.mark.parametrize("likelihood, x_logvar, n_classes, mode", LABELLED_CASES)
def test_label_at_every_decoder_layer_matches_autograd_and_finite_differences(likelihood, x_logvar, n_classes,
                                                                               mode):
    model, x, eps, kwargs = _tiny_model_case(likelihood, x_logvar, n_classes, mode, label_into="every-layer")
    assert model.decoder.layers[0].W.shape == (3 + 4, 5) and model.decoder.layers[1].W.shape == (5 + 4, 6)
    names = [n for n, _ in model.named_parameters()]
    values = [p.data.copy() for p in model.parameters()]

    def ref(*vals):
        return _ref_vae_objective(dict(zip(names, vals)), x, eps, likelihood, x_logvar, kwargs["beta"],
                                  kwargs["free_bits"], kwargs["free_bits_mode"], np.eye(4)[kwargs["y"]], "every-layer")
    obj, _ = model.loss(x, eps, **kwargs)
    obj.backward()
    assert obj.data == pytest.approx(ref(*values), rel=1e-12)
    for i, (name, p) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(ref, i)(*values), rtol=1e-10, atol=1e-13, err_msg=name)

    def f(*params):
        for name, t in zip(names, params):
            _set_param(model, name, t)
        return model.loss(x, eps, **kwargs)[0]
    check_grads(f, *values)


def test_conditional_vae_uses_its_labels_and_refuses_misuse():
    rng = np.random.default_rng(4)
    x, eps = rng.uniform(0, 1, (6, 6)), rng.standard_normal((6, 3))
    cvae = MLPVAE(6, (5,), 3, "tanh", n_classes=3, rng=rng, dtype=np.float64)
    a, b = (cvae.loss(x, eps, y=y)[1]["neg_elbo"] for y in (np.zeros(6, int), np.arange(6) % 3))
    assert a != pytest.approx(b)  # the label changes q(z|x, y) and p(x|z, y)
    assert cvae.sample(4, rng, y=np.array([0, 1, 2, 0])).shape == (4, 6)
    with pytest.raises(ValueError, match="needs the labels y"):
        cvae.loss(x, eps)
    with pytest.raises(ValueError, match="integers in 0..2"):
        cvae.loss(x, eps, y=np.full(6, 3))
    with pytest.raises(ValueError, match="not conditional"):
        MLPVAE(6, (5,), 3, rng=rng).loss(x, eps, y=np.zeros(6, int))
    with pytest.raises(ValueError, match="x_logvar must be one of"):
        MLPVAE(6, (5,), 3, likelihood="gaussian", x_logvar="learned-pxl")
    with pytest.raises(ValueError, match="label_into must be one of"):
        MLPVAE(6, (5,), 3, n_classes=3, label_into="output")


# ================================================================== 7. diagnostics
def test_active_units_counts_variance_of_the_mean_not_its_size():
    N = 1000
    signs = np.tile([1.0, -1.0], N // 2)[:, None]  # mean 0, variance exactly 1
    variances = np.array([0.0, 0.005, 0.0098, 0.0102, 0.02, 1.0])
    offsets = np.array([3.0, -2.0, 0.5, 10.0, 0.0, -1.0])  # large means must not count
    mu = offsets + signs * np.sqrt(variances)
    n, var = active_units(mu)
    assert n == 3
    np.testing.assert_allclose(var, variances, rtol=1e-9, atol=1e-15)
    assert active_units(mu.astype(np.float32))[0] == 3
    assert active_units(mu, threshold=0.006)[0] == 4
    assert active_units(mu, threshold=1.5)[0] == 0


def _linear_gaussian_encoder(rng, N, scale, var):
    """mu = scale * x with x ~ N(0, I), fixed variances var: q(z) = N(0, scale^2 + var) per dimension, so
    I(x; z) = 0.5 * sum log((scale^2 + var) / var) and the mean KL = 0.5 * sum(scale^2 + var - log var - 1)."""
    mu = scale * rng.standard_normal((N, len(scale)))
    logvar = np.broadcast_to(np.log(var), mu.shape).copy()
    z = mu + np.sqrt(var) * rng.standard_normal(mu.shape)
    return mu, logvar, z, 0.5 * np.sum(np.log((scale ** 2 + var) / var)), 0.5 * np.sum(scale ** 2 + var - np.log(var) - 1)


def test_mutual_information_of_a_collapsed_encoder_is_about_zero():
    rng = np.random.default_rng(13)
    N, d = 1000, 16
    # q(z|x) = p(z) for every x: the two log-densities of each term are equal, so the estimate is 0
    mu, logvar = np.zeros((N, d)), np.zeros((N, d))
    mi, se = mutual_information(mu, logvar, rng.standard_normal((N, d)))
    assert abs(mi) < 1e-12 and se < 1e-12
    # what a collapsed run's encoder gives: means that barely vary, variances a hair below 1
    mu, logvar, z, _, kl = _linear_gaussian_encoder(rng, N, np.full(d, 0.003), np.full(d, 0.999))
    mi, se = mutual_information(mu, logvar, z)
    assert kl < 0.001 and 0 < se < 0.01
    assert abs(mi) <= 2 * se  # within 2 standard errors of 0 (the closed-form entropy's noise alone is 0.09 here)


def test_mutual_information_matches_the_exact_value_within_its_standard_error():
    rng = np.random.default_rng(16)
    N, d = 1000, 4
    estimates, errors = [], []
    for _ in range(20):  # 20 data sets from one encoder whose I(x; z) is known
        mu, logvar, z, exact, kl = _linear_gaussian_encoder(rng, N, np.array([1.0, 0.5, 0.0, 0.0]),
                                                            np.array([0.5, 0.8, 1.0, 1.0]))
        mi, se = mutual_information(mu, logvar, z)
        estimates.append(mi)
        errors.append(se)
        assert mi <= kl + 2 * se  # never above the KL beyond its error
    assert 0.5 < exact < 1.0 and kl > exact
    # the mean of 20 estimates lies within 3 of its standard errors of I (bias and noise together)
    assert abs(np.mean(estimates) - exact) < 3 * np.mean(errors) / np.sqrt(20)
    # and the reported standard error is the spread the estimates really have
    assert 0.6 < np.mean(errors) / np.std(estimates, ddof=1) < 1.6


def test_mutual_information_of_separated_posteriors_is_about_log_B():
    rng = np.random.default_rng(14)
    B, d = 128, 2
    mu = np.zeros((B, d))
    mu[:, 0] = 12.0 * np.arange(B)  # neighbours 12 standard deviations apart
    logvar = np.zeros((B, d))
    mi, se = mutual_information(mu, logvar, mu + rng.standard_normal((B, d)))
    assert mi == pytest.approx(np.log(B), abs=1e-6) and se < 1e-6  # each z_i is explained by x_i alone


def test_mutual_information_grows_with_separation_and_is_bounded_by_log_B():
    rng = np.random.default_rng(15)
    B, d = 200, 3
    base, eps = rng.standard_normal((B, d)), rng.standard_normal((B, d))
    logvar = 0.3 * rng.standard_normal((B, d))
    mis = []
    for spread in (0.0, 0.3, 1.0, 3.0, 30.0):
        mu = spread * base
        mis.append(mutual_information(mu, logvar, mu + np.exp(0.5 * logvar) * eps, chunk=64)[0])
        assert mis[-1] <= np.log(B) + 1e-12  # exact: logsumexp_k >= its k = i term
    assert np.all(np.diff(mis) > 0), mis
    assert 0.5 < mis[2] < np.log(B) - 1  # in between for overlapping posteriors


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I), so p(x) = N(b, W W^T + sigma^2 I) exactly.

    W has orthogonal columns (norms 2 and 1), so the exact posterior N(S W^T (x - b) / sigma^2, S),
    S = (I + W^T W / sigma^2)^-1, is diagonal; the encoder is a deliberately imperfect copy of it
    (mean shrunk by 0.7, variances too narrow by e^-0.3), so the K = 1 bound is loose by about
    1 nat. Same interface as MLPVAE for the diagnostics.
    """

    def __init__(self, rng, n=5, d=2, sigma=0.5):
        self.W = np.linalg.qr(rng.standard_normal((n, d)))[0] * np.array([2.0, 1.0])
        self.b, self.sigma2, self.latent = rng.standard_normal(n), sigma ** 2, d
        S = np.linalg.inv(np.eye(d) + self.W.T @ self.W / self.sigma2)
        self.A = 0.7 * S @ self.W.T / self.sigma2
        self.q_logvar = np.log(np.diag(S)) - 0.3

    def encode(self, x):
        mu = (x.data - self.b) @ self.A.T
        return Tensor(mu), Tensor(np.broadcast_to(self.q_logvar, mu.shape).copy())

    def decode(self, z):
        return Tensor(z.data @ self.W.T + self.b)

    def log_likelihood(self, x, x_out):
        return Tensor(np.sum(-0.5 * (LOG_2PI + np.log(self.sigma2)) - (x.data - x_out.data) ** 2
                             / (2 * self.sigma2), axis=-1))

    def sample(self, rng, N):
        z = rng.standard_normal((N, self.latent))
        return z @ self.W.T + self.b + np.sqrt(self.sigma2) * rng.standard_normal((N, len(self.b)))

    def exact_log_px(self, x):
        C = self.W @ self.W.T + self.sigma2 * np.eye(len(self.b))
        r = x - self.b
        return -0.5 * (len(self.b) * LOG_2PI + np.linalg.slogdet(C)[1]
                       + np.sum(r * np.linalg.solve(C, r.T).T, axis=1))

    def elbo(self, x):
        """E_q[log p(x|z)] - KL(q || p) in closed form."""
        mu, logvar = (t.data for t in self.encode(Tensor(x)))
        resid = x - mu @ self.W.T - self.b
        trace = np.exp(logvar) @ np.sum(self.W ** 2, axis=0)  # E|W (z - mu)|^2
        e_log_px = -0.5 * len(self.b) * (LOG_2PI + np.log(self.sigma2)) - (
            np.sum(resid ** 2, axis=1) + trace) / (2 * self.sigma2)
        return e_log_px - _np_kl(mu, logvar).sum(axis=1)


@pytest.fixture(scope="module")
def linear_gaussian():
    rng = np.random.default_rng(16)
    model = LinearGaussian(rng)
    x = model.sample(rng, 1000)
    return model, x, model.exact_log_px(x)


def test_linear_gaussian_reference_is_right(linear_gaussian):
    # the closed forms this section relies on, against brute force at one x
    model, x, exact = linear_gaussian
    z = np.random.default_rng(17).standard_normal((400_000, model.latent))
    x0 = Tensor(np.broadcast_to(x[0], (len(z), x.shape[1])))
    log_px_z = model.log_likelihood(x0, model.decode(Tensor(z))).data  # importance sampling from p(z)
    w = np.exp(log_px_z - log_px_z.max())
    se = w.std() / w.mean() / np.sqrt(len(z))  # delta method: the sd of log(mean(w))
    assert abs(np.log(w.mean()) + log_px_z.max() - exact[0]) < 4 * se
    assert np.all(model.elbo(x) < exact)


def test_iw_with_one_sample_is_the_elbo(linear_gaussian):
    model, x, _ = linear_gaussian
    iw1 = iw_log_likelihood(model, x, 1, np.random.default_rng(18), batch_size=len(x))
    # exactly one ELBO sample, drawn with the same eps ...
    eps = np.random.default_rng(18).standard_normal((1, *x.shape[:1], model.latent))[0]
    mu, logvar = (t.data for t in model.encode(Tensor(x)))
    z = mu + np.exp(0.5 * logvar) * eps
    log_w = (model.log_likelihood(Tensor(x), model.decode(Tensor(z))).data
             + D.standard_normal_log_density(Tensor(z)).data
             - D.gaussian_log_density(Tensor(z), Tensor(mu), Tensor(logvar)).data)
    np.testing.assert_allclose(iw1, log_w, rtol=1e-12)
    # ... whose average agrees with the closed-form ELBO
    diff = iw1 - model.elbo(x)
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(x))


def test_iw_bound_tightens_with_K_towards_exact_log_px(linear_gaussian):
    model, x, exact = linear_gaussian
    # one seed for every K: the first K samples are shared (common random numbers), which makes
    # the differences between K much less noisy than the bounds themselves
    bounds = {K: iw_log_likelihood(model, x, K, np.random.default_rng(19), batch_size=len(x))
              for K in (1, 10, 100, 1000)}
    gaps = {K: np.mean(exact - b) for K, b in bounds.items()}
    Ks = sorted(bounds)
    for small, large in zip(Ks[:-1], Ks[1:]):
        gain = bounds[large] - bounds[small]
        assert gain.mean() > 3 * gain.std() / np.sqrt(len(x)), (small, large, gaps)
    se = np.std(exact - bounds[1000]) / np.sqrt(len(x))
    assert -4 * se < gaps[1000] < 0.06, gaps  # from below, and close
    assert gaps[1] > 0.5 and gaps[1000] < gaps[1] / 15, gaps  # the encoder really is imperfect


def test_iw_chunking_does_not_change_the_samples(linear_gaussian):
    model, x, _ = linear_gaussian
    runs = [iw_log_likelihood(model, x[:50], 60, np.random.default_rng(20), batch_size=50, chunk=c)
            for c in (60, 25, 7)]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-12)
    with pytest.raises(ValueError, match="K must be >= 1"):
        iw_log_likelihood(model, x[:5], 0, np.random.default_rng(0))


def _small_vae(likelihood="bernoulli", dtype=np.float64):
    rng = np.random.default_rng(21)
    model = MLPVAE(n_in=6, hidden=(5,), latent=3, activation="tanh", likelihood=likelihood,
                   rng=rng, dtype=dtype)
    x = rng.uniform(0, 1, (40, 6)).astype(dtype)
    return model, x


def test_iw_one_sample_on_mlpvae_matches_evaluate_elbo_in_expectation():
    model, x = _small_vae()
    x = np.repeat(x[:10], 300, axis=0)
    iw1 = iw_log_likelihood(model, x, 1, np.random.default_rng(22), batch_size=len(x))
    elbo = -evaluate_elbo(model, x, np.random.default_rng(22), batch_size=len(x))["neg_elbo"]
    # with one seed both use the same z, so they differ only by Monte-Carlo KL - analytic KL
    eps = np.random.default_rng(22).standard_normal((len(x), 3))
    mu, logvar = (t.data for t in model.encode(Tensor(x)))
    z = mu + np.exp(0.5 * logvar) * eps
    kl_error = (D.gaussian_log_density(Tensor(z), Tensor(mu), Tensor(logvar)).data
                - D.standard_normal_log_density(Tensor(z)).data - _np_kl(mu, logvar).sum(axis=1))
    assert iw1.mean() - elbo == pytest.approx(-kl_error.mean(), abs=1e-10)
    assert abs(iw1.mean() - elbo) < 4 * kl_error.std() / np.sqrt(len(x))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_evaluate_elbo(likelihood):
    model, x = _small_vae(likelihood)
    s = evaluate_elbo(model, x, np.random.default_rng(23), batch_size=len(x))
    assert s["neg_elbo"] == pytest.approx(s["rec"] + s["kl"], rel=1e-13)
    assert s["elbo"] == pytest.approx(-s["neg_elbo"], rel=1e-13)
    assert s["objective"] == pytest.approx(s["neg_elbo"], rel=1e-13)  # default loss_kwargs
    assert s["kl_per_dim"].shape == (3,) and s["kl_per_dim"].sum() == pytest.approx(s["kl"], rel=1e-13)
    # the same as one call of model.loss with eps drawn from the same seed
    _, direct = model.loss(x, np.random.default_rng(23).standard_normal((len(x), 3)))
    for key in ("neg_elbo", "rec", "kl"):
        assert s[key] == pytest.approx(direct[key], rel=1e-13)
    # deterministic given the seed; batches are weighted by their sizes (7 does not divide 40)
    again = evaluate_elbo(model, x, np.random.default_rng(23), batch_size=len(x))
    batched = evaluate_elbo(model, x, np.random.default_rng(23), batch_size=7)
    for key in ("neg_elbo", "rec", "kl"):
        assert again[key] == s[key]
        assert batched[key] == pytest.approx(s[key], rel=1e-12)
    assert evaluate_elbo(model, x, np.random.default_rng(24))["rec"] != s["rec"]  # it uses the rng
    # a modified objective changes 'objective' only
    mod = evaluate_elbo(model, x, np.random.default_rng(23), batch_size=len(x), beta=0.5, free_bits=0.3)
    assert mod["neg_elbo"] == s["neg_elbo"] and mod["objective"] != pytest.approx(s["objective"])


def test_diagnostics_run_in_float32():
    model, x = _small_vae(dtype=np.float32)
    s = evaluate_elbo(model, x, np.random.default_rng(25), batch_size=16)
    ll = iw_log_likelihood(model, x, 20, np.random.default_rng(26))
    assert np.isfinite(s["neg_elbo"]) and ll.dtype == np.float64 and ll.shape == (len(x),)
    assert np.all(np.isfinite(ll))


def test_iw_float32_evaluation_matches_float64_to_a_hundredth_of_a_nat():
    """The float32 path (float32 decoder and Bernoulli term) gives the float64 reference's value."""
    rng = np.random.default_rng(32)
    m64 = MLPVAE(n_in=784, hidden=(64,), latent=8, activation="tanh", rng=rng, dtype=np.float64)
    for p in m64.parameters():
        p.data *= 3.0  # logits far from 0, as in a trained model
    m32 = MLPVAE(n_in=784, hidden=(64,), latent=8, activation="tanh", rng=rng, dtype=np.float32)
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        p32.data[...] = p64.data
    x = (rng.random((30, 784)) < 0.2).astype(np.float64)
    seen = []

    def progress(batches, total):
        seen.append(total)
        return batches
    ll64 = iw_log_likelihood(m64, x, 200, np.random.default_rng(33), batch_size=7, chunk=64)
    ll32 = iw_log_likelihood(m32, x.astype(np.float32), 200, np.random.default_rng(33), batch_size=7, chunk=64,
                             progress=progress)
    assert seen == [5]  # 30 images in batches of 7
    assert abs(ll32.mean() - ll64.mean()) < 0.01 and np.max(np.abs(ll32 - ll64)) < 0.05
    assert ll64.std() > 1.0  # the images differ, so agreement is not a coincidence of one value


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_output_bias_starts_at_the_average_image(likelihood):
    """With the decoder's output weights zeroed, every z decodes to the average image (clipped to
    [1e-3, 1 - 1e-3] for the Bernoulli log-odds, where a pixel that is always 0 would be -inf)."""
    model, x = _small_vae(likelihood)
    x_mean = np.concatenate([x.mean(axis=0)[:4], [0.0, 1.0]])
    model.init_output_bias(x_mean)
    model.decoder.layers[-1].W.data[...] = 0
    z = np.random.default_rng(40).standard_normal((3, 3))
    expected = np.clip(x_mean, 1e-3, 1 - 1e-3) if likelihood == "bernoulli" else x_mean
    np.testing.assert_allclose(model.mean_image(model.decode(z)), np.broadcast_to(expected, (3, 6)), rtol=1e-12)
