"""The engine's own behaviour: graph bookkeeping, fan-out, depth, dtypes and error messages."""
import inspect
import textwrap

import numpy as np
import pytest

import minivae.engine as engine
import minivae.ops as ops
from minivae import Tensor, no_grad
from minivae.gradcheck import check_grads, check_vjp

pytestmark = pytest.mark.engine  # graded under the engine topic (tests/conftest.py)


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
    np.testing.assert_allclose(ops.sum(t, axis=1, keepdims=True).data, x.sum(1, keepdims=True))
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2


# ------------------------------------------------------------------ error messages
def test_matmul_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))


def test_matmul_with_a_scalar_operand_is_refused_as_numpy_refuses_it():
    for x, y in ((Tensor(np.ones((2, 3))), 2.0), (2.0, Tensor(np.ones(3))), (Tensor(np.ones(2)), Tensor(np.float64(2.0)))):
        with pytest.raises(ValueError, match=r"op 'matmul': a scalar operand is not allowed.*\(\)"):
            x @ y
    with pytest.raises(ValueError):
        np.ones((2, 3)) @ 2.0  # NumPy's own refusal of the same call


def test_a_primitive_saves_arrays_for_its_vjp_explicitly():
    from minivae.engine import PRIMITIVES, primitive

    @primitive(saves=True)
    def square_root(x):
        root = np.sqrt(x)
        return root, {"twice_root": 2 * root}
    square_root.defvjp(lambda g, ans, x, twice_root: g / twice_root)

    try:
        x = Tensor(np.array([4.0, 9.0]), requires_grad=True)
        y = square_root(x)
        np.testing.assert_array_equal(y.data, [2.0, 3.0])
        y.backward(np.ones(2))
        np.testing.assert_allclose(x.grad, [0.25, 1 / 6])
        check_grads(square_root, np.array([0.5, 2.0]))  # raises if reverse mode and finite differences disagree
        assert check_vjp(square_root, [np.array([0.5, 2.0])]) == []
    finally:
        del PRIMITIVES["square_root"]


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


def test_a_shape_error_inside_a_vjp_names_the_op_and_shapes():
    from minivae.engine import PRIMITIVES, primitive

    @primitive
    def halves(x):
        return x[:2]
    halves.defvjp(lambda g, ans, x: g + np.zeros_like(x))  # shapes (2,) and (4,) do not broadcast

    try:
        x = Tensor(np.ones(4), requires_grad=True)
        with pytest.raises(ValueError, match=r"op 'halves': its VJP failed for inputs of shapes \(4,\) "
                                             r"and g of shape \(2,\)"):
            halves(x).backward(np.ones(2))
    finally:
        del PRIMITIVES["halves"]


def test_bad_parameters_are_reported():
    with pytest.raises(TypeError, match="unknown parameters.*'axes'"):
        ops.sum(Tensor(np.ones(2)), axes=0)
    with pytest.raises(TypeError, match=r"'sum' takes 1 input\(s\), got 2 positional.*by keyword \(axis=..., keepdims=...\)"):
        ops.sum(Tensor(np.ones(2)), 0)
    with pytest.raises(TypeError, match=r"'reshape' needs the parameter\(s\) \['shape'\]"):
        ops.reshape(Tensor(np.ones(2)))
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


# ------------------------------------------------------------------ the classic engine mistakes
# Each test below catches one mistake a student's engine can make, and uses only ops whose VJPs
# are given (add, subtract, softplus, relu, getitem, ...), so it judges the engine alone. The
# negative controls at the end put each mistake into the reference engine and check that its
# test fails.

def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _softplus(a):
    return np.logaddexp(0.0, a)


def test_order_with_fan_out_at_different_depths():
    """y = x + softplus(softplus(x)): x's two uses are one and two ops away from y."""
    x = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x + ops.softplus(ops.softplus(x))
    y.backward(np.ones(2))
    np.testing.assert_allclose(x.grad, 1 + _sigmoid(_softplus(x.data)) * _sigmoid(x.data))


