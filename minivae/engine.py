"""The autodiff engine: Tensor, the primitive registry, and the reverse-mode backward pass.

A Tensor wraps a NumPy array. Applying a *primitive* (an op with a hand-written VJP, see ops.py)
to tensors that require gradients records a node in a graph: the op, its parent tensors and its
static parameters (axis, shape, index ...). `loss.backward()` walks that graph once, from the loss
back to the leaves, calling each node's VJP (vector-Jacobian product):

    parent.grad += VJP(g, ans, *parent_values)      where g = d loss / d ans

Three things happen centrally here so that no VJP has to care about them:
  * broadcasting: a VJP returns a gradient shaped like the op's *output*; `unbroadcast` sums it
    back down to the parent's shape (numpy broadcasting is the only way shapes grow),
  * fan-out: a tensor used by several ops receives the sum of their gradients,
  * ordering: nodes are visited in reverse topological order, found iteratively so that graphs
    of any depth work (a recursive sort hits Python's recursion limit near 1,000 nodes).

Tensor's arithmetic operators (+, *, @, ...) and NumPy-style methods (.sum(), .T, ...) are
attached at the bottom of ops.py, where the ops they call are defined: this module imports
nothing from the package.

dtypes: float32 stays float32 (the fast training path) and float64 stays float64 (the checking
path). Python numbers, ints and bools adopt the dtype of the tensors they meet; mixing a float32
and a float64 array in one op is an error rather than a silent upcast.
"""
import contextlib
import inspect

import numpy as np

