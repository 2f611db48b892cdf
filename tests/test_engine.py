"""The engine's own behaviour: graph bookkeeping, fan-out, depth, dtypes and error messages."""
import numpy as np
import pytest

import minivae.ops as ops
from minivae import Tensor, no_grad
from minivae.gradcheck import check_grads


def test_fan_out_accumulates():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    y = x * x + x  # x used three times
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_diamond_graph():
    x = Tensor(np.array(0.7), requires_grad=True)
    a, b = ops.exp(x), ops.tanh(x)  # both branches start at x and meet again in c
    c = a * b
    c.backward()
    expected = np.exp(0.7) * np.tanh(0.7) + np.exp(0.7) * (1 - np.tanh(0.7) ** 2)
    np.testing.assert_allclose(x.grad, expected)


def test_shared_parent_used_by_both_inputs_of_one_op():
    x = Tensor(np.array([3.0]), requires_grad=True)
    (x * x).sum().backward()  # the same tensor is both parents of one node
    np.testing.assert_allclose(x.grad, [6.0])


def test_deep_chain_has_no_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0  # 200,000 nodes deep
    y.backward()
    assert x.grad == 1.0


def test_gradients_accumulate_across_backward_calls_and_zero_grad_resets():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None


def test_leaf_grads_do_not_alias_each_other_or_the_seed():
    x = Tensor(np.zeros(3), requires_grad=True)
    y = Tensor(np.zeros(3), requires_grad=True)
    seed = np.ones(3)
    (x + y).backward(seed)
    x.grad *= 2  # an in-place change (gradient clipping does this) must not leak elsewhere
    np.testing.assert_array_equal(y.grad, np.ones(3))
    np.testing.assert_array_equal(seed, np.ones(3))


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = ops.exp(x) * 2.0
    assert not y.requires_grad and y._parents == () and y._op is None
    z = ops.exp(x)  # recording resumes after the block
    assert z.requires_grad and z._parents == (x,)


def test_constants_record_no_graph():
    y = ops.exp(Tensor(np.ones(3))) + 1.0
    assert not y.requires_grad and y._parents == ()


def test_detach_stops_gradient():
    x = Tensor(np.array(2.0), requires_grad=True)
    y = x * x.detach()  # d/dx treats the detached copy as a constant: grad = x
    y.backward()
    assert x.grad == 2.0
    assert not x.detach().requires_grad


@pytest.mark.parametrize("shape_x, shape_b", [((4, 3), (3,)), ((4, 3), (1, 3)), ((4, 3), (4, 1)),
                                              ((2, 4, 3), (4, 1)), ((4, 3), ())])
def test_gradient_has_parent_shape_after_broadcasting(shape_x, shape_b):
    x = Tensor(np.ones(shape_x), requires_grad=True)
    b = Tensor(np.ones(shape_b), requires_grad=True)
    (x * b).sum().backward()
    assert x.grad.shape == shape_x and b.grad.shape == shape_b
    np.testing.assert_allclose(b.grad, np.sum(np.ones(shape_x)) / max(1, np.prod(shape_b)))


def test_float32_stays_float32_forward_and_backward():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    h = ops.relu(x @ w + 0.5) * 2 - 1.0
    out = ops.logsumexp(ops.log_softmax(h), axis=1) + ops.softplus(h).mean(1) + ops.sigmoid(h).max(1)
    out = ops.concatenate([out, ops.sqrt(ops.exp(-out) + 1.0) ** 2]).sum() / 3
    assert out.dtype == np.float32
    out.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_python_numbers_and_integer_arrays_become_float64():
    assert Tensor(3.0).dtype == np.float64
    assert Tensor(np.arange(3)).dtype == np.float64
    assert Tensor(np.ones(2, np.float32)).dtype == np.float32
    assert (Tensor(np.ones(2, np.float32)) * 2).dtype == np.float32  # the number adopts float32
    assert (Tensor(np.ones(2, np.float32)) * np.arange(2)).dtype == np.float32


def test_mixing_float32_and_float64_is_an_error_not_an_upcast():
    with pytest.raises(TypeError, match="add.*float32.*float64"):
        Tensor(np.ones(2, np.float32)) + Tensor(np.ones(2))


