"""Layers: parameter containers whose forward pass is built from ops.

A layer holds parameters (Tensors with requires_grad=True) and nothing else: no cached inputs,
no optimiser, no state carried from one call to the next, so calling it twice is two
independent computations. `Module` finds parameters by walking attributes in the order they
were assigned, which gives optimisers and checkpoints a stable, readable list of names.
"""
import numpy as np

from . import ops
from .fused import gru_sequence
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


def check_layer_args(layer, rng, dtype, **sizes):
    """Refuse sizes that are not positive integers, an rng that is not a np.random.Generator and
    a dtype that is not a float type, naming the layer and the argument."""
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{layer}: {name} must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{layer}: rng must be a np.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"{layer}: dtype must be a float type (np.float32 or np.float64), got {np.dtype(dtype)}")


class Dense(Module):
    """Affine map y = x @ W + b, W of shape (n_in, n_out).

    Initialisation as torch.nn.Linear's default, so runs compare with PyTorch's examples:
    W and b ~ Uniform(-k, k) with k = 1/sqrt(n_in).
    """

    def __init__(self, n_in, n_out, rng, dtype=np.float32):
        check_layer_args("Dense", rng, dtype, n_in=n_in, n_out=n_out)
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
        check_layer_args("Embedding", rng, dtype, n_vocab=n_vocab, dim=dim)
        self.W = parameter(rng.standard_normal((n_vocab, dim)).astype(dtype))

    def __call__(self, ids):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding needs integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.W)):
            raise IndexError(f"Embedding: token ids must be in [0, {len(self.W)}), got ids from "
                             f"{ids.min()} to {ids.max()} (a vocabulary built from other data?)")
        return self.W[ids]  # (B, T) ids -> (B, T, dim)


def dropout_mask(shape, p, rng, dtype=np.float32):
    """An inverted-dropout mask: each entry is 0 with probability p, else 1/(1-p), so E[mask] = 1.

    Multiply it into activations: randomness stays outside the layers and the loss stays a
    deterministic function of its inputs (gradient checks pass a fixed mask in). For the sentence
    VAE's embedding dropout (elementwise, on the decoder's input embeddings):

        e = embedding(ids)                                   # (B, T, dim)
        e = e * dropout_mask(e.shape, p, rng, e.dtype)       # training only; skip at evaluation

    With p=0 the mask is all ones and rng is not used (may be None).
    Reference: Srivastava et al. 2014, JMLR 15, "Dropout", Sec. 10 (scaling at training time).
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p} (p=1 would drop every "
                         "entry; for an inputless decoder use collapse.word_dropout with p=1)")
    if p == 0:
        return np.ones(shape, dtype)
    return (rng.random(shape) >= p).astype(dtype) / np.asarray(1 - p, dtype)


class GRUCell(Module):
    """One step of a gated recurrent unit, h' = GRUCell(x, h), in PyTorch's (cuDNN's) form:

        r  = sigmoid(x W_ir + b_ir + h W_hr + b_hr)            reset gate
        z  = sigmoid(x W_iz + b_iz + h W_hz + b_hz)            update gate
        n  = tanh(x W_in + b_in + r * (h W_hn + b_hn))         candidate state
        h' = (1 - z) * n + z * h

    The reset gate multiplies h W_hn + b_hn, i.e. it is applied AFTER the recurrent matmul (Cho
    et al. apply it before: (r * h) W_hn). That lets a step do just two matmuls, because the
    weights are stored stacked with gate order r, z, n along the 3H axis:
        W_x (n_in, 3H), b_x (3H,), W_h (H, 3H), b_h (3H,)
    = torch.nn.GRU's weight_ih_l0.T, bias_ih_l0, weight_hh_l0.T, bias_hh_l0 (see
    gru_params_from_torch). Initialisation as torch: all ~ Uniform(-k, k), k = 1/sqrt(H).
    Built from ops only: this is the readable reference, with no GRU-specific gradient code.
    Reference: Cho et al. 2014, arXiv:1406.1078, Sec. 2.3, eqs. 5-8 (reset-after variant as cuDNN).
    """

    def __init__(self, n_in, n_hidden, rng, dtype=np.float32):
        check_layer_args("GRUCell", rng, dtype, n_in=n_in, n_hidden=n_hidden)
        self.n_in, self.n_hidden = int(n_in), int(n_hidden)
        k = 1.0 / np.sqrt(n_hidden)
        uniform = lambda *shape: parameter(rng.uniform(-k, k, shape).astype(dtype))
        self.W_x, self.b_x = uniform(n_in, 3 * n_hidden), uniform(3 * n_hidden)
        self.W_h, self.b_h = uniform(n_hidden, 3 * n_hidden), uniform(3 * n_hidden)

    def __call__(self, x, h):
        """x (B, n_in), h (B, H) -> h' (B, H)."""
        if x.shape[-1:] != (self.n_in,) or h.shape[-1:] != (self.n_hidden,):
            raise ValueError(f"GRUCell(n_in={self.n_in}, n_hidden={self.n_hidden}) expects x of "
                             f"shape (B, {self.n_in}) and h of shape (B, {self.n_hidden}), got x "
                             f"{tuple(x.shape)} and h {tuple(h.shape)}")
        return self.step(x @ self.W_x + self.b_x, h)

    def step(self, x_proj, h):
        """h' from the input projection x_proj = x @ W_x + b_x (B, 3H), precomputable for all steps."""
        H = self.n_hidden
        # BEGIN SOLUTION gru: the docstring's equations; x_proj, h @ W_h + b_h hold r, z, n in thirds
        h_proj = h @ self.W_h + self.b_h  # (B, 3H)
        r = ops.sigmoid(x_proj[..., :H] + h_proj[..., :H])
        z = ops.sigmoid(x_proj[..., H:2 * H] + h_proj[..., H:2 * H])
        n = ops.tanh(x_proj[..., 2 * H:] + r * h_proj[..., 2 * H:])
        return (1 - z) * n + z * h
        # END SOLUTION