def test_order_in_a_diamond_with_a_long_and_a_short_branch():
    x = Tensor(np.array([0.2, 1.5, -0.7]), requires_grad=True)
    a = ops.softplus(x)
    long_branch = ops.softplus(ops.softplus(ops.softplus(a)))
    y = (a - long_branch) + ops.relu(a)  # a reaches y by three paths of lengths 1, 2 and 4
    y.backward(np.ones(3))
    s1 = _softplus(a.data)
    s2 = _softplus(s1)
    d_long = _sigmoid(s2) * _sigmoid(s1) * _sigmoid(a.data)
    np.testing.assert_allclose(x.grad, (1 - d_long + 1) * _sigmoid(x.data))


def test_topological_order_puts_parents_first_and_each_node_once():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = Tensor(np.array([3.0, 4.0]))  # a constant: never visited
    a = ops.softplus(x)
    b = ops.relu(a) + a
    y = (b + ops.softplus(b)) + (a - c)
    order = engine._topological_order(y)
    assert order[-1] is y and len(order) == len({id(n) for n in order})
    assert {id(n) for n in order} == {id(n) for n in (x, a, b, y)} | {id(p) for n in order for p in n._parents
                                                                     if p.requires_grad}
    assert all(id(c) != id(n) for n in order)
    position = {id(n): i for i, n in enumerate(order)}
    late = [(p._op.name if p._op else "leaf", n._op.name) for n in order for p in n._parents
            if p.requires_grad and position[id(p)] > position[id(n)]]
    assert not late, f"parents listed after their children (parent op, child op): {late}"


def test_topological_order_of_a_deep_chain_needs_no_recursion():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(30_000):
        y = y + 1.0
    order = engine._topological_order(y)
    assert len(order) == 30_001 and order[0] is x and order[-1] is y


def test_fan_out_gradients_add_up_instead_of_overwriting():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = (x + x) + ops.relu(x)  # three uses of x, two of them in one op
    y.backward(np.ones(2))
    np.testing.assert_allclose(x.grad, [3.0, 2.0])


@pytest.mark.parametrize("g_shape, shape, expected", [
    ((2, 4, 3), (3,), lambda g: g.sum(axis=(0, 1))),                 # axes added in front
    ((4, 3), (4, 1), lambda g: g.sum(axis=1, keepdims=True)),        # a stretched size-1 axis
    ((2, 4, 3), (4, 1), lambda g: g.sum(axis=(0, 2))[:, None]),      # both at once
    ((4, 3), (1, 3), lambda g: g.sum(axis=0, keepdims=True)),
    ((4, 3), (), lambda g: np.array(g.sum())),                       # a scalar parent
    ((4, 3), (4, 3), lambda g: g),                                   # nothing to undo
])
def test_unbroadcast_sums_over_exactly_the_broadcast_axes(g_shape, shape, expected):
    g = np.arange(1.0, 1.0 + np.prod(g_shape)).reshape(g_shape)
    out = engine.unbroadcast(g, np.zeros(shape), "add")
    assert out.shape == shape
    np.testing.assert_array_equal(out, expected(g))


def test_broadcast_gradients_through_backward_have_the_parents_shapes():
    x = Tensor(np.zeros((4, 3)), requires_grad=True)
    b, c, s = (Tensor(np.zeros(shape), requires_grad=True) for shape in [(3,), (4, 1), ()])
    ((x + b) + (c + s)).backward(np.ones((4, 3)))
    np.testing.assert_array_equal(b.grad, [4.0, 4.0, 4.0])
    np.testing.assert_array_equal(c.grad, [[3.0]] * 4)
    assert s.grad.shape == () and s.grad == 12.0 and x.grad.shape == (4, 3)


def test_a_constant_input_gets_no_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = Tensor(np.array([5.0, 6.0]))
    (ops.softplus(x + c) - c).backward(np.ones(2))
    assert c.grad is None and x.grad is not None


def test_no_gradient_leaks_through_detach():
    x = Tensor(np.array([0.5, -0.5]), requires_grad=True)
    d = x.detach()
    (x + ops.softplus(d)).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])
    assert d.grad is None and not d.requires_grad


def test_no_gradient_leaks_through_no_grad():
    x = Tensor(np.array([0.5, -0.5]), requires_grad=True)
    with no_grad():
        frozen = ops.softplus(x)
    (x + frozen).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


# ------------------------------------------------------------------ negative controls
def _breadth_first(root):
    """The classic wrong 'topological' order: breadth-first from the root, reversed."""
    order, frontier, seen = [], [root], {id(root)}
    while frontier:
        node = frontier.pop(0)
        order.append(node)
        for p in node._parents:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                frontier.append(p)
    return order[::-1]


