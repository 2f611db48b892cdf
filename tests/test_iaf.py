"""IAF: MADE's masks give triangular Jacobians, the log-determinant in the bound is the true one,
every layer and loss has correct gradients (finite differences; HIPS autograd for the masked
layer and the step), and the importance-weighted bound behaves."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from minivae import iaf
from minivae.distributions import LOG_2PI
from minivae.engine import Tensor, no_grad
from minivae.gradcheck import check_grads
from test_autoencoders import check_loss_grads

D = 4


def small_vae(n_steps=2):
    rng = np.random.default_rng(0)
    model = iaf.IAFVAE(n_in=6, hidden=(5,), latent=D, n_steps=n_steps, made_hidden=(7,), n_context=3,
                       activation="tanh", rng=rng, dtype=np.float64)
    return model, rng.uniform(0, 1, (3, 6)), rng


def jacobian(f, z):
    """d f(z) / d z for f: (d,) -> (d,), one reverse pass per output (row i = gradient of f_i)."""
    rows = []
    for i in range(len(z)):
        zt = Tensor(z, requires_grad=True)
        f(zt)[i].backward()
        rows.append(zt.grad)
    return np.array(rows)


def test_made_masks_connect_output_i_only_to_inputs_before_it():
    for d, hidden in [(4, (7,)), (5, (3, 6)), (2, (4,))]:
        masks = iaf.made_masks(d, hidden)
        reach = masks[0].astype(int)
        for m in masks[1:]:
            reach = reach @ m.astype(int)  # (d_in, d_out): number of paths
        assert not (reach > 0)[np.tril_indices(d)].any(), (d, hidden)  # never from input j >= i
        assert reach[0, d - 1] > 0  # the last output sees the first input


def test_each_step_has_a_lower_triangular_jacobian_with_sigma_on_the_diagonal():
    model, x, rng = small_vae()
    context = Tensor(rng.standard_normal((1, 3)))
    for made in model.steps:
        made.layers[0].W.data[...] = rng.standard_normal(made.layers[0].W.shape)  # not near zero
        z = rng.standard_normal(D)
        J = jacobian(lambda zt: iaf.iaf_step(made, zt.reshape(1, D), context)[0][0], z)
        assert np.all(J[np.triu_indices(D, k=1)] == 0), J  # output i ignores z_j for j > i
        assert np.any(J[np.tril_indices(D, k=-1)] != 0)  # but does use earlier dimensions
        _, s = made(Tensor(z[None]), context)
        np.testing.assert_allclose(np.diag(J), 1 / (1 + np.exp(-s.data[0])), rtol=1e-12)


def test_log_q_is_the_gaussian_density_minus_the_true_log_determinant():
    model, x, rng = small_vae(n_steps=3)
    for made in model.steps:
        made.layers[0].W.data *= 5  # a strongly non-linear flow
    for i in range(len(x)):
        eps = rng.standard_normal(D)
        J = jacobian(lambda e: model.posterior(Tensor(x[i:i + 1]), e.reshape(1, D))[0][0], eps)
        log_q = model.posterior(Tensor(x[i:i + 1]), eps[None])[1].data[0]
        # z_T = g(eps) with eps ~ N(0, I): log q(z_T) = log N(eps) - log |det dz_T/d eps|
        expected = -0.5 * np.sum(LOG_2PI + eps ** 2) - np.linalg.slogdet(J)[1]
        assert log_q == pytest.approx(expected, rel=1e-10)


def test_masked_dense_and_step_match_autograd():
    rng = np.random.default_rng(1)
    made = iaf.MADE(D, (6,), 2, rng, dtype=np.float64)
    z, h = rng.standard_normal((3, D)), rng.standard_normal((3, 2))
    names = [n for n, _ in made.named_parameters()]
    values = [p.data.copy() for p in made.parameters()]

    def ref(*params):
        p = dict(zip(names, params))
        a = anp.maximum(z @ (p["layers.0.W"] * made.layers[0].mask) + p["layers.0.b"]
                        + h @ p["layers.0.W_context"], 0)
        m = a @ (p["m.W"] * made.m.mask) + p["m.b"]
        s = a @ (p["s.W"] * made.s.mask) + p["s.b"]
        sigma = 1 / (1 + anp.exp(-s))
        return anp.concatenate([anp.ravel(sigma * z + (1 - sigma) * m), anp.sum(anp.log(sigma), axis=1)])
    z_new, log_det = iaf.iaf_step(made, Tensor(z), Tensor(h))
    np.testing.assert_allclose(np.concatenate([z_new.data.ravel(), log_det.data]), ref(*values), rtol=1e-12)
    u = rng.standard_normal(3 * D + 3)
    made.zero_grad()
    ((z_new.reshape(-1) * u[:3 * D]).sum() + (log_det * u[3 * D:]).sum()).backward()
    for i, (name, p) in enumerate(made.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(lambda *a: anp.sum(u * ref(*a)), i)(*values),
                                   rtol=1e-10, atol=1e-12, err_msg=name)


def test_gradients_finite_differences():
    rng = np.random.default_rng(2)
    made = iaf.MADE(D, (6,), 2, rng, dtype=np.float64)
    z, h = rng.standard_normal((3, D)), rng.standard_normal((3, 2))
    check_grads(lambda z, h: iaf.iaf_step(made, z, h)[0], z, h)
    check_grads(lambda z, h: iaf.iaf_step(made, z, h)[1], z, h)
    layer = iaf.MaskedDense(D, 5, iaf.made_masks(D, (5,))[0], rng, n_context=2, dtype=np.float64)
    check_loss_grads(layer, lambda l, z, h: l(z, h), z, h)
    model, x, rng = small_vae()
    eps = rng.standard_normal((len(x), D))
    check_loss_grads(model, lambda m, x, eps: m.loss(x, eps)[0], x, eps)


def test_iw_bound_is_the_elbo_at_K_1_and_rises_with_K():
    model, x, _ = small_vae()
    x = np.repeat(x, 50, axis=0)
    iw1 = iaf.iw_log_likelihood(model, x, 1, np.random.default_rng(3))
    eps = np.random.default_rng(3).standard_normal((len(x), D))
    with no_grad():
        _, stats = model.loss(x, eps)
    assert iw1.mean() == pytest.approx(stats["elbo"], rel=1e-10)  # the same eps: the same samples
    iw20 = iaf.iw_log_likelihood(model, x, 20, np.random.default_rng(4))
    assert iw20.mean() > iw1.mean()
