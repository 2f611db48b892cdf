"""Tests of the tester: the gradient checker must catch wrong gradients, not just pass right ones."""
import numpy as np
import pytest

import minivae.engine as engine
import minivae.ops as ops
from minivae import Tensor
from minivae.engine import PRIMITIVES, primitive
from minivae.gradcheck import GradientCheckError, check_grads, numerical_grad


@pytest.fixture
def sines():
    """sin as a primitive twice: with its VJP, and with the VJP off by 0.1% (as a student's slip)."""
    @primitive
    def sin_right(x):
        return np.sin(x)

    @primitive
    def sin_off_by_a_tenth_of_a_percent(x):
        return np.sin(x)
    sin_right.defvjp(lambda g, ans, x: g * np.cos(x))
    sin_off_by_a_tenth_of_a_percent.defvjp(lambda g, ans, x: g * np.cos(x) * 1.001)
    yield sin_right, sin_off_by_a_tenth_of_a_percent
    del PRIMITIVES["sin_right"], PRIMITIVES["sin_off_by_a_tenth_of_a_percent"]


def test_checker_catches_a_vjp_that_is_off_by_a_tenth_of_a_percent(sines):
    right, wrong = sines
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(GradientCheckError, match="MISMATCH"):
        check_grads(wrong, x)
    check_grads(right, x)  # the correct op passes on the same input


def test_checker_catches_a_wrong_broadcasting_reduction(monkeypatch):
    rng = np.random.default_rng(1)
    x, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    check_grads(lambda x, b: x * b, x, b)
    real_unbroadcast = engine.unbroadcast

    def mean_instead_of_sum(g, parent_value, op_name="?"):
        out = real_unbroadcast(g, parent_value, op_name)
        return out / (g.size // max(out.size, 1))  # averages where it should sum
    monkeypatch.setattr(engine, "unbroadcast", mean_instead_of_sum)
    with pytest.raises(GradientCheckError, match="input 1 shape \\(3,\\).*MISMATCH"):
        check_grads(lambda x, b: x * b, x, b)


def test_checker_report_names_each_input():
    rng = np.random.default_rng(2)
    report = check_grads(lambda a, b: a @ b, rng.standard_normal((2, 3)), rng.standard_normal((3, 2)))
    assert len(report) == 2 and all("ok" in line for line in report)


def test_checker_refuses_float32_with_an_explanation():
    with pytest.raises(TypeError, match="float64.*float32.*rounding"):
        check_grads(ops.exp, np.ones(3, np.float32))


def test_checker_handles_inputs_the_output_does_not_depend_on():
    check_grads(lambda a, b: a * 2.0, np.ones(3), np.ones(2))


def test_numerical_grad_matches_closed_form():
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_grad(lambda t: ops.sum(ops.tanh(t) * t), x)
    np.testing.assert_allclose(g, np.tanh(x) + x * (1 - np.tanh(x) ** 2), rtol=1e-8)
    t = Tensor(x, requires_grad=True)
    ops.sum(ops.tanh(t) * t).backward()
    np.testing.assert_allclose(g, t.grad, rtol=1e-8)


def test_numerical_grad_needs_scalar_output():
    with pytest.raises(ValueError, match="scalar-valued"):
        numerical_grad(lambda t: t * 2.0, np.ones(2))
