"""Property tests: random small graphs of the registered primitives, differentiated by minivae
and by HIPS autograd, must agree.

Each example composes a few ops (unary, binary with broadcasting, reductions) over a pool of
inputs of different shapes, reusing earlier results (fan-out at random depths), and sums every
result into the loss. The example count is kept small so the default run stays fast.
"""
import autograd
import autograd.numpy as anp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import minivae.ops as ops
from minivae import Tensor
from minivae.fused import softmax_cross_entropy

SHAPES = [(3, 4), (4,), (3, 1), ()]
UNARY = {  # name -> (minivae, autograd); each keeps values bounded
    "tanh": (ops.tanh, anp.tanh),
    "sigmoid": (ops.sigmoid, lambda a: 1 / (1 + anp.exp(-a))),
    "softplus": (ops.softplus, lambda a: anp.logaddexp(0.0, a)),
    "exp_tanh": (lambda a: ops.exp(ops.tanh(a)), lambda a: anp.exp(anp.tanh(a))),
    "relu": (ops.relu, lambda a: anp.maximum(a, 0.0)),
    "log_softplus": (lambda a: ops.log(ops.softplus(a) + 0.5), lambda a: anp.log(anp.logaddexp(0.0, a) + 0.5)),
}
BINARY = {
    "add": (ops.add, anp.add),
    "subtract": (ops.subtract, anp.subtract),
    "multiply": (ops.multiply, anp.multiply),
    "divide": (lambda a, b: ops.divide(a, ops.softplus(b) + 1.0), lambda a, b: a / (anp.logaddexp(0.0, b) + 1.0)),
}
REDUCE = {
    "sum0": (lambda a: ops.sum(a, axis=0, keepdims=True) if a.ndim else a,
             lambda a: anp.sum(a, axis=0, keepdims=True) if a.ndim else a),
    "logsumexp": (lambda a: ops.logsumexp(a, axis=-1, keepdims=True) if a.ndim else a,
                  lambda a: anp.log(anp.sum(anp.exp(a), axis=-1, keepdims=True)) if a.ndim else a),
    "cross_entropy": (lambda a: softmax_cross_entropy(a, target=_last(a)) if a.ndim else a,  # target: last id
                      lambda a: anp.log(anp.sum(anp.exp(a), axis=-1)) - a[..., -1] if a.ndim else a),
}


def _last(a):
    """The last id of a's last axis, at every position of the others."""
    return np.full(a.shape[:-1], a.shape[-1] - 1)

STEP = st.one_of(st.tuples(st.just("unary"), st.sampled_from(sorted(UNARY)), st.integers(0, 99)),
                 st.tuples(st.just("binary"), st.sampled_from(sorted(BINARY)), st.integers(0, 99),
                           st.integers(0, 99)),
                 st.tuples(st.just("reduce"), st.sampled_from(sorted(REDUCE)), st.integers(0, 99)))


def _run(steps, inputs, table_index):
    """Apply the steps to the inputs with one of the two libraries; the loss sums every value."""
    values = list(inputs)
    for kind, name, *args in steps:
        table = {"unary": UNARY, "binary": BINARY, "reduce": REDUCE}[kind]
        fn = table[name][table_index]
        values.append(fn(*[values[a % len(values)] for a in args]))
    total = 0.0
    for v in values[len(inputs):]:
        total = total + (ops.sum(v) if table_index == 0 else anp.sum(v))
    return total


@settings(max_examples=15, deadline=None, derandomize=True)
@given(steps=st.lists(STEP, min_size=1, max_size=6), seed=st.integers(0, 2 ** 16))
def test_random_graphs_match_autograd(steps, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.5, 1.5, s) for s in SHAPES]
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    loss = _run(steps, tensors, 0)
    expected = autograd.grad(lambda *xs: _run(steps, xs, 1), argnum=list(range(len(arrays))))(*arrays)
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        return
    loss.backward()
    for t, g in zip(tensors, expected):
        got = np.zeros_like(t.data) if t.grad is None else t.grad
        np.testing.assert_allclose(got, g, rtol=1e-9, atol=1e-12)
