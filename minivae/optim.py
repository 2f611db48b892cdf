"""Optimisers that update parameters in place: SGD, Adam, and global gradient-norm clipping.

A parameter is any object with `.data` (a float ndarray, updated in place) and `.grad` (an
array of the same shape, or None to leave that parameter alone this step) -- a minivae.Tensor.

    opt = Adam(params, lr=1e-3)
    for x in batches:
        opt.zero_grad()
        loss = ...; loss.backward()
        clip_grad_norm(params, max_norm=10.0)   # optional
        opt.step()

`state_dict()` returns plain arrays and Python scalars (save it with np.savez);
`load_state_dict` restores it so that training resumes bit for bit.

A step whose gradients hold NaN or inf would write NaN into the parameters. By default `step()`
refuses it (NonFiniteGradientError, naming the parameter) before changing anything; built with
nonfinite="skip", the optimiser instead leaves every parameter and moment as it was, warns, and
counts the step in `skipped_steps`.

These are the textbook forms; fast.FusedAdam is the same Adam in fused in-place passes.
"""
import math
import numbers
import warnings

import numpy as np

__all__ = ["SGD", "Adam", "clip_grad_norm", "NonFiniteGradientError"]
NONFINITE_MODES = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or inf: the step was refused and no parameter changed."""


def _check(name, value, ok, valid_range):
    good = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (good and ok(value)):
        raise ValueError(f"{name} must be {valid_range}, got {value!r}")


class _Optimizer:
    """What SGD and Adam share: the parameter list, zero_grad, weight decay and (de)serialisation.

    Subclasses name their hyperparameters in _hyper, their per-parameter arrays (lists of
    arrays shaped like the parameters) in _buffers, and arrays with one entry per parameter in
    _counters; state_dict / load_state_dict save and restore all three.
    """
    _hyper = ()
    _buffers = ()
    _counters = ()

    def __init__(self, params, nonfinite="raise"):
        if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
            raise TypeError(f"params must be a list of Tensors (e.g. model.parameters()), got {type(params).__name__}")
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: pass the list of parameters to optimise")
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        self.nonfinite, self.skipped_steps = nonfinite, 0
        for i, p in enumerate(self.params):
            data = getattr(p, "data", None)
            if isinstance(p, np.ndarray):
                raise TypeError(f"params[{i}] is a numpy array, not a Tensor: pass the model's Tensors "
                                "(model.parameters()), whose .grad the backward pass fills")
            if not (isinstance(data, np.ndarray) and data.dtype.kind == "f"):
                got = f"dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
                raise TypeError(f"params[{i}].data must be a float numpy array, got {got}")
            if getattr(p, "requires_grad", True) is False:
                raise ValueError(f"params[{i}] has requires_grad=False: it would never receive a "
                                 "gradient; make it with requires_grad=True or leave it out")
        first = {}
        for i, p in enumerate(self.params):
            if first.setdefault(id(p), i) != i:
                raise ValueError(f"params[{i}] is params[{first[id(p)]}] again: each parameter must be "
                                 "listed once (it would be updated twice per step)")

    def zero_grad(self):
        """Forget all gradients (p.grad = None), ready for the next backward pass."""
        for p in self.params:
            p.grad = None

    def _gradients_are_finite(self):
        """True if every gradient is finite. Otherwise raise (nonfinite="raise") or warn and count
        the step as skipped (nonfinite="skip"): either way no parameter has been changed yet."""
        for i, p in enumerate(self.params):
            if p.grad is not None and not np.all(np.isfinite(p.grad)):
                bad = int(np.sum(~np.isfinite(p.grad)))
                message = (f"params[{i}] (shape {p.data.shape}) has {bad} NaN or infinite gradient "
                           f"entries; no parameter was updated. Look for the loss term that overflowed, "
                           "or lower the learning rate / clip gradients")
                if self.nonfinite == "raise":
                    raise NonFiniteGradientError(message)
                self.skipped_steps += 1
                warnings.warn(f"{type(self).__name__}: step skipped: {message}", RuntimeWarning, stacklevel=3)
                return False
        return True

    def _gradient(self, i, p):
        """Return p.grad, plus weight_decay * p.data (the gradient of an L2 penalty) if set."""
        if p.grad.shape != p.data.shape:
            raise ValueError(f"params[{i}]: grad has shape {p.grad.shape} "
                             f"but data has shape {p.data.shape}")
        if not self.weight_decay:
            return p.grad
        return p.grad + self.weight_decay * p.data

    def state_dict(self):
        """Everything needed to resume exactly: a flat dict of numpy arrays and Python scalars."""
        state = {"optimizer": type(self).__name__, "n_params": len(self.params)}
        state.update({k: getattr(self, k) for k in self._hyper})
        state.update({k: getattr(self, k).copy() for k in self._counters})
        for name in self._buffers:
            for i, a in enumerate(getattr(self, name)):
                state[f"{name}.{i}"] = a.copy()
        return state

    def load_state_dict(self, state):
        """Restore a state_dict (or one read back with np.load) after checking it fits these params."""
        kind, n = str(state.get("optimizer")), int(state.get("n_params", -1))
        if kind != type(self).__name__:
            raise ValueError(f"state is for optimizer {kind!r}, not {type(self).__name__}")
        if n != len(self.params):
            raise ValueError(f"state has {n} parameters but this optimizer has {len(self.params)}; "
                             "build it with the same model and parameter order as the saved one")
        needed = [*self._hyper, *self._counters,
                  *(f"{name}.{i}" for name in self._buffers for i in range(n))]
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing[:5]}{' ...' if len(missing) > 5 else ''}: "
                             f"pass what {type(self).__name__}.state_dict() returned")
        for name in self._buffers:
            for i, p in enumerate(self.params):
                saved = np.shape(state[f"{name}.{i}"])
                if saved != p.data.shape:
                    raise ValueError(f"params[{i}]: saved {name} has shape {saved} but the parameter "
                                     f"has shape {p.data.shape}; build the model with the same sizes")
        for name in self._counters:
            if np.shape(state[name]) != (n,):
                raise ValueError(f"saved {name} has shape {np.shape(state[name])}, expected ({n},)")
        self._set_hyper(**{k: np.asarray(state[k]).item() for k in self._hyper})
        for name in self._counters:
            np.copyto(getattr(self, name), state[name])
        for name in self._buffers:
            for i, a in enumerate(getattr(self, name)):
                np.copyto(a, state[f"{name}.{i}"])


class SGD(_Optimizer):
    """Stochastic gradient descent with optional heavy-ball momentum and L2 weight decay.

        g = grad + weight_decay * p
        buf = momentum * buf + g            (buf starts at 0, so the first step uses g)
        p = p - lr * buf                    (with momentum = 0 this is p - lr * g)
    This is PyTorch's SGD with dampening = 0 and no Nesterov term.
    """
    _hyper = ("lr", "momentum", "weight_decay")
    _buffers = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nonfinite="raise"):
        super().__init__(params, nonfinite)
        self._set_hyper(lr, momentum, weight_decay)
        self.momentum_buffer = [np.zeros_like(p.data) for p in self.params]

    def _set_hyper(self, lr, momentum, weight_decay):
        _check("lr", lr, lambda v: v > 0, "a finite number > 0")
        _check("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        _check("weight_decay", weight_decay, lambda v: v >= 0, "a finite number >= 0")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    def step(self):
        """Update every parameter whose grad is not None."""
        if not self._gradients_are_finite():
            return
        for i, (p, buf) in enumerate(zip(self.params, self.momentum_buffer)):
            if p.grad is None:
                continue
            d = self._gradient(i, p)
            if self.momentum:
                buf[...] = self.momentum * buf + d
                d = buf
            p.data -= self.lr * d


class Adam(_Optimizer):
    """Adam: steps scaled per entry by bias-corrected running moments of the gradient.

    For each parameter, with g = grad + weight_decay * p (an L2 penalty, as in the paper; not
    AdamW) and t = the number of steps this parameter has taken, including this one:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)          v_hat = v / (1 - beta2**t)     (bias corrections)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)
    Each parameter counts its own t, so one left out for a while (grad None) still gets the
    right bias correction when it starts training. Moments have the parameter's dtype.

    Reference: Kingma & Ba 2015, arXiv:1412.6980, Algorithm 1.
    """
    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _buffers = ("m", "v")
    _counters = ("steps",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, nonfinite="raise"):
        super().__init__(params, nonfinite)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self._set_hyper(lr, betas[0], betas[1], eps, weight_decay)
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.steps = np.zeros(len(self.params), dtype=np.int64)

    def _set_hyper(self, lr, beta1, beta2, eps, weight_decay):
        _check("lr", lr, lambda v: v > 0, "a finite number > 0")
        _check("beta1", beta1, lambda v: 0 <= v < 1, "in [0, 1)")
        _check("beta2", beta2, lambda v: 0 <= v < 1, "in [0, 1)")
        _check("eps", eps, lambda v: v > 0, "a finite number > 0")
        _check("weight_decay", weight_decay, lambda v: v >= 0, "a finite number >= 0")
        self.lr, self.beta1, self.beta2 = float(lr), float(beta1), float(beta2)
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def step(self):
        """Update every parameter whose grad is not None."""
        if not self._gradients_are_finite():
            return
        b1, b2 = self.beta1, self.beta2
        for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
            if p.grad is None:
                continue
            g = self._gradient(i, p)
            # BEGIN SOLUTION optim: count self.steps[i]; update m and v in place, then p.data
            self.steps[i] += 1
            t = int(self.steps[i])
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1 ** t)
            v_hat = v / (1 - b2 ** t)
            p.data -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            # END SOLUTION


def clip_grad_norm(params, max_norm):
    """Scale all gradients in place so their global L2 norm is at most max_norm; return the norm before.

    norm = sqrt(sum over parameters of sum(grad**2)), skipping grads that are None. If norm >
    max_norm every grad is multiplied by max_norm / norm. A NaN or infinite norm (a gradient
    entry that is NaN or inf) is returned and nothing is scaled, so the caller can notice and
    skip the step. Finite float32 gradients whose squares overflow float32 (a norm above ~1e19)
    still get their true norm: such an array's sum of squares is redone in float64.
    """
    _check("max_norm", max_norm, lambda v: v > 0, "a finite number > 0")
    grads = [p.grad for p in params if p.grad is not None]
    norm = math.sqrt(sum(_sum_of_squares(g) for g in grads))
    if math.isfinite(norm) and norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    return norm


def _sum_of_squares(g):
    """sum(g**2) as a Python float: in g's dtype (fast), or in float64 if that overflows."""
    total = float(np.vdot(g, g))
    if math.isinf(total) and np.isfinite(g).all():  # float32 overflow, not an inf in g
        g64 = g.astype(np.float64).ravel()
        total = float(np.dot(g64, g64))
    return total
