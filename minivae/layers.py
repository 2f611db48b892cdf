"""Layers: parameter containers whose forward pass is built from ops.

A layer holds parameters (Tensors with requires_grad=True) and nothing else: no cached inputs,
no optimiser, no state carried from one call to the next, so calling it twice is two
independent computations. `Module` finds parameters by walking attributes in the order they
were assigned, which gives optimisers and checkpoints a stable, readable list of names.
"""
import numpy as np

from . import ops
from .engine import Tensor

ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "softplus": ops.softplus}


class Module:
    """Base class: lists named parameters (in definition order), saves and loads them."""

    def named_parameters(self, prefix=""):
        """(name, Tensor) pairs, e.g. ("encoder.layers.0.W", W), in the order they were defined."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{prefix}{name}.{i}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """{name: array} copies of every parameter."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters; names, shapes and dtypes must match exactly."""
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"parameter names do not match this model: missing {missing}, "
                             f"unexpected {unexpected}")
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"parameter '{name}' has shape {value.shape} in the saved state but "
                                 f"{p.data.shape} in this model (a different architecture?)")
            p.data[...] = value.astype(p.data.dtype, copy=False)

    def num_parameters(self):
        return sum(p.data.size for p in self.parameters())


def parameter(array):
    """A trainable Tensor."""
    return Tensor(array, requires_grad=True)


class Dense(Module):
    """Affine map y = x @ W + b, W of shape (n_in, n_out).

    Initialisation as torch.nn.Linear's default, so runs compare with PyTorch's examples:
    W and b ~ Uniform(-k, k) with k = 1/sqrt(n_in).
    """

    def __init__(self, n_in, n_out, rng, dtype=np.float32):
        k = 1.0 / np.sqrt(n_in)
        self.W = parameter(rng.uniform(-k, k, (n_in, n_out)).astype(dtype))
        self.b = parameter(rng.uniform(-k, k, n_out).astype(dtype))

    def __call__(self, x):
        return x @ self.W + self.b  # (B, n_in) @ (n_in, n_out) -> (B, n_out)


class MLP(Module):
    """Dense layers with an activation between them (none after the last).

    sizes = [n_in, h1, ..., n_out], e.g. MLP([784, 400, 40], "relu", rng).
    """

    def __init__(self, sizes, activation, rng, dtype=np.float32):
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"MLP needs at least two positive layer sizes, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose from {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.layers = [Dense(a, b, rng, dtype) for a, b in zip(sizes[:-1], sizes[1:])]

    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


class Embedding(Module):
    """A lookup table: row i of W is the vector of token i. W ~ N(0, 1) as torch.nn.Embedding.

    The gradient of a lookup scatter-adds into the rows that were used (see ops.getitem).
    """

    def __init__(self, n_vocab, dim, rng, dtype=np.float32):
        self.W = parameter(rng.standard_normal((n_vocab, dim)).astype(dtype))

    def __call__(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding needs integer token ids, got dtype {ids.dtype}")
        return self.W[ids]  # (B, T) ids -> (B, T, dim)