PRIMITIVES = {}  # name -> Primitive; tests enumerate this to prove every op is checked
_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block, ops record no graph (for evaluation, sampling and optimiser steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def _as_array(value, dtype=None):
    """Convert a constant to an ndarray: floats keep their dtype, everything else gets `dtype`."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and not (isinstance(value, (float, int)) and dtype is not None):
        return arr  # a float array (or a float with no tensor to follow) keeps its own dtype
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a Tensor from {type(value).__name__} of dtype {arr.dtype}")
    return arr.astype(dtype or np.float64)


class Tensor:
    """An ndarray (`.data`) that can record the ops applied to it and receive `.grad`."""

    __slots__ = ("data", "grad", "requires_grad", "_op", "_parents", "_params")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__ instead of numpy

    def __init__(self, data, requires_grad=False):
        self.data = data.data if isinstance(data, Tensor) else _as_array(data)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._op, self._parents, self._params = None, (), None

    # ----- the array it wraps -----
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, dtype={self.dtype}{flag})"

    def item(self):
        return self.data.item()

    def numpy(self):
        return self.data

    def detach(self):
        """A new leaf sharing the same data, cut off from the graph (gradients stop here)."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ----- the backward pass -----
    def backward(self, grad=None):
        """Accumulate d self / d leaf into `.grad` of every leaf that requires a gradient.

        `grad` is the seed (the cotangent of self); it may be omitted only for a single-element
        output, where it defaults to 1. Gradients accumulate into existing `.grad` arrays, as in
        PyTorch: call `zero_grad()` (or the optimiser's) between steps.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad: no input "
                               "of the computation had requires_grad=True (or it ran under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() on a non-scalar output of shape {self.shape} needs an "
                                 "explicit seed gradient of that shape: call y.backward(g)")
            grad = np.ones_like(self.data)
        grad = _as_array(grad, self.dtype)
        if grad.shape != self.shape or grad.dtype != self.dtype:
            raise ValueError(f"backward(): seed gradient has shape {grad.shape} and dtype {grad.dtype}"
                             f", the output has shape {self.shape} and dtype {self.dtype}")

        # BEGIN SOLUTION engine: reversed(_topological_order(self)); each g into _op.vjp, or a leaf's .grad
        grads = {id(self): grad}  # pending gradients of nodes not yet visited
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._op is None:  # a leaf: g may be the seed or a view, so .grad gets its own copy
                if node.grad is None:
                    node.grad = g.copy()
                else:
                    node.grad += g
                continue
            needs = tuple(p.requires_grad for p in node._parents)
            parent_values = [p.data for p in node._parents]
            parent_grads = node._op.vjp(g, node.data, parent_values, node._params, needs)
            for parent, pg, need in zip(node._parents, parent_grads, needs):
                if not need or pg is None:
                    continue
                pg, key = unbroadcast(pg, parent.data, node._op.name), id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg  # fan-out: gradients add
        # END SOLUTION

    # Comparisons give plain boolean arrays: they have no gradient and are used as masks.
    def __lt__(self, other): return self.data < _data(other)
    def __le__(self, other): return self.data <= _data(other)
    def __gt__(self, other): return self.data > _data(other)
    def __ge__(self, other): return self.data >= _data(other)
    def __eq__(self, other): return self.data == _data(other)
    def __ne__(self, other): return self.data != _data(other)
    __hash__ = object.__hash__


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _topological_order(root):
    """Nodes reachable from `root` (through tensors that require grad), parents before children.

    Iterative depth-first search with an explicit stack: each node is pushed once to be expanded
    and once more to be emitted after all of its parents have been emitted.
    """
    # BEGIN SOLUTION engine: a stack of (node, expanded) pairs; emit a node once its parents are out
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
    return order
    # END SOLUTION


def unbroadcast(g, parent_value, op_name="?"):
    """Sum a gradient shaped like an op's output down to the shape of the parent it belongs to.

    Broadcasting prepends axes and stretches size-1 axes; the adjoint of copying a value to many
    places is summing the gradients from those places.
    """
    shape = parent_value.shape
    if g.shape != shape:
        # BEGIN SOLUTION engine: sum over the axes added in front, then over the parent's size-1 axes
        extra = g.ndim - len(shape)
        if extra > 0:
            g = g.sum(axis=tuple(range(extra)))
        stretched = tuple(i for i, n in enumerate(shape) if n == 1 and i < g.ndim and g.shape[i] != 1)
        if stretched:
            g = g.sum(axis=stretched, keepdims=True)
        # END SOLUTION
        if g.shape != shape:
            raise ValueError(f"op '{op_name}': its VJP returned a gradient of shape {g.shape} that "
                             f"cannot be reduced to the input's shape {shape}")
    if g.dtype != parent_value.dtype:
        raise TypeError(f"op '{op_name}': its VJP returned a {g.dtype} gradient for a "
                        f"{parent_value.dtype} input (an upcast inside the VJP)")
    return g


class Primitive:
    """An op with a forward NumPy function and a VJP; calling it on tensors records a graph node.

    The forward's positional parameters are the op's inputs (tensors, arrays or numbers: all may
    receive gradients); its keyword-only parameters, after a `*`, are static parameters such as
    `axis`, passed by keyword to both the forward function and the VJP. Define the VJP with
    `defvjp` (one function per input) or `defvjp_all` (one function returning every input's
    gradient, for ops that share work). A VJP may return g itself or a view of an argument: the
    engine never writes into what a VJP returns, and a leaf's .grad is always a copy of its own.

    A primitive made with `primitive(saves=True)` has a forward that returns (ans, saved), saved a
    dict of arrays its VJP needs (a softmax, say): the node keeps them, and the VJP receives them
    as keyword arguments beside the static parameters.
    """

    def __init__(self, forward, saves=False):
        self.forward, self.saves = forward, saves
        self.name = forward.__name__.lstrip("_")  # `_where` is registered as "where"
        self.__doc__ = forward.__doc__
        args = inspect.signature(forward).parameters.values()
        self.n_inputs = None if any(a.kind == a.VAR_POSITIONAL for a in args) else len(
            [a for a in args if a.kind == a.POSITIONAL_OR_KEYWORD])
        self.defaults = {a.name: a.default for a in args if a.kind == a.KEYWORD_ONLY}
        self.required = [k for k, v in self.defaults.items() if v is inspect.Parameter.empty]
        self._vjps = self._vjp_all = None
        if self.name in PRIMITIVES:
            raise ValueError(f"a primitive named '{self.name}' is already registered")
        PRIMITIVES[self.name] = self

    def defvjp(self, *vjps):
        """Register one VJP per input: vjp_i(g, ans, *inputs, **params) -> d loss / d input_i."""
        self._vjps = vjps
        return self

    def defvjp_all(self, vjp):
        """Register one VJP for all inputs: vjp(g, ans, *inputs, **params) -> tuple of gradients."""
        self._vjp_all = vjp
        return self

    def vjp(self, g, ans, inputs, params, needs):
        """Gradients for the inputs flagged in `needs` (others may be None)."""
        if self._vjp_all is None and self._vjps is None:
            raise NotImplementedError(f"primitive '{self.name}' has no VJP: call defvjp on it")
        try:
            if self._vjp_all is not None:
                return self._vjp_all(g, ans, *inputs, **params)
            return [f(g, ans, *inputs, **params) if need and f is not None else None
                    for f, need in zip(self._vjps, needs)]
        except (ValueError, IndexError) as err:  # a VJP's shapes that do not fit: say whose
            shapes = ", ".join(str(np.shape(x)) for x in inputs)
            raise type(err)(f"op '{self.name}': its VJP failed for inputs of shapes {shapes} and "
                            f"g of shape {np.shape(g)}: {err}") from err

    def __call__(self, *args, **params):
        """Apply the op: bind the static parameters, unwrap the inputs, run the forward, record the node."""
        params = self.bind(args, params)
        inputs = _inputs_of(args, self.name)
        ans, params = self.run([t.data for t in inputs], params)
        out = Tensor(ans)
        if _grad_enabled and any(t.requires_grad for t in inputs):  # record only when a gradient will be asked for
            out.requires_grad = True
            out._op, out._parents, out._params = self, inputs, params
        return out

    def bind(self, args, params):
        """The static parameters with their defaults filled in, after checking the call's arguments."""
        if self.n_inputs is not None and len(args) != self.n_inputs:  # e.g. ops.sum(x, 0)
            by_keyword = ", ".join(f"{k}=..." for k in self.defaults)
            raise TypeError(f"op '{self.name}' takes {self.n_inputs} input(s), got {len(args)} "
                            f"positional arguments; pass its parameters by keyword ({by_keyword})")
        if not params.keys() <= self.defaults.keys():
            unknown = sorted(params.keys() - self.defaults.keys())
            raise TypeError(f"op '{self.name}' got unknown parameters {unknown}; it takes {list(self.defaults)}")
        missing = [k for k in self.required if k not in params]
        if missing:
            raise TypeError(f"op '{self.name}' needs the parameter(s) {missing}")
        return {**self.defaults, **params}

    def run(self, values, params):
        """(ans, the parameters its VJP receives): the forward on arrays, its errors naming the op."""
        try:
            ans = self.forward(*values, **params)
        except (ValueError, IndexError) as err:
            shapes = ", ".join(str(np.shape(v)) for v in values)
            raise type(err)(f"op '{self.name}' on inputs of shapes {shapes}: {err}") from err
        if self.saves:  # the forward also returned the arrays its VJP needs
            ans, saved = ans
            params = {**params, **saved}
        return ans, params

    def __repr__(self):
        return f"<primitive {self.name}>"


def _inputs_of(args, op_name):
    """Wrap an op's arguments as tensors; constants adopt the float dtype of the tensor inputs."""
    dtype = next((a.data.dtype for a in args if isinstance(a, Tensor) and a.data.dtype.kind == "f"), None)
    try:
        inputs = [a if isinstance(a, Tensor) else Tensor(_as_array(a, dtype)) for a in args]
    except TypeError as err:
        raise TypeError(f"op '{op_name}': {err}; its inputs must be Tensors, arrays or numbers") from None
    float_dtypes = {t.data.dtype for t in inputs if t.data.dtype.kind == "f"}
    if len(float_dtypes) > 1:
        desc = ", ".join(f"{t.data.dtype}{t.data.shape}" for t in inputs)
        raise TypeError(f"op '{op_name}' mixes float dtypes ({desc}); cast one side explicitly "
                        "with .astype() — minivae never upcasts silently")
    return tuple(inputs)


def primitive(forward=None, *, saves=False):
    """Decorator: register a NumPy function as a primitive op (then attach its VJP).

    `@primitive(saves=True)` registers a forward that returns (ans, {name: array for its VJP}).
    """
    if forward is None:
        return lambda f: Primitive(f, saves)
    return Primitive(forward, saves)
