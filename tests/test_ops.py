"""Every primitive (ops.py and fused.py), checked three ways from one table of op specs.

Each row names a registered primitive, how to call it, the same computation written with
autograd.numpy (HIPS autograd is our independent oracle), and several input-shape cases: always
a broadcasting case and a scalar case. Each case is checked in float64
  (a) by the random-projection finite-difference check (minivae.gradcheck.check_grads),
  (b) against HIPS autograd's full gradients of the same expression, tightly,
  (c) forward values against NumPy.
A primitive registered without a row, or a row naming no primitive, fails the coverage test.
"""
from dataclasses import dataclass, field
from typing import Callable

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import minivae.fused as fused
import minivae.ops as ops
from minivae import PRIMITIVES, Tensor
from minivae.gradcheck import check_grads

from conftest import reference  # worked solutions, brought by the grader


# ------------------------------------------------------------------ input domains
def real(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(rng, shape):  # for kinks at 0 (relu, abs)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 2.0, shape)


def distinct(rng, shape):  # for max: every value at least 0.5 from every other
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.5 - n * 0.25 + rng.uniform(0, 0.1, n)).reshape(shape)


def low_grid(rng, shape):  # maximum(x, y): x on k + [0, 0.3], y on k + [0.5, 0.8]: never tied
    return rng.integers(-2, 3, shape) + rng.uniform(0.0, 0.3, shape)


def high_grid(rng, shape):
    return rng.integers(-2, 3, shape) + rng.uniform(0.5, 0.8, shape)


def scale(rng, shape):  # positive factors for the broadcasting case of non-binary ops
    return rng.uniform(0.5, 1.5, shape)


@dataclass
class OpSpec:
    """One primitive: how to call it (ours and autograd's), on which shapes, from which domain.

    A case is a tuple of input shapes. A case with one shape more than the op has inputs is a
    broadcasting case for an op that does not broadcast by itself: that extra input is a
    positive scale multiplied into the first input, so the op receives a broadcast product.
    """
    name: str
    fn: Callable
    ref: Callable
    cases: list
    domains: list = field(default_factory=lambda: [real])
    arity: int = 1


IDX = np.array([2, 0, 2, 1])  # integer-array index with a repeat: the VJP must scatter-add
COND = np.array([[True, False, True, False], [False, False, True, True], [True, True, False, True]])
GRU_MASK = np.array([[True, True, True, True], [True, True, False, False], [True, True, True, False]])


def gru_sequence_ref(x_proj, h0, W_h, b_h, reverse=False):
    """fused.gru_sequence as an autograd.numpy loop over time (a worked GRU, brought by the grader)."""
    return reference("gru_sequence")(x_proj, h0, W_h, b_h, GRU_MASK, reverse)


CE_TARGET = np.array([[4, 0, 2, 4], [1, 3, 3, 0], [2, 2, 0, 1]])  # ids into a last axis of 5


def _ce_target(logits):
    """Target ids for logits (..., 5): CE_TARGET's first entries, shaped like logits without its last axis."""
    shape = np.shape(logits)[:-1]
    return CE_TARGET.reshape(-1)[:int(np.prod(shape))].reshape(shape)


def softmax_cross_entropy_ref(x):
    """fused.softmax_cross_entropy in autograd.numpy: log(sum(exp(x))) - x[..., target]."""
    target = _ce_target(x)
    return anp.log(anp.sum(anp.exp(x), axis=-1)) - x[np.indices(target.shape, sparse=True) + (target,)]


# gru_sequence takes (x_proj (B, T, 3H), h0 (B, H), W_h (H, 3H), b_h (3H,)); B=3, T=4, H=2 with
# two padded rows. Its inputs do not broadcast, so the broadcasting and scalar cases scale x_proj.
GRU_CASES = [((3, 4, 6), (3, 2), (2, 6), (6,)), ((3, 4, 6), (3, 2), (2, 6), (6,), (6,)),
             ((3, 4, 6), (3, 2), (2, 6), (6,), ())]