def _unbroadcast_by_mean(g, parent_value, op_name="?"):
    out = _REAL_UNBROADCAST(g, parent_value, op_name)
    return out / (g.size // max(out.size, 1))


_REAL_UNBROADCAST = engine.unbroadcast
# bug -> (the test that must catch it, the changes that make it: a replacement function, or
# (function, old text, new text) applied to the reference engine's source)
MISTAKES = {
    "breadth-first order": ([test_order_with_fan_out_at_different_depths,
                             test_order_in_a_diamond_with_a_long_and_a_short_branch,
                             test_topological_order_puts_parents_first_and_each_node_once],
                            [(engine, "_topological_order", _breadth_first)]),
    "overwrite on fan-out": ([test_fan_out_gradients_add_up_instead_of_overwriting],
                             [(Tensor, "backward", "grads[key] + pg", "pg")]),
    "aliased leaf gradient": ([test_leaf_grads_do_not_alias_each_other_or_the_seed],
                              [(Tensor, "backward", "g.copy()", "g")]),
    "no unbroadcast": ([test_broadcast_gradients_through_backward_have_the_parents_shapes],
                       [(engine, "unbroadcast", lambda g, parent_value, op_name="?": g)]),
    "unbroadcast by mean": ([lambda: test_unbroadcast_sums_over_exactly_the_broadcast_axes(
                                 (2, 4, 3), (3,), lambda g: g.sum(axis=(0, 1))),
                             test_broadcast_gradients_through_backward_have_the_parents_shapes],
                            [(engine, "unbroadcast", _unbroadcast_by_mean)]),
    "sum over the wrong axes": ([lambda: test_unbroadcast_sums_over_exactly_the_broadcast_axes(
                                     (2, 4, 3), (3,), lambda g: g.sum(axis=(0, 1)))],
                                [(engine, "unbroadcast", "tuple(range(extra))",
                                  "tuple(range(len(shape), g.ndim))")]),
    "keepdims dropped": ([lambda: test_unbroadcast_sums_over_exactly_the_broadcast_axes(
                              (4, 3), (4, 1), lambda g: g.sum(axis=1, keepdims=True))],
                         [(engine, "unbroadcast", "keepdims=True", "keepdims=False")]),
    "a constant gets a gradient": ([test_a_constant_input_gets_no_gradient],
                                   [(engine, "_topological_order", "p.requires_grad and ", ""),
                                    (Tensor, "backward", "p.requires_grad for p", "True for p")]),
    "detach returns self": ([test_no_gradient_leaks_through_detach],
                            [(Tensor, "detach", "Tensor(self.data)", "self")]),
    "no_grad ignored": ([test_no_gradient_leaks_through_no_grad],
                        [(engine.Primitive, "__call__", "_grad_enabled and any(", "any(")]),
}


def _break(monkeypatch, owner, name, *change):
    """Replace owner.name by a buggy version: a given function, or its source with old -> new."""
    if len(change) == 1:
        monkeypatch.setattr(owner, name, change[0])
        return
    old, new = change
    source = textwrap.dedent(inspect.getsource(getattr(owner, name)))
    if old not in source:
        pytest.skip(f"{name} is not the reference's here (a student copy?): nothing to break")
    scope = {}
    exec(compile(source.replace(old, new), engine.__file__, "exec"), vars(engine), scope)
    monkeypatch.setattr(owner, name, scope[name])


def _engine_passes_every_mistake_test():
    """True if the engine as it is passes all the tests above: only then can a planted mistake
    prove anything (on a student's engine that already fails one, these controls skip)."""
    for tests, _ in MISTAKES.values():
        for test in tests:
            try:
                test()
            except (AssertionError, ValueError, NotImplementedError):
                return False
    return True


@pytest.mark.parametrize("mistake", MISTAKES)
def test_negative_control_each_engine_mistake_fails_its_test(mistake, monkeypatch):
    if not _engine_passes_every_mistake_test():
        pytest.skip("the engine fails a test above already: nothing for the negative controls to prove")
    tests, changes = MISTAKES[mistake]
    with monkeypatch.context() as m:
        for change in changes:
            _break(m, *change)
        for test in tests:
            with pytest.raises((AssertionError, ValueError)):
                test()
