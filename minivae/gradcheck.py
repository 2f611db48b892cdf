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
"""
import numpy as np

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
    arrays = _float64_arrays(inputs)
    rng = np.random.default_rng(seed)
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = f(*tensors)
    u = rng.standard_normal(out.shape)
    if out.requires_grad:
        out.backward(u)

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
        raise GradientCheckError("gradient check failed for "
                                 f"{getattr(f, '__name__', f)}:\n  " + "\n  ".join(report))
    return report


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
