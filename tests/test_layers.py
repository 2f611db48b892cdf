"""Every layer, checked from one table of layer specs.

Each row builds a small float64 layer and a function of (inputs..., parameters...) so that the
random-projection check covers the gradients of inputs and parameters alike, and the same
computation written with autograd.numpy from the layer's own parameter arrays. A Module subclass
defined in minivae.layers without a row fails the coverage test.
"""
import inspect
from dataclasses import dataclass
from typing import Callable

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import minivae.layers as layers
import minivae.ops as ops
from minivae import Tensor
from minivae.gradcheck import check_grads

from conftest import reference  # a worked GRU, brought by the grader


@dataclass
class LayerSpec:
    """build(rng) -> (layer, list of float64 inputs, call(layer, *inputs) -> Tensor,
    reference(param_arrays_dict, *inputs) -> autograd.numpy array)."""
    name: str
    build: Callable


def _set_param(layer, dotted_name, tensor):
    """Replace the parameter called e.g. "layers.0.W" by another Tensor."""
    *path, last = dotted_name.split(".")
    owner = layer
    for part in path:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    setattr(owner, last, tensor)


def _with_params(layer, call):
    """A function of (inputs..., parameters...) for check_grads: the layer uses the given tensors."""
    names = [n for n, _ in layer.named_parameters()]

    def f(*args):
        inputs, params = args[:len(args) - len(names)], args[len(args) - len(names):]
        for name, tensor in zip(names, params):
            _set_param(layer, name, tensor)
        return call(layer, *inputs)
    return f, names


def dense_case(rng):
    layer = layers.Dense(4, 3, rng, dtype=np.float64)
    x = rng.standard_normal((5, 4))
    return layer, [x], lambda l, x: l(x), lambda p, x: x @ p["W"] + p["b"]


def dense_broadcast_case(rng):  # (B, T, n_in) input: the bias and weight gradients sum over B and T
    layer = layers.Dense(4, 3, rng, dtype=np.float64)
    x = rng.standard_normal((2, 5, 4))
    return layer, [x], lambda l, x: l(x), lambda p, x: x @ p["W"] + p["b"]


def mlp_case(rng):
    layer = layers.MLP([4, 6, 3], "tanh", rng, dtype=np.float64)
    x = rng.standard_normal((5, 4))
    ref = lambda p, x: anp.tanh(x @ p["layers.0.W"] + p["layers.0.b"]) @ p["layers.1.W"] + p["layers.1.b"]
    return layer, [x], lambda l, x: l(x), ref


def embedding_case(rng):
    layer = layers.Embedding(7, 3, rng, dtype=np.float64)
    ids = np.array([[1, 4, 1], [0, 6, 1]])  # repeated ids: gradients must add up
    return layer, [], lambda l: l(ids), lambda p: p["W"][ids]


def embedding_dropout_case(rng):  # the mask is drawn outside and passed in: f stays deterministic
    layer = layers.Embedding(7, 3, rng, dtype=np.float64)
    ids = np.array([[1, 4, 1], [0, 6, 1]])
    mask = layers.dropout_mask(ids.shape + (3,), 0.5, rng, np.float64)
    return layer, [], lambda l: l(ids) * mask, lambda p: p["W"][ids] * mask


def _gru_cell_ref(p, x, h, prefix=""):
    return reference("gru_cell")(p, x, h, prefix)


def _gru_ref(p, x, lengths, h0=None, bidirectional=False):
    return reference("gru")(p, x, lengths, h0, bidirectional)


def _flat(outputs, h):  # one Tensor holding both results, for the table's checks
    return ops.concatenate([outputs.reshape(-1), h.reshape(-1)])


def gru_cell_case(rng):
    layer = layers.GRUCell(3, 4, rng, dtype=np.float64)
    x, h = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    return layer, [x, h], lambda l, x, h: l(x, h), _gru_cell_ref


def gru_padded_case(rng):  # 4 time steps, two sequences padded
    layer = layers.GRU(3, 4, rng, dtype=np.float64)
    x, lengths = rng.standard_normal((3, 4, 3)), np.array([4, 2, 3])
    return (layer, [x], lambda l, x: _flat(*l(x, lengths)),
            lambda p, x: _gru_ref(p, x, lengths))


