"""The gradient debugger names the wrong op, and the graph drawings show it.

find_wrong_vjp checks each node's VJP at that node's own inputs, so a wrong op is told apart from
a wrong engine; check_grads puts its finding first in every failure message.
"""
import numpy as np
import pytest

import minivae.engine as engine
import minivae.ops as ops
from minivae import Tensor
from minivae.engine import PRIMITIVES, primitive
from minivae.gradcheck import GradientCheckError, check_grads, check_vjp, engine_agrees, find_wrong_vjp
from minivae.graph import ENGINE_NOTE, draw_graph, gradient_norms, to_dot
from minivae.models import MLPVAE
from test_engine import _breadth_first  # the classic wrong order, written once


@pytest.fixture
def exp_off_by_a_tenth_of_a_percent(monkeypatch):
    """ops.exp itself, with its VJP 0.1% too large (as a student's slip would make it)."""
    right = ops.exp._vjps[0]
    monkeypatch.setattr(ops.exp, "_vjps", (lambda g, ans, x: 1.001 * right(g, ans, x),))
    monkeypatch.setattr(ops.exp, "_vjp_all", None)


def _vae_loss(seed=0, batch=4):
    rng = np.random.default_rng(seed)
    model = MLPVAE(n_in=30, hidden=(16,), latent=3, rng=rng, dtype=np.float64)
    x = (rng.uniform(size=(batch, 30)) > 0.5).astype(np.float64)
    loss, _ = model.loss(x, rng.standard_normal((batch, 3)))
    return model, loss


def test_debugger_names_a_tenth_of_a_percent_wrong_vjp_inside_a_vae_loss(exp_off_by_a_tenth_of_a_percent):
    model, loss = _vae_loss()
    loss.backward()
    wrong = find_wrong_vjp(loss)
    assert wrong is not None and wrong.node._op is ops.exp
    text = str(wrong)
    assert text.startswith("op 'exp': its VJP disagrees with finite differences (node ")
    assert "inputs: x float64 (4, 3)" in text and "largest wrong entries" in text
    assert text.count(" vs ") >= 5 and "path to the output: exp -> " in text


def test_debugger_finds_nothing_in_a_correct_graph():
    _, loss = _vae_loss()
    assert find_wrong_vjp(loss) is None


def test_check_grads_names_the_op_first(exp_off_by_a_tenth_of_a_percent):
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(GradientCheckError) as err:
        check_grads(lambda x: ops.tanh(ops.exp(x) + 1.0), x)
    first = str(err.value).splitlines()[0]
    assert "op 'exp': its VJP disagrees" in first


def test_a_wrong_unbroadcast_is_blamed_on_the_engine_not_the_op(monkeypatch):
    real = engine.unbroadcast
    monkeypatch.setattr(engine, "unbroadcast", lambda g, p, name="?": real(g, p, name) / 2 ** (g.ndim - p.ndim))
    rng = np.random.default_rng(1)
    with pytest.raises(GradientCheckError, match=r"engine.unbroadcast is wrong, not op 'add'"):
        check_grads(lambda x, b: x + b, rng.standard_normal((4, 3)), rng.standard_normal(3))


def test_a_wrong_engine_is_blamed_on_the_engine(monkeypatch):
    monkeypatch.setattr(engine, "_topological_order", lambda root: _breadth_first(root))
    x = np.array([0.3, -0.2])
    with pytest.raises(GradientCheckError, match="the mistake is in Tensor.backward"):
        check_grads(lambda x: x + ops.softplus(ops.softplus(x)), x)



def test_draw_graph_says_in_the_figure_when_the_engine_is_at_fault(monkeypatch, tmp_path):
    def loss():
        x = Tensor(np.array([0.3, -0.2]), requires_grad=True)
        return ops.sum(x + ops.softplus(ops.softplus(x)))
    right = loss()
    assert engine_agrees(right) is True
    import matplotlib.pyplot as plt
    fig = draw_graph(right, highlight=True)  # no path: the figure is returned open
    assert not [t for t in fig.texts if ENGINE_NOTE in t.get_text()]
    plt.close(fig)
    monkeypatch.setattr(engine, "_topological_order", lambda root: _breadth_first(root))
    wrong = loss()
    assert find_wrong_vjp(wrong) is None and engine_agrees(wrong) is False
    fig = draw_graph(wrong, tmp_path / "engine.png", highlight=True)
    assert [t for t in fig.texts if ENGINE_NOTE in t.get_text()] and (tmp_path / "engine.png").is_file()


