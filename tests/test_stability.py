"""Values and gradients at |x| >= 800, where the textbook formula overflows or underflows.

exp(800) is inf and exp(-800) is 0 in float64, so log(sum(exp(x))), log(1 + exp(x)),
1 / (1 + exp(-x)) and log(sigmoid(x)) written as they read go to inf, -inf or nan there. Each
function below must give the exact limit instead, with a finite gradient; the expected values
come from the identities log(e^a + e^b) = a + log1p(e^(b - a)) and softplus(x) = x + softplus(-x).
"""
import numpy as np
import pytest

import minivae.ops as ops
from minivae import Tensor, diagnostics, distributions, elbo

BIG = [-1000.0, -800.0, 800.0, 1000.0]


def _value_and_grad(f, x):
    t = Tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    out = f(t)
    ops.sum(out).backward()
    return np.asarray(out.data), t.grad


@pytest.mark.parametrize("a", BIG)
def test_logsumexp_at_large_magnitudes(a):
    value, grad = _value_and_grad(lambda t: ops.logsumexp(t, axis=-1), [[a, a - 1.0], [a, a]])
    want = np.array([a + np.log1p(np.exp(-1.0)), a + np.log(2.0)])
    np.testing.assert_allclose(value, want, rtol=1e-14, err_msg=f"logsumexp near {a}")
    np.testing.assert_allclose(grad.sum(axis=-1), 1.0, rtol=1e-12, err_msg="softmax weights sum to 1")


@pytest.mark.parametrize("a", BIG)
def test_softplus_at_large_magnitudes(a):
    value, grad = _value_and_grad(ops.softplus, [a])
    want = max(a, 0.0) + np.log1p(np.exp(-abs(a)))
    assert value[0] == pytest.approx(want, rel=1e-14, abs=0.0), f"softplus({a}) = {value[0]}, expected {want}"
    assert grad[0] == (1.0 if a > 0 else pytest.approx(0.0, abs=1e-300)), f"softplus'({a}) = {grad[0]}"


@pytest.mark.parametrize("a", BIG)
def test_sigmoid_and_log_sigmoid_at_large_magnitudes(a):
    value, grad = _value_and_grad(ops.sigmoid, [a])
    assert value[0] == (1.0 if a > 0 else pytest.approx(0.0, abs=1e-300)) and np.isfinite(grad[0])
    value, grad = _value_and_grad(ops.log_sigmoid, [a])
    want = -(max(-a, 0.0) + np.log1p(np.exp(-abs(a))))  # log sigmoid(a) = -softplus(-a)
    assert value[0] == pytest.approx(want, rel=1e-14), f"log_sigmoid({a}) = {value[0]}, expected {want}"
    assert grad[0] == pytest.approx(1.0 if a < 0 else 0.0, abs=1e-300), f"d log_sigmoid/dx at {a} = {grad[0]}"


@pytest.mark.parametrize("a", BIG)
def test_bernoulli_log_likelihood_at_large_logits(a):
    x = np.array([[1.0, 0.0]])
    value, grad = _value_and_grad(lambda l: distributions.bernoulli_log_likelihood(Tensor(x), l), [[a, a]])
    want = -(max(-a, 0.0) + np.log1p(np.exp(-abs(a)))) - (max(a, 0.0) + np.log1p(np.exp(-abs(a))))
    assert value[0] == pytest.approx(want, rel=1e-14), f"log p(x | logits {a}) = {value[0]}, expected {want}"
    assert np.all(np.isfinite(grad)) and np.allclose(grad, [[1.0 - (a > 0), -float(a > 0)]])


@pytest.mark.parametrize("a", BIG)
def test_log_mean_exp_at_large_log_weights(a):
    got = diagnostics.log_mean_exp(np.array([[a, a], [a - 1.0, a - 30.0]]))
    want = a + np.log(np.array([1 + np.exp(-1.0), 1 + np.exp(-30.0)]) / 2)
    np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=f"log_mean_exp near {a}")


@pytest.mark.parametrize("a", [-1000.0, -800.0, 800.0])
def test_iw_bound_and_its_gradient_at_large_log_weights(a):
    rng = np.random.default_rng(0)
    K, B, d = 4, 2, 3
    mu, logvar = Tensor(rng.standard_normal((B, d))), Tensor(0.2 * rng.standard_normal((B, d)))
    z = Tensor(mu.data + np.exp(0.5 * logvar.data) * rng.standard_normal((K, B, d)))
    log_px_z = Tensor(a + rng.uniform(-1, 0, (K, B)), requires_grad=True)
    objective, stats = elbo.iw_objective(log_px_z, z, mu, logvar)
    objective.backward()
    log_w = log_px_z.data + (distributions.standard_normal_log_density(z)
                             - distributions.gaussian_log_density(z, mu, logvar)).data
    top = log_w.max(axis=0)
    want = np.mean(top + np.log(np.mean(np.exp(log_w - top), axis=0)))
    assert stats["iw_bound"] == pytest.approx(want, rel=1e-13), f"IW bound near {a}: {stats['iw_bound']}"
    np.testing.assert_allclose(log_px_z.grad.sum(axis=0), -1.0 / B, rtol=1e-12,
                               err_msg="each example's weights softmax_k(log w) sum to 1")