def gru_bidirectional_case(rng):  # with an initial state, and a length-1 sequence
    layer = layers.GRU(3, 4, rng, dtype=np.float64, bidirectional=True)
    x, lengths, h0 = rng.standard_normal((3, 4, 3)), np.array([2, 4, 1]), rng.standard_normal((3, 8))
    return (layer, [x, h0], lambda l, x, h0: _flat(*l(x, lengths, h0)),
            lambda p, x, h0: _gru_ref(p, x, lengths, h0, bidirectional=True))


def gru_composed_case(rng):  # the unrolled GRUCell reference path, bidirectional and padded
    layer = layers.GRU(3, 4, rng, dtype=np.float64, bidirectional=True, fused=False)
    x, lengths, h0 = rng.standard_normal((3, 4, 3)), np.array([3, 4, 1]), rng.standard_normal((3, 8))
    return (layer, [x, h0], lambda l, x, h0: _flat(*l(x, lengths, h0)),
            lambda p, x, h0: _gru_ref(p, x, lengths, h0, bidirectional=True))


LAYER_SPECS = [
    LayerSpec("Dense", dense_case),
    LayerSpec("Dense", dense_broadcast_case),
    LayerSpec("MLP", mlp_case),
    LayerSpec("Embedding", embedding_case),
    LayerSpec("Embedding", embedding_dropout_case),
    LayerSpec("GRUCell", gru_cell_case),
    LayerSpec("GRU", gru_padded_case),
    LayerSpec("GRU", gru_bidirectional_case),
    LayerSpec("GRU", gru_composed_case),
]


@pytest.mark.parametrize("spec", LAYER_SPECS, ids=[s.build.__name__ for s in LAYER_SPECS])
def test_layer_gradients_finite_differences(spec):
    rng = np.random.default_rng(0)
    layer, inputs, call, _ = spec.build(rng)
    f, _ = _with_params(layer, call)
    check_grads(f, *inputs, *[p.data.copy() for p in layer.parameters()])


@pytest.mark.parametrize("spec", LAYER_SPECS, ids=[s.build.__name__ for s in LAYER_SPECS])
def test_layer_matches_autograd(spec):
    rng = np.random.default_rng(1)
    layer, inputs, call, ref = spec.build(rng)
    names = [n for n, _ in layer.named_parameters()]
    values = [p.data.copy() for p in layer.parameters()]
    out = call(layer, *[Tensor(x) for x in inputs])
    np.testing.assert_allclose(out.data, ref(dict(zip(names, values)), *inputs), rtol=1e-12, atol=1e-12)

    u = rng.standard_normal(out.shape)
    layer.zero_grad()
    call(layer, *[Tensor(x) for x in inputs]).backward(u)

    def scalar(*vals):
        return anp.sum(u * ref(dict(zip(names, vals)), *inputs))
    for i, (name, p) in enumerate(layer.named_parameters()):
        np.testing.assert_allclose(p.grad, autograd.grad(scalar, i)(*values), rtol=1e-10, atol=1e-12,
                                   err_msg=f"{spec.name}.{name}")


def test_every_layer_class_has_a_row():
    classes = {name for name, obj in inspect.getmembers(layers, inspect.isclass)
               if issubclass(obj, layers.Module) and obj is not layers.Module
               and obj.__module__ == layers.__name__}
    rows = {spec.name for spec in LAYER_SPECS}
    assert classes <= rows, f"layers without a spec row: {classes - rows}"
    assert rows <= classes, f"rows naming no layer: {rows - classes}"


# ------------------------------------------------------------------ Module behaviour
def test_named_parameters_in_definition_order():
    mlp = layers.MLP([3, 4, 5, 2], "relu", np.random.default_rng(0))
    assert [n for n, _ in mlp.named_parameters()] == [
        "layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b", "layers.2.W", "layers.2.b"]
    assert mlp.num_parameters() == 3 * 4 + 4 + 4 * 5 + 5 + 5 * 2 + 2


def test_state_dict_round_trip_and_mismatch_errors():
    a = layers.MLP([3, 4, 2], "relu", np.random.default_rng(0))
    b = layers.MLP([3, 4, 2], "relu", np.random.default_rng(1))
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match=r"layers.0.W.*\(3, 4\).*\(3, 5\)"):
        layers.MLP([3, 5, 2], "relu", np.random.default_rng(0)).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="missing.*layers.2.W"):
        layers.MLP([3, 4, 4, 2], "relu", np.random.default_rng(0)).load_state_dict(a.state_dict())


