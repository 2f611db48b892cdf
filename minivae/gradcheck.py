"""Gradient checks: compare the engine's reverse-mode gradients with finite differences.

`check_grads` is the one to use (tests use it for every op, layer and loss). It follows HIPS
autograd's test_util: pick a random direction v for each input and a random cotangent u for the
output; then two independent numbers must agree,

    <u, J v>   by a central difference:  (u . f(x + eps*v) - u . f(x - eps*v)) / (2*eps)
    <v, J^T u> by reverse mode:           v . grad of (u . f(x)) with respect to x

One scalar per input checks the whole Jacobian in every direction at once (a wrong entry
would have to be cancelled exactly by the random draws to slip through).

`numerical_grad` computes the full gradient one coordinate at a time: slow, but the clearest
thing to print next to `x.grad` while you debug a new op.

`find_wrong_vjp` is the debugger: it checks each node of a recorded graph on its own -- the op's
VJP at that node's input values against central differences of its forward function
(`check_vjp`) -- and reports the first wrong node in forward order: the op, its inputs' shapes
and dtypes, the largest wrong entries and the node's path to the output. When check_grads fails
its message starts with that report; when every node is right, the engine is at fault.
"""
import inspect
import textwrap
from dataclasses import dataclass

import numpy as np

from . import engine
from . import ops  # noqa: F401  (the functions checked use Tensor's operators, defined there)
from .engine import Tensor


class GradientCheckError(AssertionError):
    """Raised when reverse-mode and finite-difference derivatives disagree."""


def _float64_arrays(inputs):
    arrays = []
    for i, x in enumerate(inputs):
        x = np.asarray(x.data if isinstance(x, Tensor) else x)
        if x.dtype != np.float64:
            raise TypeError(
                f"check_grads needs float64 inputs, but input {i} is {x.dtype}. float32 keeps ~7 "
                "significant digits, so a central difference with eps=1e-6 would be mostly rounding "
                "error. Check gradients in float64 (x.astype(np.float64)), train in float32.")
        arrays.append(x)
    return arrays