def test_astype_converts_explicitly_and_its_gradient_comes_back_in_the_input_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x.astype(np.float64) * Tensor(np.arange(3.0))
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [0, 1, 2])


def test_operators_and_reflected_operators():
    x = np.array([1.0, 2.0, 4.0])
    t = Tensor(x, requires_grad=True)
    np.testing.assert_allclose((2 - t).data, 2 - x)
    np.testing.assert_allclose((2 / t).data, 2 / x)
    np.testing.assert_allclose((2 ** t).data, 2 ** x)
    np.testing.assert_allclose((np.ones(3) + t).data, 1 + x)  # ndarray on the left
    np.testing.assert_allclose((x @ t).data, x @ x)
    np.testing.assert_allclose((-t).data, -x)
    check_grads(lambda a: (2 - a) / a ** 2 + 1 / a, x)


def test_comparisons_return_plain_boolean_arrays():
    t = Tensor(np.array([1.0, 2.0, 3.0]))
    assert isinstance(t > 1.5, np.ndarray) and (t > 1.5).dtype == bool
    np.testing.assert_array_equal(t <= Tensor(np.array([1.0, 1.0, 5.0])), [True, False, True])
    np.testing.assert_array_equal(t == 2.0, [False, True, False])


def test_integer_array_indexing_scatter_adds_repeated_rows():
    table = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    ids = Tensor(np.array([0, 2, 0, 0]))  # an index may itself be a Tensor (e.g. token ids)
    rows = table[ids.data.astype(int)]
    rows.sum().backward()
    np.testing.assert_array_equal(table.grad, [[3, 3], [0, 0], [1, 1]])


def test_methods_mirror_numpy():
    x = np.arange(6.0).reshape(2, 3)
    t = Tensor(x)
    np.testing.assert_allclose(t.reshape(3, 2).data, x.reshape(3, 2))
    np.testing.assert_allclose(t.T.data, x.T)
    np.testing.assert_allclose(t.transpose(1, 0).data, x.T)
    np.testing.assert_allclose(t.sum(0).data, x.sum(0))
    np.testing.assert_allclose(t.mean(axis=1, keepdims=True).data, x.mean(1, keepdims=True))
    np.testing.assert_allclose(ops.sum(t, 1, True).data, x.sum(1, keepdims=True))  # positional axis
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2


# ------------------------------------------------------------------ error messages
def test_matmul_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_broadcast_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"'add'.*\(2, 3\).*\(4,\)"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(4))


def test_backward_without_requires_grad_explains():
    with pytest.raises(RuntimeError, match="does not require grad"):
        ops.exp(Tensor(np.ones(2))).sum().backward()


def test_non_scalar_backward_needs_a_seed():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"non-scalar output of shape \(3,\).*seed"):
        ops.exp(x).backward()
    with pytest.raises(ValueError, match="seed gradient has shape"):
        ops.exp(x).backward(np.ones(4))


def test_primitive_without_vjp_names_itself():
    from minivae.engine import PRIMITIVES, primitive

    @primitive
    def no_vjp_op(x):
        return x * 2

    try:
        x = Tensor(np.ones(2), requires_grad=True)
        with pytest.raises(NotImplementedError, match="no_vjp_op"):
            no_vjp_op(x).sum().backward()
    finally:
        del PRIMITIVES["no_vjp_op"]


def test_bad_parameters_are_reported():
    with pytest.raises(TypeError, match="unknown parameters.*'axes'"):
        ops.sum(Tensor(np.ones(2)), axes=0)
    with pytest.raises(TypeError, match="cannot make a Tensor"):
        Tensor("hello")


def test_leaf_grad_is_writable_and_its_own_when_a_vjp_returns_a_view():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    w = Tensor(np.ones(3), requires_grad=True)
    (x.sum() + (x * w).sum()).backward()  # sum's VJP returns a read-only broadcast view of g
    x.grad *= 2
    w.grad *= 2
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 4.0))
    np.testing.assert_array_equal(w.grad, np.full(3, 4.0))