def test_dense_init_matches_torch_default_range():
    layer = layers.Dense(400, 20, np.random.default_rng(0))
    k = 1 / np.sqrt(400)
    assert layer.W.dtype == np.float32
    assert np.abs(layer.W.data).max() <= k and np.abs(layer.W.data).max() > 0.95 * k
    assert abs(layer.W.data.std() - k / np.sqrt(3)) < 0.02 * k  # the std of Uniform(-k, k)


def test_layers_keep_no_state_between_calls():
    mlp = layers.MLP([3, 4, 2], "relu", np.random.default_rng(0))
    before = dict(vars(mlp))
    mlp(Tensor(np.ones((2, 3), np.float32)))
    assert dict(vars(mlp)) == before


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        layers.MLP([3, 2], "gelu", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least two positive"):
        layers.MLP([3], "relu", np.random.default_rng(0))
    with pytest.raises(TypeError, match="integer token ids"):
        layers.Embedding(5, 2, np.random.default_rng(0))(np.array([0.5]))


# ------------------------------------------------------------------ dropout masks
def test_dropout_mask_is_inverted_dropout():
    mask = layers.dropout_mask((200, 500), 0.3, np.random.default_rng(0))
    assert mask.dtype == np.float32 and mask.shape == (200, 500)
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
    assert abs((mask == 0).mean() - 0.3) < 0.01 and abs(mask.mean() - 1) < 0.01  # E[mask] = 1
    np.testing.assert_array_equal(mask, layers.dropout_mask((200, 500), 0.3, np.random.default_rng(0)))
    assert layers.dropout_mask((2, 3), 0.0, None, np.float64).tolist() == [[1.0] * 3] * 2
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"dropout probability p must be in \[0, 1\)"):
            layers.dropout_mask((2, 3), p, np.random.default_rng(0))


# ------------------------------------------------------------------ GRU
def _padded_batch(rng, lengths, T=5, n_in=3):
    """x with zeros at padded positions, and the same x with large junk there."""
    x = rng.standard_normal((len(lengths), T, n_in))
    real = np.arange(T)[None, :, None] < np.asarray(lengths)[:, None, None]
    x_zero = np.where(real, x, 0.0)
    return x_zero, np.where(real, x, 100 * rng.standard_normal(x.shape)), real


def test_gru_padding_changes_nothing():
    rng = np.random.default_rng(0)
    gru = layers.GRU(3, 4, rng, dtype=np.float64, bidirectional=True)
    lengths = np.array([5, 2, 3, 1])
    x_zero, x_junk, real = _padded_batch(rng, lengths)
    u_out, u_h = rng.standard_normal((4, 5, 8)) * real, rng.standard_normal((4, 8))
    results = []
    for x in (x_zero, x_junk):
        gru.zero_grad()
        x = Tensor(x, requires_grad=True)
        out, h = gru(x, lengths)
        ((out * u_out).sum() + (h * u_h).sum()).backward()  # a loss of real positions + final state
        results.append((out.data, h.data, x.grad, [p.grad for p in gru.parameters()]))
    (out0, h0, gx0, grads0), (out1, h1, gx1, grads1) = results
    np.testing.assert_array_equal(out0, out1)
    np.testing.assert_array_equal(h0, h1)
    assert not (out0 * ~real).any(), "outputs at padded positions must be zero"
    np.testing.assert_array_equal(gx0, gx1)
    assert not (gx1 * ~real).any(), "padded inputs must receive zero gradient"
    for name, g0, g1 in zip([n for n, _ in gru.named_parameters()], grads0, grads1):
        np.testing.assert_array_equal(g0, g1, err_msg=name)