def _value(f, arrays):
    """f evaluated on fresh constant tensors, as a float64 ndarray."""
    out = f(*[Tensor(a) for a in arrays])
    return np.asarray(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def check_grads(f, *inputs, eps=1e-6, rtol=1e-6, atol=1e-9, seed=0):
    """Check the gradients of f(*inputs) with respect to every input, in random directions.

    f takes Tensors and returns a Tensor (of any shape); inputs are float64 arrays. Raises
    GradientCheckError with a per-input report when reverse mode and central differences
    disagree by more than atol + rtol * max(|reverse|, |numeric|). Returns the report lines.
    Keep f deterministic: pass noise (eps for sampling, dropout masks) in from outside.
    """
    if not callable(f) or not inputs:
        raise TypeError(f"check_grads(f, *inputs) needs a function and at least one input array, got "
                        f"f={type(f).__name__} and {len(inputs)} inputs")
    arrays = _float64_arrays(inputs)
    rng = np.random.default_rng(seed)
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = f(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"check_grads: f must return a Tensor built with minivae ops, got {type(out).__name__} "
                        "(did f convert to NumPy or return a constant?)")
    u = rng.standard_normal(out.shape)
    name = getattr(f, "__name__", f)
    if out.requires_grad:
        try:
            out.backward(u)
        except (ValueError, IndexError) as err:  # e.g. a VJP's shapes do not fit
            wrong = _locate(f, arrays)
            if wrong is None:
                raise
            raise GradientCheckError(f"backward() failed for {name}: {err}\n{wrong}") from err

    report, failed = [], False
    for i, (a, t) in enumerate(zip(arrays, tensors)):
        v = rng.standard_normal(a.shape)
        reverse = float(np.vdot(v, t.grad)) if t.grad is not None else 0.0
        plus = _value(f, arrays[:i] + [a + eps * v] + arrays[i + 1:])
        minus = _value(f, arrays[:i] + [a - eps * v] + arrays[i + 1:])
        numeric = float(np.vdot(u, plus - minus)) / (2 * eps)
        ok = abs(reverse - numeric) <= atol + rtol * max(abs(reverse), abs(numeric))
        failed |= not ok
        report.append(f"input {i} shape {a.shape}: reverse mode {reverse:.10g}, "
                      f"finite difference {numeric:.10g} -> {'ok' if ok else 'MISMATCH'}")
    if failed:
        wrong = _locate(f, arrays)
        raise GradientCheckError(f"gradient check failed for {name}: {wrong or ENGINE_AT_FAULT}\n  "
                                 + "\n  ".join(report))
    return report


ENGINE_AT_FAULT = ("every op's VJP agrees with finite differences at its own inputs, and so does "
                   "engine.unbroadcast wherever an input was broadcast: the mistake is in "
                   "Tensor.backward or engine._topological_order (the order nodes are visited, or "
                   "how gradients are added up); `pytest -m engine` names it")


def _locate(f, arrays):
    """find_wrong_vjp for check_grads' report; None when the engine cannot walk the graph yet."""
    try:
        return find_wrong_vjp(f, *arrays)
    except NotImplementedError:
        return None


def numerical_grad(f, x, eps=1e-6):
    """Full gradient of a scalar-valued f at x by central differences, one coordinate at a time.

    Costs 2 * x.size evaluations of f: use it on small inputs, next to `x.grad`, to see which
    entries of a hand-written VJP are wrong.
    """
    (x,) = _float64_arrays([x])
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        plus, minus = _value(f, [x + step]), _value(f, [x - step])
        if plus.size != 1:
            raise ValueError(f"numerical_grad needs a scalar-valued f, got output shape {plus.shape}")
        grad[idx] = (plus.item() - minus.item()) / (2 * eps)
    return grad


# ----------------------------------------------------------------------------- the debugger
# check_grads says THAT a gradient is wrong; the functions below say WHERE. Each node of the
# recorded graph is checked on its own: its op's VJP at that node's own input values, against
# central differences of its forward function. No backward pass is involved, so a wrong op is
# told apart from a wrong engine (Tensor.backward's order and sums, or engine.unbroadcast).

def _input_names(op, n):
    """The forward function's names for its n inputs (x0, x1, ... for ops taking *xs)."""
    names = [a.name for a in inspect.signature(op.forward).parameters.values()
             if a.kind == a.POSITIONAL_OR_KEYWORD]
    return names if len(names) == n else [f"x{i}" for i in range(n)]


def _directional(g, v):
    """<v, gradient> for a VJP result g that may still be shaped like the op's output: the
    broadcast copy of v pairs with g exactly as v pairs with the reduced gradient."""
    return float(np.vdot(np.broadcast_to(v, g.shape), g))


def check_vjp(op, values, params=None, needs=None, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0):
    """Check one primitive's VJP at these input values; return a list of problems ([] if right).

    Each problem is a dict: kind ("vjp", "unbroadcast", "shape", "dtype", "error"), input index
    and a `message`. The check runs in float64 (values are converted); a separate call in the
    inputs' own dtypes catches a VJP that upcasts.
    """
    params = {k: v for k, v in (params or {}).items() if k in op.defaults}  # static ones: a node's may hold saved arrays
    needs = list(needs) if needs is not None else [np.asarray(v).dtype.kind == "f" for v in values]
    rng = np.random.default_rng(seed)
    x64 = [np.asarray(v, dtype=np.float64) for v in values]
    p64 = {k: (np.float64 if k == "dtype" else v) for k, v in params.items()}
    f = lambda *xs: np.asarray(op.run(xs, p64)[0], dtype=np.float64)  # noqa: E731
    ans, vjp_p64 = op.run(x64, p64)  # the VJP's parameters: p64 and what the forward saved for it
    ans = np.asarray(ans, dtype=np.float64)
    u = rng.standard_normal(ans.shape)
    names = _input_names(op, len(values))
    try:
        grads = op.vjp(u, ans, x64, vjp_p64, needs)
        own = grads  # ...and once more in the inputs' own dtypes, to catch an upcast
        if any(np.asarray(v).dtype != np.float64 for v in values):
            ans_own, params_own = op.run(list(values), params)
            ans_own = np.asarray(ans_own)
            own = op.vjp(u.astype(ans_own.dtype), ans_own, list(values), params_own, needs)
    except NotImplementedError:
        raise
    except Exception as err:
        return [{"kind": "error", "input": None, "message": f"its VJP raised {type(err).__name__}: {err}"}]
    problems = []
    for i, (x, g, g_own, need) in enumerate(zip(x64, grads, own, needs)):
        if not need:
            continue
        if g is None:
            problems.append({"kind": "shape", "input": i, "message": f"its VJP returned None for "
                             f"input {names[i]}, which needs a gradient"})
            continue
        g = np.asarray(g)
        v = rng.standard_normal(x.shape)
        try:
            reverse = _directional(g, v)
        except ValueError:
            problems.append({"kind": "shape", "input": i, "message": f"its VJP returned a gradient of "
                             f"shape {g.shape} for input {names[i]} of shape {x.shape} (the output "
                             f"has shape {ans.shape}; the gradient must have the input's shape, or "
                             "the output's shape when the input was broadcast)"})
            continue
        xs = lambda step: x64[:i] + [x + step] + x64[i + 1:]  # noqa: E731
        numeric = float(np.vdot(u, f(*xs(eps * v)) - f(*xs(-eps * v)))) / (2 * eps)
        if abs(reverse - numeric) > atol + rtol * max(abs(reverse), abs(numeric)):
            problems.append({"kind": "vjp", "input": i, "reverse": reverse, "numeric": numeric,
                             "entries": _wrong_entries(f, x64, i, u, g, eps), "message":
                             f"d/d{names[i]} in a random direction: reverse mode {reverse:.6g}, "
                             f"finite differences {numeric:.6g}"})
            continue
        dtype = np.asarray(values[i]).dtype
        if g_own is not None and np.asarray(g_own).dtype != dtype:
            problems.append({"kind": "dtype", "input": i, "message": f"its VJP returns a "
                             f"{np.asarray(g_own).dtype} gradient for the {dtype} input {names[i]}"})
        if g.shape != x.shape:  # the VJP is right; is the engine's reduction to x's shape?
            try:
                reduced = float(np.vdot(v, engine.unbroadcast(g, x, op.name)))
            except NotImplementedError:  # not written yet: nothing to compare with
                continue
            except Exception as err:
                reduced = f"{type(err).__name__}: {err}"
            if isinstance(reduced, str) or abs(reduced - reverse) > atol + rtol * abs(reverse):
                got = (f"raises {textwrap.shorten(reduced, 100, placeholder=' ...')}" if isinstance(reduced, str)
                       else f"reduces to {reduced:.6g} in a random direction, the sum over the broadcast "
                       f"axes to {reverse:.6g}")
                problems.append({"kind": "unbroadcast", "input": i, "message": "engine.unbroadcast is "
                                 f"wrong here, not the op: for the VJP's gradient of shape {g.shape} and "
                                 f"input {names[i]} of shape {x.shape} it {got}"})
    return problems


def _wrong_entries(f, x64, i, u, g, eps, limit=1000, top=5):
    """The entries of d(u . f)/d x_i where reverse mode and central differences differ most:
    [(index, engine, numerical)]. Large inputs are sampled (`limit` entries)."""
    x = x64[i]
    flat = np.arange(x.size) if x.size <= limit else np.random.default_rng(1).choice(x.size, limit, replace=False)
    rows = []
    for j in flat:
        e = np.zeros(x.size)
        e[j] = 1.0
        e = e.reshape(x.shape)
        numeric = float(np.vdot(u, f(*x64[:i], x + eps * e, *x64[i + 1:])
                                - f(*x64[:i], x - eps * e, *x64[i + 1:]))) / (2 * eps)
        rows.append((np.unravel_index(j, x.shape), _directional(g, e), numeric))
    rows.sort(key=lambda r: -abs(r[1] - r[2]))
    return {"rows": rows[:top], "sampled": len(flat) < x.size, "size": x.size}


@dataclass
class WrongNode:
    """The first node of a graph (in forward order) whose op or whose reduction is wrong."""
    node: Tensor
    position: int          # in forward (topological) order, 1-based
    n_nodes: int
    path: list             # op names from this node down to the output
    problems: list

    def __str__(self):
        op, parents = self.node._op, self.node._parents
        names = _input_names(op, len(parents))
        kinds = {p["kind"] for p in self.problems}
        what = (f"engine.unbroadcast is wrong, not op '{op.name}'" if kinds == {"unbroadcast"} else
                f"op '{op.name}': its VJP disagrees with finite differences" if kinds == {"vjp"} else
                f"op '{op.name}': its VJP is broken")
        shown = {k: v for k, v in self.node._params.items() if v is not None and k != "dtype"}
        lines = [f"{what} (node {self.position} of {self.n_nodes} in forward order; path to the "
                 f"output: {' -> '.join(self.path)})",
                 "  inputs: " + ", ".join(f"{n} {p.dtype} {p.shape}" for n, p in zip(names, parents))
                 + (f"; parameters {shown}" if shown else "") + f"; output {self.node.dtype} {self.node.shape}"]
        for p in self.problems:
            lines.append(f"  {p['message']}")
            if p["kind"] == "vjp":
                e = p["entries"]
                lines.append(f"  largest wrong entries of d(u . {op.name})/d{names[p['input']]}, "
                             f"engine vs numerical{' (sampled)' if e['sampled'] else ''}:")
                lines += [f"    {list(map(int, idx))}: {a:.6g} vs {b:.6g}" for idx, a, b in e["rows"]]
        return "\n".join(lines)


def _path_to_root(node, order):
    """Op names from `node` to the last node of `order`, by the shortest chain of consumers."""
    children = {}
    for n in order:
        for p in n._parents:
            children.setdefault(id(p), []).append(n)
    path, seen = [node], {id(node)}
    while path[-1] is not order[-1] and children.get(id(path[-1])):
        nxt = [c for c in children[id(path[-1])] if id(c) not in seen] or [order[-1]]
        path.append(nxt[-1])
        seen.add(id(nxt[-1]))
    names = [n._op.name for n in path]
    return names if len(names) <= 9 else names[:4] + ["..."] + names[-4:]


def find_wrong_vjp(target, *inputs, seed=0, **tolerances):
    """The first node whose VJP (or the engine's unbroadcast there) disagrees with finite
    differences at that node's own inputs, as a WrongNode (print it), or None if all agree.

    target: a Tensor (e.g. a loss, before or after backward()), or a function f called on
    `inputs` (float64 arrays) as check_grads would. Uses the engine's _topological_order.
    """
    if not isinstance(target, Tensor):
        target = target(*[Tensor(a, requires_grad=True) for a in _float64_arrays(inputs)])
    if not target.requires_grad:
        return None
    order = engine._topological_order(target)
    for k, node in enumerate(order):
        if node._op is None:
            continue
        needs = [p.requires_grad for p in node._parents]
        problems = check_vjp(node._op, [p.data for p in node._parents], node._params, needs,
                             seed=seed + k, **tolerances)
        if problems:
            return WrongNode(node, k + 1, len(order), _path_to_root(node, order), problems)
    return None


def engine_agrees(root, eps=1e-6, rtol=1e-5, atol=1e-8, seed=0):
    """True if the engine's gradients of `root` with respect to its leaves agree with central
    differences of the recorded graph, replayed node by node with each op's forward; None if a
    leaf is not float64 (too few digits for a difference quotient). With find_wrong_vjp finding
    no wrong node, False means the engine is at fault."""
    order = engine._topological_order(root)
    leaves = [n for n in order if n._op is None]
    if not leaves or any(n.dtype != np.float64 for n in leaves):
        return None
    rng = np.random.default_rng(seed)
    v = {id(n): rng.standard_normal(n.shape) for n in leaves}
    u = rng.standard_normal(root.shape)

    def replay(step):
        values = {id(n): n.data + step * v[id(n)] for n in leaves}
        for n in order:
            if n._op is not None:
                values[id(n)] = np.asarray(n._op.forward(*[values.get(id(p), p.data) for p in n._parents],
                                                         **n._params), dtype=np.float64)
        return values[id(root)]

    saved = [n.grad for n in leaves]
    try:
        for n in leaves:
            n.grad = None
        root.backward(u)
        reverse = sum(float(np.vdot(v[id(n)], n.grad)) for n in leaves if n.grad is not None)
    finally:
        for n, g in zip(leaves, saved):
            n.grad = g
    numeric = float(np.vdot(u, replay(eps) - replay(-eps))) / (2 * eps)
    return abs(reverse - numeric) <= atol + rtol * max(abs(reverse), abs(numeric))
