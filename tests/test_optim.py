"""Optimisers: hand-computed steps, exact resume, clipping, errors."""
import io
import math

import numpy as np
import pytest

from minivae import Tensor
from minivae.optim import SGD, Adam, clip_grad_norm

from conftest import reference  # Adam's Algorithm 1 by hand, brought by the grader

TINY32 = np.finfo(np.float32).tiny


def param(data, grad=None):
    """A trainable parameter as the optimisers see it: .data updated in place, .grad read."""
    p = Tensor(np.asarray(data), requires_grad=True)
    p.grad = None if grad is None else np.asarray(grad, dtype=p.data.dtype)
    return p


# ---- Adam ----

@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_first_three_steps_match_algorithm_1_by_hand(weight_decay):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p0 = np.array([0.5, -1.0, 2.0])
    grads = [np.array([0.1, -0.2, 0.3]), np.array([-0.05, -0.1, 0.2]), np.array([0.3, 0.0, -0.1])]
    p = param(p0.copy())
    opt = Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    by_hand = reference("adam_steps")(p0, grads, lr, b1, b2, eps, weight_decay)  # Algorithm 1
    for grad, (theta, m, v) in zip(grads, by_hand):
        p.grad = grad.copy()
        opt.step()
        np.testing.assert_allclose(p.data, theta, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(opt.m[0], m, rtol=1e-13)
        np.testing.assert_allclose(opt.v[0], v, rtol=1e-13)
    assert p.grad is not None and np.array_equal(p.grad, grads[-1])   # grads are only read


def test_adam_first_step_is_lr_times_sign():
    p = param(np.zeros(4, np.float32), grad=np.array([3.0, -0.01, 0.5, -50.0]))
    Adam([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [-0.1, 0.1, -0.1, 0.1], rtol=1e-5)


def test_adam_keeps_float32():
    p = param(np.ones((3, 2), np.float32), grad=np.full((3, 2), 0.5, np.float32))
    opt = Adam([p])
    opt.step()
    assert p.data.dtype == opt.m[0].dtype == opt.v[0].dtype == np.float32


def test_steps_update_moments_in_place_so_saved_state_stays_attached():
    rng = np.random.default_rng(0)
    params = [param(rng.standard_normal((20, 5)).astype(np.float32)) for _ in range(2)]
    for opt, names in ((Adam(params, weight_decay=1e-4), ("m", "v")),
                       (SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4), ("momentum_buffer",))):
        buffers = [a for name in names for a in getattr(opt, name)]
        data = [p.data for p in params]
        for _ in range(2):
            for p in params:
                p.grad = rng.standard_normal(p.data.shape).astype(np.float32)
            opt.step()
        assert all(a is b for a, b in zip(buffers, [a for name in names for a in getattr(opt, name)]))
        assert all(p.data is d and p.data.dtype == np.float32 for p, d in zip(params, data))
        assert all(np.abs(a).max() > 0 for a in buffers)


def test_parameter_without_grad_is_skipped_and_keeps_its_own_step_count():
    a, b = param(np.ones(3)), param(np.ones(3))
    opt = Adam([a, b], lr=0.1)
    for _ in range(3):
        a.grad, b.grad = np.ones(3), None
        opt.step()
    np.testing.assert_array_equal(b.data, np.ones(3))
    assert opt.steps.tolist() == [3, 0]
    b.grad = np.full(3, -2.0)
    opt.step()
    np.testing.assert_allclose(b.data, 1.1, rtol=1e-6)    # a first step: lr * sign(g), bias corrected


def test_zero_grad_sets_grads_to_none():
    ps = [param(np.ones(2), grad=np.ones(2)), param(np.ones(3), grad=np.ones(3))]
    for opt in (Adam(ps), SGD(ps, lr=0.1)):
        opt.zero_grad()
        assert all(p.grad is None for p in ps)
        for p in ps:
            p.grad = np.ones_like(p.data)


def test_adam_minimises_a_quadratic_through_backward():
    rng = np.random.default_rng(1)
    target = rng.standard_normal((4, 3))
    w = Tensor(np.zeros((4, 3)), requires_grad=True)
    opt = Adam([w], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(w.data, target, atol=1e-3)


# ---- SGD ----

@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_matches_the_formulas_by_hand(momentum, weight_decay):
    lr = 0.1
    grads = [np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 0.25])]
    p = param(np.array([1.0, 1.0]))
    opt = SGD([p], lr=lr, momentum=momentum, weight_decay=weight_decay)
    theta, buf = np.array([1.0, 1.0]), np.zeros(2)
    for grad in grads:
        p.grad = grad.copy()
        opt.step()
        g = grad + weight_decay * theta
        buf = momentum * buf + g
        theta = theta - lr * buf
        np.testing.assert_allclose(p.data, theta, rtol=1e-14)