def test_gru_final_state_is_state_after_last_real_token():
    rng = np.random.default_rng(1)
    gru = layers.GRU(3, 4, rng, dtype=np.float64)
    lengths = np.array([2, 5, 3])
    x, _, _ = _padded_batch(rng, lengths)
    out, h = gru(Tensor(x), lengths)
    for b, n in enumerate(lengths):  # the cell, one step at a time, on the unpadded sequence
        h_b = Tensor(np.zeros((1, 4)))
        for t in range(n):
            h_b = gru.cell(Tensor(x[b:b + 1, t]), h_b)
            np.testing.assert_allclose(out.data[b, t], h_b.data[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h.data[b], h_b.data[0], rtol=1e-12, atol=1e-14)


def test_gru_backward_direction_reads_each_sequence_from_its_own_end():
    rng = np.random.default_rng(2)
    gru = layers.GRU(3, 4, rng, dtype=np.float64, bidirectional=True)
    lengths = np.array([3, 5, 1])
    x, _, _ = _padded_batch(rng, lengths)
    out, h = gru(Tensor(x), lengths)
    for b, n in enumerate(lengths):  # the reverse cell on the reversed unpadded sequence
        h_b, states = Tensor(np.zeros((1, 4))), []
        for t in reversed(range(n)):
            h_b = gru.cell_reverse(Tensor(x[b:b + 1, t]), h_b)
            states.append(h_b.data[0])
        np.testing.assert_allclose(out.data[b, :n, 4:], states[::-1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h.data[b, 4:], h_b.data[0], rtol=1e-12, atol=1e-14)
        assert not out.data[b, n:].any()


def test_gru_matches_torch():
    torch = pytest.importorskip("torch")  # optional: torch is never a dependency of minivae
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    B, T, n_in, H = 3, 5, 3, 4
    ref = torch.nn.GRU(n_in, H, batch_first=True, bidirectional=True, dtype=torch.float64)
    gru = layers.GRU(n_in, H, np.random.default_rng(0), dtype=np.float64, bidirectional=True)
    w = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    state = {}
    for prefix, suffix in (("cell.", "_l0"), ("cell_reverse.", "_l0_reverse")):
        cell = layers.gru_params_from_torch(*[w[k + suffix] for k in
                                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh")])
        state.update({prefix + k: v for k, v in cell.items()})
    gru.load_state_dict(state)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, n_in))

    out_ref, h_ref = ref(torch.tensor(x))  # unpadded batch
    out, h = gru(Tensor(x), np.full(B, T))
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.data, torch.cat([h_ref[0], h_ref[1]], 1).detach().numpy(),
                               rtol=1e-10, atol=1e-12)

    lengths = np.array([2, 5, 4])  # padded batch: torch needs packing to get this right
    x_ref = torch.tensor(x, requires_grad=True)
    packed, h_ref = ref(pack_padded_sequence(x_ref, torch.tensor(lengths), batch_first=True,
                                             enforce_sorted=False))
    out_ref, _ = pad_packed_sequence(packed, batch_first=True, total_length=T)
    h_ref = torch.cat([h_ref[0], h_ref[1]], 1)
    u_out, u_h = rng.standard_normal(out_ref.shape), rng.standard_normal(h_ref.shape)
    ((out_ref * torch.tensor(u_out)).sum() + (h_ref * torch.tensor(u_h)).sum()).backward()
    x_t = Tensor(x, requires_grad=True)
    out, h = gru(x_t, lengths)
    ((out * u_out).sum() + (h * u_h).sum()).backward()
    np.testing.assert_allclose(out.data, out_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.data, h_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x_t.grad, x_ref.grad.numpy(), rtol=1e-10, atol=1e-12)
    grads_ref = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    for prefix, suffix in (("cell.", "_l0"), ("cell_reverse.", "_l0_reverse")):
        ours = dict(gru.named_parameters())
        expected = layers.gru_params_from_torch(*[grads_ref[k + suffix] for k in
                                                  ("weight_ih", "weight_hh", "bias_ih", "bias_hh")])
        for k, g in expected.items():
            np.testing.assert_allclose(ours[prefix + k].grad, g, rtol=1e-10, atol=1e-12,
                                       err_msg=prefix + k)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_gru_matches_the_composed_reference(bidirectional):
    """fused.gru_sequence's hand-written backward through time against GRUCell unrolled from ops."""
    rng = np.random.default_rng(5)
    B, T, n_in, H = 4, 6, 3, 5
    fused = layers.GRU(n_in, H, rng, dtype=np.float64, bidirectional=bidirectional)
    composed = layers.GRU(n_in, H, rng, dtype=np.float64, bidirectional=bidirectional, fused=False)
    composed.load_state_dict(fused.state_dict())
    lengths = np.array([6, 2, 1, 4])  # full, padded, a single token
    x, h0 = rng.standard_normal((B, T, n_in)), rng.standard_normal((B, H * (1 + bidirectional)))
    n_out = H * (1 + bidirectional)
    u_out, u_h = rng.standard_normal((B, T, n_out)), rng.standard_normal((B, n_out))  # padded too
    results = []
    for gru in (fused, composed):
        x_t, h0_t = Tensor(x, requires_grad=True), Tensor(h0, requires_grad=True)
        out, h = gru(x_t, lengths, h0_t)
        ((out * u_out).sum() + (h * u_h).sum()).backward()
        results.append({"outputs": out.data, "final state": h.data, "x.grad": x_t.grad,
                        "h0.grad": h0_t.grad, **{n: p.grad for n, p in gru.named_parameters()}})
    assert len(results[0]) == 4 + 4 * (1 + bidirectional)
    for name, value in results[0].items():
        assert np.abs(value).max() > 0.01, name  # every compared quantity is non-trivial
        np.testing.assert_allclose(value, results[1][name], rtol=1e-12, atol=1e-13, err_msg=name)


def test_fused_gru_runs_float32_and_gives_float32_gradients():
    rng = np.random.default_rng(6)
    fused = layers.GRU(3, 8, rng, bidirectional=True)
    composed = layers.GRU(3, 8, rng, bidirectional=True, fused=False)
    composed.load_state_dict(fused.state_dict())
    x, lengths = rng.standard_normal((5, 7, 3)).astype(np.float32), np.array([7, 3, 1, 7, 5])
    grads = []
    for gru in (fused, composed):
        out, h = gru(Tensor(x), lengths)
        (out.sum() + (h * h).sum()).backward()
        assert out.dtype == h.dtype == np.float32
        assert all(p.grad.dtype == np.float32 for p in gru.parameters())
        grads.append([p.grad for p in gru.parameters()])
    for g_fused, g_composed in zip(*grads):
        np.testing.assert_allclose(g_fused, g_composed, rtol=1e-4, atol=1e-5)


def test_gru_float32_stays_float32_and_keeps_no_state():
    rng = np.random.default_rng(4)
    gru = layers.GRU(3, 4, rng, bidirectional=True)
    before = dict(vars(gru))
    x = Tensor(rng.standard_normal((2, 3, 3)).astype(np.float32), requires_grad=True)
    out, h = gru(x, np.array([3, 1]))
    assert out.dtype == h.dtype == np.float32
    (out.sum() + h.sum()).backward()
    assert x.grad.dtype == np.float32
    assert all(p.dtype == p.grad.dtype == np.float32 for p in gru.parameters())
    assert dict(vars(gru)) == before


def test_gru_cell_init_matches_torch_default_range():
    cell = layers.GRUCell(10, 64, np.random.default_rng(0))
    k = 1 / np.sqrt(64)
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [
        ("W_x", (10, 192)), ("b_x", (192,)), ("W_h", (64, 192)), ("b_h", (192,))]
    for p in cell.parameters():
        assert p.dtype == np.float32 and np.abs(p.data).max() <= k


def test_gru_bad_inputs():
    gru = layers.GRU(3, 4, np.random.default_rng(0))
    x = Tensor(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"GRU\(n_in=3, n_hidden=4.*\(B, T, 3\), got \(2, 5\)"):
        gru(Tensor(np.zeros((2, 5), np.float32)), np.array([5, 5]))
    with pytest.raises(ValueError, match=r"\(B, T, 3\), got \(2, 5, 6\)"):
        gru(Tensor(np.zeros((2, 5, 6), np.float32)), np.array([5, 5]))
    with pytest.raises(ValueError, match=r"lengths.*shape \(B,\) = \(2,\).*shape \(3,\)"):
        gru(x, np.array([5, 5, 5]))
    with pytest.raises(ValueError, match=r"lengths must be an integer array.*float64"):
        gru(x, np.array([5.0, 5.0]))
    for bad in ([0, 5], [6, 5]):
        with pytest.raises(ValueError, match=r"every length must be in 1\.\.T = 1\.\.5.*\[" + str(bad[0])):
            gru(x, np.array(bad))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4\), got \(2, 8\)"):
        gru(x, np.array([5, 5]), h0=Tensor(np.zeros((2, 8), np.float32)))
    with pytest.raises(ValueError, match=r"GRUCell\(n_in=3, n_hidden=4\).*got x \(2, 5\)"):
        gru.cell(Tensor(np.zeros((2, 5), np.float32)), Tensor(np.zeros((2, 4), np.float32)))
