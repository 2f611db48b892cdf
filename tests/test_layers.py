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
from minivae import Tensor
from minivae.gradcheck import check_grads


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


LAYER_SPECS = [
    LayerSpec("Dense", dense_case),
    LayerSpec("Dense", dense_broadcast_case),
    LayerSpec("MLP", mlp_case),
    LayerSpec("Embedding", embedding_case),
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
