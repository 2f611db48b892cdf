"""TD-VAE: the D block and the loss against finite differences and HIPS autograd, the loss with
every jump of one step against the sequential belief ELBO (eq. 5 of Gregor et al. 2019), the
analytic KL at t1 against Monte Carlo, p_B shared by both times, and the sequence generators."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from minivae import ops, sequences, tdvae
from minivae.distributions import LOG_2PI, gaussian_log_density, sample_gaussian
from minivae.engine import Tensor, no_grad
from minivae.gradcheck import check_grads
from test_autoencoders import check_loss_grads
from test_layers import _gru_ref


def small(decoder="first", use_delta=True, seed=0):
    rng = np.random.default_rng(seed)
    n_obs = 1 if decoder == "first" else 6
    model = tdvae.TDVAE(n_obs, rng, n_pre=5, n_belief=4, n_latent=3, n_hidden=6, decoder=decoder,
                        decoder_hidden=7, use_delta=use_delta, dtype=np.float64)
    x = rng.standard_normal((2, 7, 1)) if decoder == "first" else rng.uniform(0, 1, (2, 7, 6))
    t1, t2 = np.array([[0, 2, 5], [1, 3, 0]]), np.array([[1, 6, 6], [4, 5, 2]])
    eps1, eps2 = rng.standard_normal((2, 2, 3, 3))
    return model, x, (t1, t2, eps1, eps2)


# ------------------------------------------------------------------ references in autograd.numpy
def _sigmoid(a):
    return 1 / (1 + anp.exp(-a))


def _dblock_ref(p, prefix, x):
    d = lambda name: x @ p[f"{prefix}.{name}.W"] + p[f"{prefix}.{name}.b"]  # noqa: E731
    h = anp.tanh(d("tanh_in")) * _sigmoid(d("gate_in"))
    dh = lambda name: h @ p[f"{prefix}.{name}.W"] + p[f"{prefix}.{name}.b"]  # noqa: E731
    return dh("mu"), 2 * dh("log_sigma")


def _log_normal(z, mu, logvar):
    return -0.5 * anp.sum(LOG_2PI + logvar + (z - mu) ** 2 / anp.exp(logvar), axis=-1)


def _loss_ref(p, model, x, t1, t2, eps1, eps2):
    """The TD-VAE loss written out again with autograd.numpy from the parameter arrays."""
    B, T, n_obs = x.shape
    pre = anp.maximum(x @ p["pre.layers.0.W"] + p["pre.layers.0.b"], 0) @ p["pre.layers.1.W"] + p["pre.layers.1.b"]
    gru = {k.removeprefix("belief."): v for k, v in p.items() if k.startswith("belief.")}
    flat = _gru_ref(gru, pre, np.full(B, T))
    b = flat[:B * T * model.belief.n_hidden].reshape(B, T, -1)
    rows = np.arange(B)[:, None]
    b1, b2, d = b[rows, t1], b[rows, t2], ((t2 - t1) / model.delta_scale)[..., None]
    with_d = (lambda h: anp.concatenate([h, d], axis=-1)) if model.use_delta else (lambda h: h)
    mu_b2, lv_b2 = _dblock_ref(p, "p_B", b2)
    z2 = mu_b2 + anp.exp(0.5 * lv_b2) * eps2
    mu_s, lv_s = _dblock_ref(p, "q_S", with_d(anp.concatenate([z2, b1], axis=-1)))
    z1 = mu_s + anp.exp(0.5 * lv_s) * eps1
    mu_b1, lv_b1 = _dblock_ref(p, "p_B", b1)
    mu_t, lv_t = _dblock_ref(p, "p_T", with_d(z1))
    mu_t = z1 + mu_t  # the residual transition
    x2 = x[rows, t2]
    if model.decoder_kind == "first":
        rec = -_log_normal(x2, z2[..., :n_obs], model.x_logvar)
    else:
        logits = anp.maximum(z2 @ p["decoder.layers.0.W"] + p["decoder.layers.0.b"], 0) @ p["decoder.layers.1.W"] \
            + p["decoder.layers.1.b"]
        rec = -anp.sum(x2 * logits - anp.logaddexp(0, logits), axis=-1)
    kl_t1 = 0.5 * anp.sum(lv_b1 - lv_s + (anp.exp(lv_s) + (mu_s - mu_b1) ** 2) / anp.exp(lv_b1) - 1, axis=-1)
    kl_t2 = _log_normal(z2, mu_b2, lv_b2) - _log_normal(z2, mu_t, lv_t)
    return anp.mean(rec + kl_t1 + kl_t2)


# ------------------------------------------------------------------ gradients
def test_dblock_gradients_finite_differences_and_autograd():
    rng = np.random.default_rng(0)
    block = tdvae.DBlock(4, 5, 3, rng, dtype=np.float64)
    x = rng.standard_normal((6, 4))
    names = [n for n, _ in block.named_parameters()]
    values = [p.data.copy() for p in block.parameters()]

    def f(x, *params):
        for name, t in zip(names, params):
            owner, attr = name.split(".")
            setattr(getattr(block, owner), attr, t)
        return ops.concatenate(list(block(x)), axis=-1)
    check_grads(f, x, *values)

    ref = lambda x, *vals: anp.concatenate(_dblock_ref(dict(zip(["d." + n for n in names], vals)), "d", x), axis=-1)  # noqa: E731
    u = rng.standard_normal((6, 6))
    out = f(Tensor(x, requires_grad=True), *[Tensor(v, requires_grad=True) for v in values])
    np.testing.assert_allclose(out.data, ref(x, *values), rtol=1e-12)
    out.backward(u)
    for i, p in enumerate(block.parameters()):
        expected = autograd.grad(lambda *a: anp.sum(u * ref(*a)), i + 1)(x, *values)
        np.testing.assert_allclose(p.grad, expected, rtol=1e-10, atol=1e-12)


def test_kl_gaussians_gradients_finite_differences_and_autograd():
    rng = np.random.default_rng(1)
    args = [rng.standard_normal((4, 3)) for _ in range(4)]
    check_grads(tdvae.kl_gaussians, *args)
    ref = lambda mq, lq, mp, lp: 0.5 * anp.sum(lp - lq + (anp.exp(lq) + (mq - mp) ** 2) / anp.exp(lp) - 1, axis=-1)  # noqa: E731
    tensors = [Tensor(a, requires_grad=True) for a in args]
    out = tdvae.kl_gaussians(*tensors)
    np.testing.assert_allclose(out.data, ref(*args), rtol=1e-12)
    out.sum().backward()
    for i, t in enumerate(tensors):
        np.testing.assert_allclose(t.grad, autograd.grad(lambda *a: anp.sum(ref(*a)), i)(*args), rtol=1e-10)


@pytest.mark.parametrize("decoder, use_delta", [("first", True), ("bernoulli", False)])
def test_loss_gradients_finite_differences(decoder, use_delta):
    model, x, noise = small(decoder, use_delta)
    check_loss_grads(model, lambda m, x: m.loss(x, *noise)[0], x)


@pytest.mark.parametrize("decoder, use_delta", [("first", True), ("bernoulli", False)])
def test_loss_matches_autograd(decoder, use_delta):
    model, x, noise = small(decoder, use_delta, seed=2)
    names = [n for n, _ in model.named_parameters()]
    values = [p.data.copy() for p in model.parameters()]
    loss, _ = model.loss(x, *noise)
    ref = lambda *vals: _loss_ref(dict(zip(names, vals)), model, x, *noise)  # noqa: E731
    np.testing.assert_allclose(loss.data, ref(*values), rtol=1e-12)
    loss.backward()
    for i, (name, p) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(ref, i)(*values), rtol=1e-9, atol=1e-12, err_msg=name)


# ------------------------------------------------------------------ the maths
def test_jumps_of_one_step_give_the_sequential_belief_elbo():
    """Every pair (t-1, t) of a sequence: the summed loss is minus eq. 5, term by term.

    Eq. 5 is written here from log densities alone, sampled z_{t-1} included, and looped over t;
    the model uses the analytic KL at t1, so the two agree in expectation over z_{t-1}: the mean
    over M draws of eps1 (eps2 fixed) must agree within 4 standard errors.
    """
    model, _, _ = small(use_delta=True, seed=3)
    rng, M, T = np.random.default_rng(4), 4000, 5
    x = np.repeat(rng.standard_normal((1, T, 1)), M, axis=0)  # one sequence, M draws of z_{t-1}
    t1 = np.repeat(np.arange(T - 1)[None], M, axis=0)
    eps2 = np.repeat(rng.standard_normal((1, T - 1, 3)), M, axis=0)
    eps1 = rng.standard_normal((M, T - 1, 3))
    with no_grad():
        terms = model.loss_terms(x, t1, t1 + 1, eps1, eps2)
        loss = (terms["rec"] + terms["kl_t1"] + terms["kl_t2"]).data.sum(axis=1)  # (M,)
        b = model.beliefs(x)
        elbo = 0.0
        for t in range(1, T):
            mu_b, lv_b = model.p_B(b[:, t])
            z_t = sample_gaussian(mu_b, lv_b, eps2[:, t - 1])
            mu_q, lv_q = model.smoothing(z_t, b[:, t - 1], np.ones(M))
            z_prev = sample_gaussian(mu_q, lv_q, eps1[:, t - 1])
            mu_prev, lv_prev = model.p_B(b[:, t - 1])
            mu_tr, lv_tr = model.transition(z_prev, np.ones(M))
            elbo = elbo + (model.log_likelihood(x[:, t], z_t) + gaussian_log_density(z_prev, mu_prev, lv_prev)
                           + gaussian_log_density(z_t, mu_tr, lv_tr) - gaussian_log_density(z_t, mu_b, lv_b)
                           - gaussian_log_density(z_prev, mu_q, lv_q))
    diff = loss - (-elbo.data)  # analytic minus sampled KL at t1: zero on average
    assert diff.std() > 1e-3  # the sampled form really is noisier
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(M), (diff.mean(), diff.std())


def test_analytic_kl_at_t1_against_monte_carlo():
    model, x, (t1, t2, _, eps2) = small(seed=5)
    rng, M = np.random.default_rng(6), 20000
    with no_grad():
        analytic = model.loss_terms(x, t1, t2, np.zeros_like(eps2), eps2)["kl_t1"].data  # (B, P)
        b = model.beliefs(x)
        rows = np.arange(len(x))[:, None]
        z2 = sample_gaussian(*model.p_B(b[rows, t2]), eps2)
        mu_s, lv_s = (a.data for a in model.smoothing(z2, b[rows, t1], t2 - t1))
        mu_b, lv_b = (a.data for a in model.p_B(b[rows, t1]))
    z1 = mu_s + np.exp(0.5 * lv_s) * rng.standard_normal((M,) + mu_s.shape)
    log_ratio = lambda mu, lv: -0.5 * np.sum(LOG_2PI + lv + (z1 - mu) ** 2 / np.exp(lv), axis=-1)  # noqa: E731
    samples = log_ratio(mu_s, lv_s) - log_ratio(mu_b, lv_b)  # (M, B, P)
    se = samples.std(axis=0) / np.sqrt(M)
    assert np.all(np.abs(samples.mean(axis=0) - analytic) < 4 * se + 1e-9), (samples.mean(axis=0), analytic)
    assert np.all(analytic > 0)


def test_p_B_gets_gradient_from_the_t1_and_the_t2_terms():
    """p_B is one module read at both times: the t1 KL (p_B at t1) and the reconstruction at t2
    (through z2 ~ p_B at t2) each send it gradient, and the loss's gradient is their sum with kl_t2's."""
    model, x, noise = small(seed=7)
    grads = {}
    for name in ("kl_t1", "rec", "kl_t2", "all"):
        model.zero_grad()
        terms = model.loss_terms(x, *noise)
        total = terms["kl_t1"] + terms["rec"] + terms["kl_t2"] if name == "all" else terms[name]
        ops.mean(total).backward()
        grads[name] = np.concatenate([p.grad.ravel() for p in model.p_B.parameters()])
    assert np.linalg.norm(grads["kl_t1"]) > 1e-3 and np.linalg.norm(grads["rec"]) > 1e-3
    np.testing.assert_allclose(grads["all"], grads["kl_t1"] + grads["rec"] + grads["kl_t2"], rtol=1e-10, atol=1e-12)
    with no_grad():  # the KL at t1 compares with p_B(b_t1) itself: moving b_t1 moves it
        terms = model.loss_terms(x, *noise)
        shifted = model.loss_terms(x, noise[0] + (noise[0] < 5), *noise[1:])
    assert not np.allclose(terms["kl_t1"].data, shifted["kl_t1"].data)


def test_draw_pairs_respects_the_sequence_and_the_jump_mixture():
    rng = np.random.default_rng(8)
    t1, t2 = tdvae.draw_pairs(rng, (20000,), 200, 10, 120, 0.2)
    delta = t2 - t1
    assert t1.min() >= 0 and t2.max() <= 199 and delta.min() >= 1 and delta.max() <= 120
    assert abs((delta > 10).mean() - 0.2 * 110 / 120) < 0.01  # long jumps beyond 10 steps
    t1, t2 = tdvae.draw_pairs(rng, (5000,), 20, 4)
    assert set(np.unique(t2 - t1)) == {1, 2, 3, 4} and t2.max() == 19


# ------------------------------------------------------------------ the sequences
def test_oscillator_conserves_energy_without_noise():
    """Symplectic Euler keeps its modified energy to rounding error (1e-9) over 200 steps, so the
    physical energy E = 0.5 (v^2 + omega^2 x^2) cannot drift: with u = v / (omega x),
    E / E_mod - 1 = omega u / (u^2 + 1 - omega u) lies in [-omega / (2 + omega), omega / (2 - omega)]."""
    obs, s = sequences.oscillator(50, 200, np.random.default_rng(9), process_noise=0.0, obs_noise=0.0)
    np.testing.assert_array_equal(obs[..., 0], s["x"])
    omega = s["omega"][:, None]
    e_mod = sequences.energy(s["x"], s["v"], omega, modified=True)
    assert np.all(np.abs(e_mod / e_mod[:, :1] - 1) < 1e-9)
    ratio = sequences.energy(s["x"], s["v"], omega) / e_mod - 1
    assert np.all(ratio <= omega / (2 - omega) + 1e-9) and np.all(ratio >= -omega / (2 + omega) - 1e-9)
    assert ratio.max() > 0.9 * (omega / (2 - omega)).min()  # the bound is reached, not loose
    noisy = sequences.oscillator(50, 200, np.random.default_rng(9))[1]
    assert not np.allclose(sequences.energy(noisy["x"], noisy["v"], noisy["omega"][:, None], True)[:, -1], e_mod[:, 0])


def test_fit_sinusoid_recovers_frequency_amplitude_and_phase():
    k = np.arange(21)
    omega, amp, phase = np.array([0.35, 0.5]), np.array([0.7, 1.3]), np.array([1.0, -2.0])
    w, a, ph = sequences.fit_sinusoid(amp[:, None] * np.cos(omega[:, None] * k + phase[:, None]))
    np.testing.assert_allclose(w, omega, atol=1e-3)
    np.testing.assert_allclose(a, amp, rtol=1e-2)
    assert np.all(sequences.phase_error(ph, phase) < 0.02)


def test_moving_digits_shift_one_pixel_per_frame_in_their_direction():
    rng = np.random.default_rng(10)
    digits = sequences.shrink(rng.uniform(0, 1, (6, 784)))
    frames, direction = sequences.moving_digits(digits, 20, rng)
    shifts = sequences.best_shift(frames[:, :-1], frames[:, 1:])
    np.testing.assert_array_equal(shifts, np.repeat(direction[:, None], 19, axis=1))
    assert np.allclose(sequences.aligned_bce(frames[:, 7], digits), sequences.aligned_bce(digits, digits))
    assert np.all(sequences.aligned_bce(np.full(196, 0.5), digits) > sequences.aligned_bce(digits, digits))


def test_belief_log_sigma_sets_the_initial_width_of_p_B():
    b = Tensor(np.random.default_rng(5).standard_normal((500, 32)).astype(np.float32))
    for log_sigma, expected in ((None, 1.0), (-2.0, np.exp(-2.0))):
        model = tdvae.TDVAE(1, np.random.default_rng(0), belief_log_sigma=log_sigma)
        with no_grad():
            sigma = np.exp(0.5 * model.p_B(b)[1].data)
        assert expected / 2 < np.median(sigma) < expected * 2, (log_sigma, np.median(sigma))