# ---- resume ----

def fake_gradient(data, t):
    """A deterministic stand-in for backward(): depends on the parameter and the step."""
    return (np.sin(3 * data) + 0.1 * t).astype(data.dtype)


def run(opt_factory, shapes, steps, resume_at=None):
    rng = np.random.default_rng(42)
    inits = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [param(x.copy()) for x in inits]
    opt = opt_factory(params)
    for t in range(steps):
        if t == resume_at:   # save, rebuild everything from the saved arrays, load, continue
            buf = io.BytesIO()
            np.savez(buf, **opt.state_dict(), **{f"param.{i}": p.data for i, p in enumerate(params)})
            buf.seek(0)
            saved = dict(np.load(buf))
            params = [param(saved[f"param.{i}"].copy()) for i in range(len(params))]
            opt = opt_factory(params)
            opt.load_state_dict(saved)
        for i, p in enumerate(params):
            p.grad = None if (i == 1 and t < 3) else fake_gradient(p.data, t)
        opt.step()
    return params, opt


FACTORIES = {
    "adam": lambda ps: Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-3),
    "sgd": lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_resume_from_state_dict_is_bitwise_identical(name):
    shapes = [(5, 3), (3,), (2, 2)]
    straight, opt_a = run(FACTORIES[name], shapes, steps=10)
    resumed, opt_b = run(FACTORIES[name], shapes, steps=10, resume_at=6)
    for p, q in zip(straight, resumed):
        assert np.array_equal(p.data, q.data)
    for key, value in opt_a.state_dict().items():
        assert np.array_equal(value, opt_b.state_dict()[key]), key


def test_load_state_dict_restores_hyperparameters():
    src = Adam([param(np.ones(2))], lr=0.123, betas=(0.5, 0.75), eps=1e-5, weight_decay=0.2)
    dst = Adam([param(np.ones(2))])
    dst.load_state_dict(src.state_dict())
    assert (dst.lr, dst.beta1, dst.beta2, dst.eps, dst.weight_decay) == (0.123, 0.5, 0.75, 1e-5, 0.2)
    state = src.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float, str)) for v in state.values())


def test_load_state_dict_rejects_a_mismatched_model():
    state = Adam([param(np.ones((2, 3))), param(np.ones(3))]).state_dict()
    with pytest.raises(ValueError, match="state has 2 parameters but this optimizer has 1"):
        Adam([param(np.ones((2, 3)))]).load_state_dict(state)
    with pytest.raises(ValueError, match=r"params\[0\]: saved m has shape \(2, 3\) "
                                         r"but the parameter has shape \(3, 2\)"):
        Adam([param(np.ones((3, 2))), param(np.ones(3))]).load_state_dict(state)
    with pytest.raises(ValueError, match="state is for optimizer 'Adam', not SGD"):
        SGD([param(np.ones((2, 3))), param(np.ones(3))], lr=0.1).load_state_dict(state)
    del state["v.1"]
    with pytest.raises(ValueError, match=r"state is missing \['v.1'\]"):
        Adam([param(np.ones((2, 3))), param(np.ones(3))]).load_state_dict(state)


# ---- errors ----