def test_an_unbroadcast_that_keeps_size_1_axes_is_named_in_whole_words(monkeypatch):
    monkeypatch.setattr(engine, "unbroadcast", lambda g, p, name="?": g)  # returns (4, 3) for (4, 1)
    rng = np.random.default_rng(2)
    problems = check_vjp(ops.add, [rng.standard_normal((4, 3)), rng.standard_normal((4, 1))])
    assert [p["kind"] for p in problems] == ["unbroadcast"]
    message = problems[0]["message"]
    assert "engine.unbroadcast is wrong here, not the op" in message and "raises ValueError" in message
    assert "shape (4, 3) and input y of shape (4, 1)" in message
    try:
        np.vdot(np.ones((4, 1)), np.ones((4, 3)))
    except ValueError as err:
        full = f"ValueError: {err}"
    shown = message.split("raises ")[1]  # the whole error, or cut between two words
    assert shown == full or (shown.endswith(" ...") and full.startswith(shown[:-4]) and full[len(shown) - 4] == " ")


@pytest.fixture
def op_with(request):
    """A registered primitive x * 3 whose VJP is the given function."""
    @primitive
    def times_three(x):
        return x * 3.0
    times_three.defvjp(request.param)
    yield times_three
    del PRIMITIVES["times_three"]


@pytest.mark.parametrize("op_with", [lambda g, ans, x: 3.0 * g[:, :1]], indirect=True)
def test_a_shape_error_inside_a_vjp_names_the_op(op_with):
    with pytest.raises(GradientCheckError, match=r"(?s)op 'times_three'.*shape \(3, 1\).*input x of shape \(3, 4\)"):
        check_grads(op_with, np.ones((3, 4)))


@pytest.mark.parametrize("op_with", [lambda g, ans, x: (3.0 * g).astype(np.float64)], indirect=True)
def test_an_upcasting_vjp_is_named(op_with):
    problems = check_vjp(op_with, [np.ones(3, np.float32)])
    assert [p["kind"] for p in problems] == ["dtype"]
    assert "float64 gradient for the float32 input x" in problems[0]["message"]


def test_check_vjp_passes_every_registered_primitive_at_a_plain_point():
    rng = np.random.default_rng(0)
    for name in ("exp", "tanh", "sigmoid", "softplus", "log", "sqrt"):
        assert check_vjp(PRIMITIVES[name], [rng.uniform(0.5, 2.0, (2, 3))]) == []
    assert check_vjp(PRIMITIVES["matmul"], [rng.standard_normal((2, 3)), rng.standard_normal((3, 4))]) == []


def test_gradient_norms_leave_leaf_gradients_as_they_were():
    model, loss = _vae_loss()
    loss.backward()
    before = {n: p.grad.copy() for n, p in model.named_parameters()}
    norms = gradient_norms(loss)
    assert norms[id(loss)] == 1.0
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, before[n])
        assert norms[id(p)] == pytest.approx(np.linalg.norm(before[n]))


def test_draw_graph_writes_a_png_with_the_wrong_node_and_to_dot_marks_it(tmp_path, exp_off_by_a_tenth_of_a_percent):
    model, loss = _vae_loss()
    loss.backward()
    wrong = find_wrong_vjp(loss)
    draw_graph(loss, tmp_path / "g.png", names=dict(model.named_parameters()), highlight=wrong)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    dot = to_dot(loss, names=dict(model.named_parameters()), highlight=wrong)
    assert dot.startswith("digraph") and dot.count('fillcolor="#f4a6a6"') == 1
    assert 'label="exp\\n(4, 3) f64\\n|g|' in dot and "encoder.layers.0.W" in dot


def test_large_graphs_are_summarised(tmp_path):
    x = Tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(300):
        y = ops.softplus(y) - 0.5
    from minivae.graph import graph_layout
    boxes, edges, n_nodes, hidden = graph_layout(y, max_nodes=100, max_rows=30)
    assert n_nodes == 601 and len(boxes) == 30 and hidden > 0
    draw_graph(y, tmp_path / "big.png", max_nodes=100, max_rows=30)
