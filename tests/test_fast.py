"""minivae/fast.py against the textbook forms it stands beside: the same numbers, faster."""
import math

import numpy as np
import pytest

import minivae.distributions as D
from minivae import Tensor, fast
from minivae.diagnostics import iw_log_likelihood
from minivae.models import MLPVAE
from minivae.optim import Adam


def _vae(dtype, n_in=784, hidden=32, scale=3.0, seed=40):
    rng = np.random.default_rng(seed)
    model = MLPVAE(n_in=n_in, hidden=(hidden,), latent=6, activation="tanh", rng=rng, dtype=dtype)
    for p in model.parameters():
        p.data *= scale  # logits far from 0, as in a trained model
    x = (rng.random((23, n_in)) < 0.2).astype(dtype)
    return model, x


# ============================================================================ importance-weighted evaluation
@pytest.mark.parametrize("threads", [1, 3])
def test_fast_iw_equals_the_textbook_one_in_float64(threads):
    model, x = _vae(np.float64)
    textbook = iw_log_likelihood(model, x, 90, np.random.default_rng(1), batch_size=8, chunk=20)
    fast_ll = fast.iw_log_likelihood(model, x, 90, np.random.default_rng(1), batch_size=8, chunk=20, threads=threads)
    np.testing.assert_array_equal(fast_ll, textbook)  # float64 takes the model's own likelihood


def test_fast_iw_equals_the_textbook_one_in_float32():
    model, x = _vae(np.float32)
    textbook = iw_log_likelihood(model, x, 90, np.random.default_rng(2), batch_size=8, chunk=20)
    for in_products in (False, True):
        fast_ll = fast.iw_log_likelihood(model, x, 90, np.random.default_rng(2), batch_size=8, chunk=20,
                                         threads=2, bernoulli_in_products=in_products)
        np.testing.assert_allclose(fast_ll, textbook, rtol=1e-6)
    other_seed = fast.iw_log_likelihood(model, x, 90, np.random.default_rng(3), batch_size=8, chunk=20)
    assert np.max(np.abs(other_seed - textbook)) > 1e-3  # the tolerance tells different samples apart
    with pytest.raises(ValueError, match="K must be >= 1"):
        fast.iw_log_likelihood(model, x, 0, np.random.default_rng(0))


def test_bernoulli_term_in_products_equals_the_textbook_one():
    """The float32 Bernoulli term against distributions.bernoulli_log_likelihood in float64, logits from
    -100 to 100 (exp would overflow float32 past 88 without the cap)."""
    rng = np.random.default_rng(31)
    logits = np.concatenate([rng.normal(0, 8, (3, 5, 700)), rng.uniform(-100, 100, (3, 5, 84))], axis=-1)
    logits = logits.astype(np.float32).astype(np.float64)  # the float32 inputs, exactly
    x = (rng.random((5, 784)) < 0.3).astype(np.float64)
    fast_term = fast.bernoulli_log_likelihood_in_products(x.astype(np.float32), logits.astype(np.float32))
    exact = D.bernoulli_log_likelihood(Tensor(np.broadcast_to(x, logits.shape)), Tensor(logits)).data
    assert fast_term.shape == (3, 5) and np.all(np.isfinite(fast_term))
    np.testing.assert_allclose(fast_term, exact, rtol=1e-6)  # float32 rounding of 784 terms
    wrong = fast.bernoulli_log_likelihood_in_products(x.astype(np.float32), logits.astype(np.float32) * 1.001)
    assert np.max(np.abs(wrong - exact)) > 0.1  # the tolerance rejects a slightly different model
    # a pixel count that is not a multiple of 16 (the products of 16 factors leave a remainder)
    odd = fast.bernoulli_log_likelihood_in_products(x[:, :100].astype(np.float32), logits[..., :100].astype(np.float32))
    exact = D.bernoulli_log_likelihood(Tensor(np.broadcast_to(x[:, :100], (3, 5, 100))), Tensor(logits[..., :100])).data
    np.testing.assert_allclose(odd, exact, rtol=1e-6)


def test_blas_threads_sets_and_restores_openblas():
    found = fast._openblas_thread_functions()
    if found is None:
        pytest.skip("no OpenBLAS found through /proc/self/maps: blas_threads changes nothing here")
    get_threads, _ = found
    before = get_threads()
    with fast.blas_threads(1):
        assert get_threads() == 1
    assert get_threads() == before