@pytest.mark.parametrize("make, name", [
    (lambda ps: Adam(ps, lr=0.0), "lr"),
    (lambda ps: Adam(ps, lr=-1e-3), "lr"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), "beta1"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), "beta2"),
    (lambda ps: Adam(ps, eps=0.0), "eps"),
    (lambda ps: Adam(ps, weight_decay=-1.0), "weight_decay"),
    (lambda ps: Adam(ps, lr=float("nan")), "lr"),
    (lambda ps: SGD(ps, lr=0), "lr"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1e-4), "weight_decay"),
])
def test_invalid_hyperparameters_name_the_parameter(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make([param(np.ones(2))])


def test_bad_parameter_lists_are_rejected():
    with pytest.raises(ValueError, match="params is empty"):
        Adam([])
    with pytest.raises(TypeError, match=r"params\[0\].data must be a float numpy array"):
        Adam([type("ListParam", (), {"data": [1.0, 2.0], "grad": None})()])
    p = param(np.ones((2, 3)), grad=np.ones((1, 3)))      # would broadcast silently otherwise
    with pytest.raises(ValueError, match=r"params\[0\]: grad has shape \(1, 3\)"):
        Adam([p]).step()


# ---- clip_grad_norm ----

def test_clip_grad_norm_scales_to_max_norm_and_returns_the_old_norm():
    a = param(np.zeros(2), grad=[3.0, 0.0])
    b = param(np.zeros((2, 1)), grad=[[0.0], [4.0]])
    skipped = param(np.zeros(2))                               # grad None: ignored
    assert clip_grad_norm([a, skipped, b], max_norm=1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(a.grad, [0.6, 0.0])
    np.testing.assert_allclose(b.grad, [[0.0], [0.8]])
    assert clip_grad_norm([a, b], max_norm=2.0) == pytest.approx(1.0)    # below: unchanged
    np.testing.assert_allclose(a.grad, [0.6, 0.0])


def test_clip_grad_norm_float32_lands_on_max_norm():
    rng = np.random.default_rng(3)
    ps = [param(np.zeros(s, np.float32), grad=rng.standard_normal(s) * 10) for s in [(100, 30), (30,)]]
    norm = clip_grad_norm(ps, max_norm=2.5)
    assert norm > 2.5
    new = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in ps))
    assert new == pytest.approx(2.5, rel=1e-5)
    assert all(p.grad.dtype == np.float32 for p in ps)


def test_clip_grad_norm_of_huge_float32_gradients_is_finite_and_clips():
    """Squares above float32's 3.4e38 (norm > ~1.8e19) are summed in float64, not reported as inf."""
    a = param(np.zeros(3, np.float32), grad=np.array([3e20, 0.0, -4e20], np.float32))
    b = param(np.zeros(2, np.float32), grad=np.array([1.0, 2.0], np.float32))
    expected = math.sqrt(3e20 ** 2 + 4e20 ** 2 + 5.0)
    assert np.isinf(np.vdot(a.grad, a.grad))               # what a float32 sum of squares gives
    assert clip_grad_norm([a, b], max_norm=1.0) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(a.grad, [0.6, 0.0, -0.8], rtol=1e-6)
    assert a.grad.dtype == np.float32 and abs(b.grad[1]) < 1e-19


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_reports_non_finite_and_leaves_grads_alone(bad):
    a = param(np.zeros(3), grad=[1.0, bad, 2.0])
    b = param(np.zeros(2), grad=[10.0, 10.0])
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert not math.isfinite(norm) and (math.isnan(norm) == math.isnan(bad))
    np.testing.assert_array_equal(b.grad, [10.0, 10.0])


def test_clip_grad_norm_rejects_bad_max_norm():
    with pytest.raises(ValueError, match="^max_norm must be"):
        clip_grad_norm([param(np.zeros(2), grad=[1.0, 1.0])], max_norm=0.0)


def test_a_parameter_listed_twice_is_refused():
    p = param([1.0, 2.0])
    for opt in (Adam, lambda params: SGD(params, lr=0.1)):
        with pytest.raises(ValueError, match=r"params\[2\] is params\[0\] again"):
            opt([p, param([3.0]), p])