def gru_params_from_torch(weight_ih, weight_hh, bias_ih, bias_hh):
    """A GRUCell state dict from one direction of torch.nn.GRU's weights, given as NumPy arrays.

    torch stores weight_ih (3H, n_in) and weight_hh (3H, H) with the same gate order r, z, n,
    so only the matrices need transposing. For a bidirectional GRU prefix the names with "cell."
    and "cell_reverse." (torch's *_l0 and *_l0_reverse weights).
    """
    return {"W_x": np.ascontiguousarray(np.asarray(weight_ih).T), "b_x": np.array(bias_ih),
            "W_h": np.ascontiguousarray(np.asarray(weight_hh).T), "b_h": np.array(bias_hh)}


class GRU(Module):
    """A GRU run over a padded batch: x (B, T, n_in), lengths (B,) -> outputs, final state.

    outputs (B, T, H) hold the state after each real token and zeros at padded positions
    (t >= length); the final state (B, H) is the state after each sequence's last real token.
    Padding never changes outputs or gradients: at a padded position the state is carried over
    unchanged, h = where(t < length, h_new, h), so nothing computed there reaches a real output.

    bidirectional=True adds a second cell (`cell_reverse`) that reads each sequence backwards from
    its OWN last real token: it runs t = T-1, ..., 0 and, since padding sits at the end, carries
    its initial state through the padding untouched until it reaches token length-1. Outputs are
    then (B, T, 2H) = [forward, backward] and the final state (B, 2H) = [forward state after the
    last real token, backward state after token 0], as torch.nn.GRU with packed sequences.
    h0 (optional, zeros by default) has the final state's shape, so a final state can be fed back.

    fused=True (the default) runs each direction as one fused.gru_sequence primitive, whose
    backward pass through time is written by hand; fused=False unrolls GRUCell.step from ops and
    is the readable reference. Both compute the same function (tests/test_layers.py checks
    outputs, final states and all gradients against each other).
    """

    def __init__(self, n_in, n_hidden, rng, dtype=np.float32, bidirectional=False, fused=True):
        self.n_in, self.n_hidden, self.bidirectional = int(n_in), int(n_hidden), bool(bidirectional)
        self.fused = bool(fused)
        self.cell = GRUCell(n_in, n_hidden, rng, dtype)
        self.cell_reverse = GRUCell(n_in, n_hidden, rng, dtype) if bidirectional else None

    def __call__(self, x, lengths, h0=None):
        B, T, lengths = self._check(x, lengths, h0)
        H = self.n_hidden
        mask = np.arange(T)[None, :] < lengths[:, None]  # (B, T) true at real tokens
        if h0 is None:
            h0 = Tensor(np.zeros((B, H * (1 + self.bidirectional)), self.cell.W_h.dtype))
        run = _run_fused if self.fused else _run_cell
        outputs, h = run(self.cell, x, mask, h0[:, :H], reverse=False)
        if not self.bidirectional:
            return outputs, h
        outputs_rev, h_rev = run(self.cell_reverse, x, mask, h0[:, H:], reverse=True)
        return ops.concatenate([outputs, outputs_rev], axis=2), ops.concatenate([h, h_rev], axis=1)

    def _check(self, x, lengths, h0):
        name = f"GRU(n_in={self.n_in}, n_hidden={self.n_hidden}, bidirectional={self.bidirectional})"
        if len(x.shape) != 3 or x.shape[2] != self.n_in:
            raise ValueError(f"{name} expects x of shape (B, T, {self.n_in}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        lengths = np.asarray(lengths)
        if lengths.shape != (B,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"{name}: lengths must be an integer array of shape (B,) = ({B},) for x "
                             f"of shape {tuple(x.shape)}, got {lengths.dtype} of shape {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"{name}: every length must be in 1..T = 1..{T} for x of shape "
                             f"{tuple(x.shape)}, got {lengths.tolist()}")
        state = (B, self.n_hidden * (1 + self.bidirectional))
        if h0 is not None and tuple(h0.shape) != state:
            raise ValueError(f"{name}: h0 must have shape {state}, got {tuple(h0.shape)}")
        return B, T, lengths


def _input_projection(cell, x):
    """x @ W_x + b_x for every step at once, (B, T, 3H): only h @ W_h has to stay inside the loop."""
    B, T, n_in = x.shape
    return (ops.reshape(x, shape=(B * T, n_in)) @ cell.W_x + cell.b_x).reshape(B, T, -1)


def _run_fused(cell, x, mask, h, reverse):
    """One direction as one fused.gru_sequence node; returns outputs (B, T, H) and the final state (B, H)."""
    outputs = gru_sequence(_input_projection(cell, x), h, cell.W_h, cell.b_h, mask=mask, reverse=reverse)
    if reverse:  # the backward direction ends at t = 0, a real token in every row
        return outputs, outputs[:, 0]
    lengths = mask.sum(axis=1)
    return outputs, outputs[np.arange(len(lengths)), lengths - 1]


def _run_cell(cell, x, mask, h, reverse):
    """Unroll one GRUCell over time; returns outputs (B, T, H) and the last carried state (B, H)."""
    B, T, n_in = x.shape
    x_proj = _input_projection(cell, x)
    outputs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        real = mask[:, t, None]  # (B, 1)
        h_new = cell.step(x_proj[:, t], h)
        h = ops.where(real, h_new, h)  # padded rows keep their state: no effect, no gradient
        outputs[t] = ops.where(real, h_new, 0.0)
    return ops.stack(outputs, axis=1), h