OP_SPECS = [
    OpSpec("add", ops.add, anp.add, [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (3,))], arity=2),
    OpSpec("subtract", ops.subtract, anp.subtract, [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((3,), ())], arity=2),
    OpSpec("multiply", ops.multiply, anp.multiply, [((3, 4), (3, 4)), ((3, 4), (3, 1)), ((), (2, 3))], arity=2),
    OpSpec("divide", ops.divide, anp.divide, [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 3), ())],
           domains=[real, positive], arity=2),
    OpSpec("negative", ops.negative, anp.negative, [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("power", ops.power, anp.power, [((3, 4), (3, 4)), ((3, 4), ()), ((), (3,)), ((2, 1), (1, 3))],
           domains=[positive, real], arity=2),
    OpSpec("exp", ops.exp, anp.exp, [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("log", ops.log, anp.log, [((3, 4),), ((3, 4), (3, 1)), ((),)], domains=[positive]),
    OpSpec("sqrt", ops.sqrt, anp.sqrt, [((3, 4),), ((3, 4), (4,)), ((),)], domains=[positive]),
    OpSpec("tanh", ops.tanh, anp.tanh, [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("sigmoid", ops.sigmoid, lambda x: 1 / (1 + anp.exp(-x)), [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("relu", ops.relu, lambda x: anp.maximum(x, 0.0), [((3, 4),), ((3, 4), (4,)), ((),)],
           domains=[away_from_zero]),
    OpSpec("softplus", ops.softplus, lambda x: anp.logaddexp(0.0, x), [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("abs", ops.abs, anp.abs, [((3, 4),), ((3, 4), (4,)), ((),)], domains=[away_from_zero]),
    OpSpec("maximum", ops.maximum, anp.maximum, [((3, 4), (3, 4)), ((3, 4), (4,)), ((), (3,)), ((3, 1), ())],
           domains=[low_grid, high_grid], arity=2),
    OpSpec("astype", lambda x: ops.astype(x, dtype=np.float64), lambda x: x,
           [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("sum", lambda x: ops.sum(x), anp.sum, [((3, 4),), ((),), ((3, 4), (4,))]),
    OpSpec("sum", lambda x: ops.sum(x, axis=1), lambda x: anp.sum(x, axis=1), [((3, 4),), ((2, 3, 4), (4,))]),
    OpSpec("sum", lambda x: ops.sum(x, axis=(0, 2), keepdims=True),
           lambda x: anp.sum(x, axis=(0, 2), keepdims=True), [((2, 3, 4),), ((2, 3, 4), (3, 1))]),
    OpSpec("max", lambda x: ops.max(x), anp.max, [((3, 4),), ((),), ((3, 4), ())], domains=[distinct]),
    OpSpec("max", lambda x: ops.max(x, axis=-1), lambda x: anp.max(x, axis=-1),
           [((3, 4),), ((2, 3, 4), (3, 1))], domains=[distinct]),
    OpSpec("max", lambda x: ops.max(x, axis=0, keepdims=True), lambda x: anp.max(x, axis=0, keepdims=True),
           [((3, 4),), ((3, 4), (4,))], domains=[distinct]),
    OpSpec("logsumexp", lambda x: ops.logsumexp(x), lambda x: anp.log(anp.sum(anp.exp(x))),
           [((3, 4),), ((),), ((3, 4), (4,))]),
    OpSpec("logsumexp", lambda x: ops.logsumexp(x, axis=1, keepdims=True),
           lambda x: anp.log(anp.sum(anp.exp(x), axis=1, keepdims=True)), [((3, 4),), ((2, 3, 4), (4,))]),
    OpSpec("logsumexp", lambda x: ops.logsumexp(x, axis=-1), lambda x: anp.log(anp.sum(anp.exp(x), axis=-1)),
           [((5, 3),), ((5, 3), (5, 1))]),
    OpSpec("matmul", ops.matmul, anp.matmul,
           [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)), ((3, 4), (4,)), ((2, 3, 4), (2, 4, 2)),
            ((1, 3, 4), (2, 4, 2))], arity=2),
    OpSpec("reshape", lambda x: ops.reshape(x, shape=(2, 6)), lambda x: anp.reshape(x, (2, 6)),
           [((3, 4),), ((3, 4), (4,)), ((12,),)]),
    OpSpec("reshape", lambda x: ops.reshape(x, shape=()), lambda x: anp.reshape(x, ()), [((),), ((1, 1),)]),
    OpSpec("transpose", lambda x: ops.transpose(x), anp.transpose, [((3, 4),), ((3, 4), (4,)), ((),)]),
    OpSpec("transpose", lambda x: ops.transpose(x, axes=(1, 2, 0)), lambda x: anp.transpose(x, (1, 2, 0)),
           [((2, 3, 4),), ((2, 3, 4), (3, 1))]),
    OpSpec("concatenate", lambda x, y: ops.concatenate([x, y], axis=1),
           lambda x, y: anp.concatenate([x, y], axis=1), [((3, 4), (3, 2)), ((3, 1), (3, 5)), ((3, 2), (3, 4), (2,))],
           arity=2),
    OpSpec("concatenate", lambda x, y, z: ops.concatenate([x, y, z]), lambda x, y, z: anp.concatenate([x, y, z]),
           [((2,), (3,), (1,)), ((2, 3), (1, 3), (4, 3))], arity=3),
    OpSpec("stack", lambda x, y: ops.stack([x, y]), lambda x, y: anp.stack([x, y]),
           [((3, 4), (3, 4)), ((), ()), ((3, 4), (3, 4), (4,))], arity=2),
    OpSpec("stack", lambda x, y: ops.stack([x, y], axis=-1), lambda x, y: anp.stack([x, y], axis=-1),
           [((3, 4), (3, 4)), ((2,), (2,))], arity=2),
    OpSpec("getitem", lambda x: x[1:, ::2], lambda x: x[1:, ::2], [((3, 4),), ((3, 4), (4,))]),
    OpSpec("getitem", lambda x: x[IDX], lambda x: x[IDX], [((3, 4),), ((3,),), ((3, 4), (4,))]),
    OpSpec("getitem", lambda x: x[IDX, np.array([0, 1, 3, 0])], lambda x: x[IDX, np.array([0, 1, 3, 0])],
           [((3, 4),), ((3, 4), (3, 1))]),
    OpSpec("getitem", lambda x: x[1, 2], lambda x: x[1, 2], [((3, 4),), ((3, 4), ())]),
    # autograd's own `where` VJP does not undo broadcasting, so the reference broadcasts first.
    OpSpec("where", lambda x, y: ops.where(COND, x, y), lambda x, y: anp.where(COND, x + 0 * y, y + 0 * x),
           [((3, 4), (3, 4)), ((3, 4), (4,)), ((), (3, 4)), ((3, 1), ())], arity=2),
    OpSpec("gru_sequence", lambda *a: fused.gru_sequence(*a, mask=GRU_MASK), gru_sequence_ref, GRU_CASES, arity=4),
    OpSpec("gru_sequence", lambda *a: fused.gru_sequence(*a, mask=GRU_MASK, reverse=True),
           lambda *a: gru_sequence_ref(*a, reverse=True), GRU_CASES, arity=4),
    OpSpec("softmax_cross_entropy", lambda x: fused.softmax_cross_entropy(x, target=_ce_target(x)),
           softmax_cross_entropy_ref, [((3, 4, 5),), ((3, 4, 5), (5,)), ((5,),), ((4, 5), ())]),
]


def _case_ids():
    for row in OP_SPECS:
        for case in row.cases:
            yield pytest.param(row, case, id=f"{row.name}-{'x'.join(str(s) for s in case)}")


def _inputs(row, case, rng):
    """Draw float64 inputs for one case from the row's domains (the scale input last, if any)."""
    inputs = []
    for i, shape in enumerate(case):
        domain = scale if i >= row.arity else row.domains[min(i, len(row.domains) - 1)]
        inputs.append(np.asarray(domain(rng, shape), dtype=np.float64))
    return inputs


def _with_scale(row, fn):
    """fn applied to the row's inputs; a trailing extra input scales the first one."""
    def f(*xs):
        xs = list(xs)
        if len(xs) > row.arity:
            xs[0] = xs[0] * xs.pop()
        return fn(*xs)
    return f


@pytest.mark.parametrize("row, case", list(_case_ids()))
def test_op_random_projection_check(row, case):
    inputs = _inputs(row, case, np.random.default_rng(0))
    check_grads(_with_scale(row, row.fn), *inputs)


@pytest.mark.parametrize("row, case", list(_case_ids()))
def test_op_matches_autograd(row, case):
    rng = np.random.default_rng(1)
    inputs = _inputs(row, case, rng)
    ours_f, ref_f = _with_scale(row, row.fn), _with_scale(row, row.ref)

    ours = ours_f(*[Tensor(x) for x in inputs]).data
    ref = ref_f(*inputs)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)  # (c) forward values
    assert np.shape(ours) == np.shape(ref)

    u = rng.standard_normal(np.shape(ref))
    tensors = [Tensor(x, requires_grad=True) for x in inputs]
    ours_f(*tensors).backward(u)
    for i, t in enumerate(tensors):
        ref_grad = autograd.grad(lambda *xs: anp.sum(u * ref_f(*xs)), i)(*inputs)
        np.testing.assert_allclose(t.grad, ref_grad, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{row.name} input {i} disagrees with autograd")


def test_every_primitive_has_a_row_and_every_row_a_primitive():
    rows = {row.name for row in OP_SPECS}
    assert not set(PRIMITIVES) - rows, f"primitives without an op-spec row: {set(PRIMITIVES) - rows}"
    assert not rows - set(PRIMITIVES), f"rows naming no registered primitive: {rows - set(PRIMITIVES)}"


def _broadcasts(row, case):
    """A scale input, or op inputs of different shapes that numpy broadcasts together."""
    if len(case) > row.arity:
        return True
    if row.name == "matmul":  # leading (batch) axes broadcast; the last two are the matrices
        return case[0][:-2] != case[1][:-2]
    try:
        full = np.broadcast_shapes(*case)
    except ValueError:  # e.g. concatenate's inputs, which are not meant to broadcast
        return False
    return any(shape != full for shape in case)


def test_every_primitive_has_a_broadcasting_and_a_scalar_case():
    for name in PRIMITIVES:
        cases = [(row, case) for row in OP_SPECS if row.name == name for case in row.cases]
        assert any(_broadcasts(r, c) for r, c in cases), f"{name}: no broadcasting case"
        # scalar: a 0-d input, or for ops that cannot take one (matmul, concatenate) a 0-d output
        # or a vector operand
        assert any(() in c or row.fn(*[Tensor(np.ones(s)) for s in c[:row.arity]]).shape == ()
                   or name in ("matmul", "concatenate") and any(len(s) == 1 for s in c)
                   for row, c in cases), f"{name}: no scalar case"


# ------------------------------------------------------------------ composites
COMPOSITES = [
    ("mean", lambda x: ops.mean(x, axis=0), lambda x: anp.mean(x, axis=0), (3, 4), real),
    ("mean-all", ops.mean, anp.mean, (3, 4), real),
    ("var", lambda x: ops.var(x, axis=1, keepdims=True), lambda x: anp.var(x, axis=1, keepdims=True), (3, 4), real),
    ("square", ops.square, lambda x: x * x, (3, 4), real),
    ("minimum", lambda x: ops.minimum(x, 0.1), lambda x: anp.minimum(x, 0.1), (3, 4), away_from_zero),
    ("clip", lambda x: ops.clip(x, -1.0, 1.0), lambda x: anp.clip(x, -1.0, 1.0), (3, 4),
     lambda rng, s: rng.choice([-1.5, -0.5, 0.5, 1.5], s) + rng.uniform(-0.3, 0.3, s)),
    ("log_softmax", ops.log_softmax, lambda x: x - anp.log(anp.sum(anp.exp(x), -1, keepdims=True)), (3, 5), real),
    ("softmax", lambda x: ops.softmax(x, axis=0),
     lambda x: anp.exp(x) / anp.sum(anp.exp(x), 0, keepdims=True), (3, 5), real),
    ("log_sigmoid", ops.log_sigmoid, lambda x: -anp.logaddexp(0.0, -x), (3, 4), real),
]


@pytest.mark.parametrize("name, fn, ref, shape, domain", COMPOSITES, ids=[c[0] for c in COMPOSITES])
def test_composite(name, fn, ref, shape, domain):
    x = domain(np.random.default_rng(2), shape)
    check_grads(fn, x)
    np.testing.assert_allclose(fn(Tensor(x)).data, ref(x), rtol=1e-12, atol=1e-12)
    t = Tensor(x, requires_grad=True)
    fn(t).sum().backward()
    np.testing.assert_allclose(t.grad, autograd.grad(lambda a: anp.sum(ref(a)))(x), rtol=1e-10, atol=1e-12)


def test_straight_through_passes_gradient_of_identity():
    x = Tensor(np.array([0.2, 1.7, -0.6]), requires_grad=True)
    y = ops.straight_through(x, np.round(x.data))
    np.testing.assert_array_equal(y.data, [0.0, 2.0, -1.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])


# ------------------------------------------------------------------ numerical stability
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_ops_at_extreme_inputs(dtype):
    x = Tensor(np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], dtype=dtype), requires_grad=True)
    sp = ops.softplus(x)
    np.testing.assert_allclose(sp.data, [0.0, np.exp(-30.0), np.log(2.0), 30.0, 1000.0], rtol=1e-6)
    sg = ops.sigmoid(x)
    np.testing.assert_allclose(sg.data, [0.0, np.exp(-30.0), 0.5, 1.0, 1.0], rtol=1e-6)
    lse = ops.logsumexp(ops.stack([x, x]), axis=0)
    np.testing.assert_allclose(lse.data, x.data + np.log(2.0), rtol=1e-6)
    lse_neg = ops.logsumexp(Tensor(np.array([-1000.0, -1000.0], dtype=dtype)))
    np.testing.assert_allclose(lse_neg.data, -1000.0 + np.log(2.0), rtol=1e-6)
    (sp.sum() + sg.sum() + lse.sum()).backward()
    assert np.all(np.isfinite(x.grad)) and x.grad.dtype == dtype
    for t in (sp, sg, lse, lse_neg):
        assert t.dtype == dtype


def test_logsumexp_of_all_minus_inf_is_minus_inf():
    out = ops.logsumexp(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]), axis=1)
    np.testing.assert_array_equal(out.data, [-np.inf, 0.0])