# ============================================================================ FusedAdam
def _params(dtype, rng):
    shapes = [(70, 30), (30,), (5, 4, 3)]  # blocks of 64 split the first two mid-row
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]


def _train(opt_class, dtype, steps=6, **kwargs):
    rng = np.random.default_rng(5)
    params = _params(dtype, rng)
    opt = opt_class(params, lr=3e-3, weight_decay=1e-3, **kwargs)
    for step in range(steps):
        for i, p in enumerate(params):
            skipped = i == 2 and step % 3 == 1  # one parameter sits some steps out
            p.grad = None if skipped else rng.standard_normal(p.shape).astype(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads, block", [(1, 64), (2, 64), (2, 1 << 15)])
def test_fused_adam_equals_textbook_adam_bit_for_bit(dtype, threads, block):
    ref_params, ref = _train(Adam, dtype)
    params, opt = _train(fast.FusedAdam, dtype, threads=threads, block=block)
    for p, q in zip(params, ref_params):
        assert p.data.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data)
    for a, b in zip(opt.m + opt.v, ref.m + ref.v):
        np.testing.assert_array_equal(a, b)
    assert opt.steps.tolist() == ref.steps.tolist() == [6, 6, 4]


def test_a_fused_adam_without_bias_correction_is_caught(monkeypatch):
    """Negative control: the equality above fails for an update missing one factor."""
    ref_params, _ = _train(Adam, np.float64, steps=2)
    monkeypatch.setattr(fast.FusedAdam, "_update", lambda self, p, g, m, v, t: _wrong_update(self, p, g, m, v))
    params, _ = _train(fast.FusedAdam, np.float64, steps=2, threads=1)
    assert not np.array_equal(params[0].data, ref_params[0].data)


def _wrong_update(opt, p, g, m, v):
    m[...] = opt.beta1 * m + (1 - opt.beta1) * g
    v[...] = opt.beta2 * v + (1 - opt.beta2) * g * g
    p -= opt.lr * m / (np.sqrt(v) + opt.eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adam_moments_never_go_subnormal(dtype):
    def has_subnormals(a):
        return bool(np.any((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))
    tiny = np.finfo(dtype).tiny
    small = math.sqrt(tiny) * 1e-2                        # its square is subnormal (1e-20 in float32)
    first = np.array([small, -small, 1e-3, -1e-3, 0.0], dtype)
    p = Tensor(np.ones(5, dtype), requires_grad=True)
    opt = fast.FusedAdam([p], lr=1e-3, threads=1)
    m_plain, v_plain = np.zeros(5, dtype), np.zeros(5, dtype)   # the same recursions, unflushed
    n_steps = 1200 if dtype == np.float32 else 3600       # long enough for m to decay past tiny
    for step in range(n_steps):
        g = first if step == 0 else np.zeros(5, dtype)
        p.grad = g.copy()
        opt.step()
        m_plain = m_plain * dtype(0.9) + dtype(0.1) * g
        v_plain = v_plain * dtype(0.999) + dtype(0.001) * g * g
        assert not has_subnormals(opt.m[0]) and not has_subnormals(opt.v[0]), step
    assert has_subnormals(m_plain) and has_subnormals(v_plain)   # what the flush prevents
    # flushed to exactly 0 (a floor at tiny would make a new subnormal, beta * tiny, every step)
    assert opt.m[0][:2].tolist() == [0, 0] and opt.v[0][:2].tolist() == [0, 0]
    assert np.all(np.isfinite(p.data))


def test_fused_adam_state_moves_to_and_from_adam():
    params, opt = _train(fast.FusedAdam, np.float32, threads=1)
    state = opt.state_dict()
    assert state["optimizer"] == "Adam"
    twin = Adam([Tensor(p.data.copy(), requires_grad=True) for p in params])
    twin.load_state_dict(state)
    back = fast.FusedAdam([Tensor(p.data.copy(), requires_grad=True) for p in params], threads=1)
    back.load_state_dict(twin.state_dict())
    for a, b in zip(back.m + back.v, opt.m + opt.v):
        np.testing.assert_array_equal(a, b)
    assert back.steps.tolist() == opt.steps.tolist()
