"""The deterministic autoencoders and the MIG: gradients of every loss (finite differences, and
HIPS autograd for the penalties), the k-sparse gradient support, the contractive penalty against
the engine's own Jacobian, and the MIG score on known codes (the shapes themselves:
tests/test_shapes.py)."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import minivae.autoencoders as A
import minivae.ops as ops
from minivae import shapes
from minivae.distributions import kl_standard_normal_per_dim
from minivae.engine import Tensor
from minivae.gradcheck import check_grads


def set_param(model, dotted_name, tensor):
    """Replace the parameter called e.g. "steps.0.layers.1.W" by another Tensor."""
    *path, last = dotted_name.split(".")
    owner = model
    for part in path:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    setattr(owner, last, tensor)


def check_loss_grads(model, loss_fn, *inputs, prefix=""):
    """check_grads of loss_fn(model, *inputs) with respect to the inputs and every parameter
    (only those whose names start with `prefix`, if given)."""
    names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]

    def f(*args):
        for name, t in zip(names, args[len(inputs):]):
            set_param(model, name, t)
        return loss_fn(model, *args[:len(inputs)])
    params = dict(model.named_parameters())
    check_grads(f, *inputs, *[params[n].data.copy() for n in names])


def small(cls, **kwargs):
    rng = np.random.default_rng(0)
    model = cls(n_in=6, hidden=(5,), latent=4, activation="tanh", rng=rng, dtype=np.float64, **kwargs)
    return model, rng.uniform(0, 1, (7, 6)), rng


@pytest.mark.parametrize("cls, kwargs", [
    (A.Autoencoder, {}), (A.Autoencoder, {"likelihood": "gaussian", "code": "sigmoid"}),
    (A.DenoisingAutoencoder, {"corruption": "gaussian", "noise_level": 0.2}),
    (A.SparseAutoencoder, {"rho": 0.1, "sparsity_weight": 2.0}),
    (A.KSparseAutoencoder, {"k": 2}), (A.ContractiveAutoencoder, {"contraction": 0.5})],
    ids=["ae", "ae-gaussian", "dae", "sparse", "ksparse", "contractive"])
def test_loss_gradients_finite_differences(cls, kwargs):
    model, x, rng = small(cls, **kwargs)
    noise = model.noise(x, rng)
    check_loss_grads(model, lambda m, x: m.loss(x, noise)[0], x)


def test_denoising_noise():
    x = np.random.default_rng(0).uniform(0.5, 1, (200, 50))
    masked = A.corrupt(x, "masking", 0.3, np.random.default_rng(1))
    assert abs((masked == 0).mean() - 0.3) < 0.02 and np.all((masked == 0) | (masked == x))
    noisy = A.corrupt(x, "gaussian", 0.2, np.random.default_rng(1))
    assert abs((noisy - x).std() - 0.2) < 0.01
    model, x, rng = small(A.DenoisingAutoencoder)
    clean = model.loss(x, None)[1]["rec"]  # reconstruct() and evaluation use the clean input
    assert model.loss(x, model.noise(x, rng))[1]["rec"] != clean
    with pytest.raises(ValueError, match="unknown corruption"):
        small(A.DenoisingAutoencoder, corruption="salt")


def test_sparsity_kl_matches_autograd_and_formula():
    rho_hat = np.random.default_rng(0).uniform(0.01, 0.5, 6)
    ref = lambda r: anp.sum(0.05 * anp.log(0.05 / r) + 0.95 * anp.log(0.95 / (1 - r)))
    t = Tensor(rho_hat, requires_grad=True)
    out = A.sparsity_kl(0.05, t)
    out.backward()
    np.testing.assert_allclose(out.data, ref(rho_hat), rtol=1e-12)
    np.testing.assert_allclose(t.grad, autograd.grad(ref)(rho_hat), rtol=1e-12)
    assert float(A.sparsity_kl(0.05, Tensor(np.full(3, 0.05))).data) == pytest.approx(0, abs=1e-15)
    check_grads(lambda r: A.sparsity_kl(0.05, r), rho_hat)


def test_k_sparse_keeps_k_largest_and_gradient_only_through_them():
    h = np.random.default_rng(0).standard_normal((5, 8))
    t = Tensor(h, requires_grad=True)
    out = A.k_sparse(t, 3)
    keep = h >= np.sort(h, axis=1)[:, -3:-2]
    assert (out.data != 0).sum(axis=1).tolist() == [3] * 5
    np.testing.assert_array_equal(out.data, np.where(keep, h, 0))
    u = np.random.default_rng(1).standard_normal(h.shape)
    out.backward(u)
    np.testing.assert_array_equal(t.grad, np.where(keep, u, 0))  # zero for every dropped unit
    np.testing.assert_allclose(t.grad, autograd.grad(lambda a: anp.sum(u * anp.where(keep, a, 0)))(h))
    check_grads(lambda a: A.k_sparse(a, 3), h)
    assert A.k_sparse(t, 8) is t


def test_k_sparse_schedule_goes_from_dense_to_k():
    model, x, _ = small(A.KSparseAutoencoder, k=1, k_warmup=6)
    assert [model.k_at(s) for s in (0, 3, 6, 100, None)] == [4, 2, 1, 1, 1]
    assert model.loss(x, step=0)[1]["k"] == 4
    codes = model.encode(Tensor(x)).data
    assert np.all((codes != 0).sum(axis=1) == 1)


def test_contractive_penalty_matches_the_engines_jacobian_row_by_row():
    model, x, _ = small(A.ContractiveAutoencoder)
    W = model.encoder.layers[0].W
    for xi in x[:3]:
        xt = Tensor(xi[None, :], requires_grad=True)
        h = model.encode(xt)  # (1, latent)
        rows = []
        for j in range(model.latent):  # row j of J = the gradient of h_j with respect to x
            xt.grad = None
            h[0, j].backward()
            rows.append(xt.grad[0])
        J = np.array(rows)  # (latent, n_in)
        closed = A.contractive_penalty(model.encode(Tensor(xi[None, :])), W).data[0]
        assert closed == pytest.approx(np.sum(J ** 2), rel=1e-12)


def test_contractive_penalty_matches_autograd():
    rng = np.random.default_rng(3)
    x, W, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)

    def ref(W, b):
        h = 1 / (1 + anp.exp(-(x @ W + b)))
        return anp.sum((h * (1 - h)) ** 2 * anp.sum(W ** 2, axis=0), axis=-1)
    f = lambda W, b: A.contractive_penalty(ops.sigmoid(x @ W + b), W)
    np.testing.assert_allclose(f(Tensor(W), Tensor(b)).data, ref(W, b), rtol=1e-12)
    u = rng.standard_normal(4)
    Wt, bt = Tensor(W, requires_grad=True), Tensor(b, requires_grad=True)
    f(Wt, bt).backward(u)
    for i, t in enumerate((Wt, bt)):
        np.testing.assert_allclose(t.grad, autograd.grad(lambda *a: anp.sum(u * ref(*a)), i)(W, b), rtol=1e-10)
    check_grads(f, W, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho must be in"):
        small(A.SparseAutoencoder, rho=1.5)
    with pytest.raises(ValueError, match="k must be in"):
        small(A.KSparseAutoencoder, k=9)
    with pytest.raises(ValueError, match="unknown likelihood"):
        small(A.Autoencoder, likelihood="poisson")


# ------------------------------------------------------------------ shapes and MIG
def test_mig_is_high_for_a_disentangled_code_and_low_for_a_mixed_one():
    v = shapes.factor_grid()
    rng = np.random.default_rng(0)
    aligned = v + 0.1 * rng.standard_normal(v.shape)  # one factor per latent dimension
    mig, gaps, mi = shapes.mutual_information_gap(aligned, v)
    assert mig > 0.9 and mi.shape == (5, 5)
    mixed = aligned @ np.array([[1, 1, 0, 0, 0], [1, -1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, -1.0]])
    assert shapes.mutual_information_gap(mixed, v)[0] < 0.5 * mig
    assert shapes.mutual_information_gap(rng.standard_normal(v.shape), v)[0] < 0.05
    a = rng.integers(0, 4, 10000)
    assert shapes.discrete_mutual_information(a, a) == pytest.approx(np.log(4), abs=0.01)


def test_kl_per_dimension_is_the_batch_mean_of_the_elbo_kl():
    rng = np.random.default_rng(1)
    mu, logvar = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    expected = kl_standard_normal_per_dim(Tensor(mu), Tensor(logvar)).data.mean(0)
    np.testing.assert_allclose(shapes.kl_per_dimension(mu, logvar), expected, rtol=1e-12)
    assert shapes.kl_per_dimension(np.zeros((3, 2)), np.zeros((3, 2))).tolist() == [0.0, 0.0]  # q = p


def test_traversal_changes_one_dimension_per_row():
    rows = shapes.traversal(lambda z: z.copy(), np.zeros(3), [2, 0], np.array([-1.0, 1.0]))
    assert rows.shape == (2, 2, 3)
    np.testing.assert_array_equal(rows[0], [[0, 0, -1], [0, 0, 1]])


def _reference_loss(model, p, x, x_in, keep):
    """The objective written again with autograd.numpy from the parameter arrays p (tanh MLPs)."""
    def mlp(prefix, n_layers, h):
        for i in range(n_layers):
            h = h @ p[f"{prefix}.layers.{i}.W"] + p[f"{prefix}.layers.{i}.b"]
            h = anp.tanh(h) if i < n_layers - 1 else h
        return h
    h = mlp("encoder", len(model.encoder.layers), x_in)
    h = 1 / (1 + anp.exp(-h)) if model.code == "sigmoid" else h
    h = anp.where(keep, h, 0.0) if keep is not None else h
    out = mlp("decoder", len(model.decoder.layers), h)
    if model.likelihood == "bernoulli":
        rec = anp.mean(anp.sum(anp.logaddexp(0, out) - x * out, axis=1))
    else:
        rec = anp.mean(anp.sum(0.5 * (x - out) ** 2 + 0.5 * np.log(2 * np.pi), axis=1))
    if isinstance(model, A.SparseAutoencoder):
        r, rho = anp.mean(h, axis=0), model.rho
        rec = rec + model.sparsity_weight * anp.sum(rho * anp.log(rho / r) + (1 - rho) * anp.log((1 - rho) / (1 - r)))
    if isinstance(model, A.ContractiveAutoencoder):
        W = p["encoder.layers.0.W"]
        rec = rec + model.contraction * anp.mean(anp.sum((h * (1 - h)) ** 2 * anp.sum(W ** 2, axis=0), axis=1))
    return rec


@pytest.mark.parametrize("cls, kwargs", [
    (A.Autoencoder, {"likelihood": "gaussian"}), (A.DenoisingAutoencoder, {"corruption": "masking"}),
    (A.SparseAutoencoder, {"rho": 0.2}), (A.KSparseAutoencoder, {"k": 2}), (A.ContractiveAutoencoder, {})],
    ids=["ae-gaussian", "dae", "sparse", "ksparse", "contractive"])
def test_losses_match_autograd(cls, kwargs):
    model, x, rng = small(cls, **kwargs)
    noise = model.noise(x, rng)
    x_in = x if noise is None else noise
    keep = model.encode(Tensor(x_in)).data != 0 if isinstance(model, A.KSparseAutoencoder) else None
    names = [n for n, _ in model.named_parameters()]
    values = [p.data.copy() for p in model.parameters()]
    ref = lambda *vals: _reference_loss(model, dict(zip(names, vals)), x, x_in, keep)
    objective, _ = model.loss(x, noise)
    assert float(objective.data) == pytest.approx(ref(*values), rel=1e-12)
    objective.backward()
    for i, (name, p) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(ref, i)(*values), rtol=1e-10, atol=1e-12, err_msg=name)
