"""KL-weight (beta) annealing schedules: beta as a pure function of the global step t.

Every schedule is a plain function `f(t, **hyperparameters) -> float` with t = 0, 1, 2, ...
(the number of optimiser steps already taken), so the whole training state needed to
recompute beta is the step counter. All of them are safe for any t >= 0, including steps past
the planned end of training, and raise ValueError on a negative t or a bad hyperparameter.

    beta = make_schedule("cyclical", total_steps=10_000, n_cycles=4)
    objective = rec + beta(step) * kl

Reading order: constant, linear, linear_warmup, logistic, exponential, cyclical,
cyclical_zero_linear, then make_schedule (what the scripts' --beta-schedule flag calls).
At the end, the learning-rate schedules: functions of the fraction of the run done, because a run
with a time budget does not know its number of steps in advance.
"""
import inspect
import math
import numbers

__all__ = ["constant", "linear_warmup", "linear", "logistic", "exponential", "cyclical",
           "cyclical_zero_linear", "SCHEDULES", "make_schedule", "from_flags", "constant_lr", "cosine_lr",
           "burda_lr", "LR_SCHEDULES", "learning_rate"]


def _check_step(t):
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"t (the global step) must be an int, got {type(t).__name__} {t!r}")
    if t < 0:
        raise ValueError(f"t (the global step) must be >= 0, got {t}")


def _check(name, value, ok, valid_range):
    """Raise ValueError naming the hyperparameter unless value is a finite number and ok(value)."""
    good = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (good and ok(value)):
        raise ValueError(f"{name} must be {valid_range}, got {value!r}")


def _check_count(name, value, upper=None):
    good = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    if not good or (upper is not None and value > upper):
        valid = "an int >= 1" + ("" if upper is None else f" and <= {upper}")
        raise ValueError(f"{name} must be {valid}, got {value!r}")


def constant(t, value=1.0):
    """Constant KL weight: beta = value (value = 1 is the plain ELBO)."""
    _check_step(t)
    _check("value", value, lambda v: v >= 0, "a finite number >= 0")
    return float(value)


def linear(t, x0):
    """Linear annealing from 0: beta = min(1, t / x0), reaching 1 at step x0.

    Reference: the 'linear' option of kl_anneal_function in timbmg/Sentence-VAE, a
    re-implementation of Bowman et al. 2016, arXiv:1511.06349.
    """
    _check_step(t)
    _check("x0", x0, lambda v: v > 0, "a finite number > 0 (steps until beta reaches 1)")
    return min(1.0, t / x0)


def linear_warmup(t, warmup_steps, start=0.0):
    """Linear KL warm-up: beta = min(1, start + t * (1 - start) / warmup_steps).

    warmup_steps = W * batches_per_epoch for a warm-up of W epochs. The reference code starts
    from kl_weight = start and adds the increment *before* the first batch, so its batch number
    n (counted from 1) uses beta(t=n): pass t = steps already taken + 1 to reproduce it exactly.
    beta(0) = start.

    Reference: He et al. 2019, arXiv:1901.05534 (lagging inference networks) and Li et al.
    2019, arXiv:1909.00868 (pretraining + free bits); both codes use start = 0.1 or 0.
    """
    _check_step(t)
    _check("warmup_steps", warmup_steps, lambda v: v > 0, "a finite number > 0")
    _check("start", start, lambda v: 0 <= v <= 1, "in [0, 1]")
    return min(1.0, start + t * (1.0 - start) / warmup_steps)


def logistic(t, k=0.0025, x0=2500):
    """Logistic annealing: beta = 1 / (1 + exp(-k * (t - x0))), equal to 0.5 at step x0.

    Written so exp never overflows: for t < x0 it uses the equal form e / (1 + e) with
    e = exp(k * (t - x0)) <= 1. Check values: beta(0) = 0.0019267, beta(2500) = 0.5,
    beta(5000) = 0.9980733.

    Reference: Bowman et al. 2016, arXiv:1511.06349, Sec. 3.1; constants from
    timbmg/Sentence-VAE (k = 0.0025, x0 = 2500).
    """
    _check_step(t)
    _check("k", k, lambda v: v > 0, "a finite number > 0 (steepness)")
    _check("x0", x0, lambda v: True, "a finite number (midpoint step)")
    a = k * (t - x0)
    if a >= 0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


def exponential(t, rate):
    """Exponential approach to 1: beta = 1 - exp(-rate * t), so beta = 1 - 1/e at t = 1/rate.

    Published 'exponential' KL schedules differ in form; this is the one used here. It starts
    at 0, rises fastest at first, and gets within 1% of 1 after about 4.6 / rate steps.
    """
    _check_step(t)
    _check("rate", rate, lambda v: v > 0, "a finite number > 0 (per step)")
    return 1.0 - math.exp(-rate * t)


def _cycle_position(t, total_steps, n_cycles):
    """Step index inside its cycle, for t < total_steps.

    Cycle c starts at step floor(c * total_steps / n_cycles), as in the reference code's
    int(i + c * period); integer arithmetic avoids its float rounding of c * period.
    """
    c = ((t + 1) * n_cycles - 1) // total_steps    # last cycle whose start is <= t
    return t - (c * total_steps) // n_cycles


_SHAPES = {
    "linear": lambda v: v,
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-(12.0 * v - 6.0))),
    "cosine": lambda v: 0.5 - 0.5 * math.cos(math.pi * v),
}


def cyclical(t, total_steps, n_cycles=4, ratio=0.5, shape="linear", start=0.0, stop=1.0):
    """Cyclical annealing: n_cycles ramps of beta from start to stop, each followed by a plateau.

    period = total_steps / n_cycles. At position i in its cycle, v = i / (ratio * period) and
        beta = start + (stop - start) * shape(v)   while v <= 1,  else beta = stop,
    with shape(v) = v ('linear'), 1 / (1 + exp(-(12v - 6))) ('sigmoid': 0.0024726 at v = 0 and
    0.9975274 at v = 1, then the plateau at 1) or 0.5 - 0.5 * cos(pi * v) ('cosine').
    This is the reference frange_cycle_* code in closed form (the ramp there adds
    step = (stop - start) / (period * ratio) per step and keeps the value where v reaches stop),
    so total_steps=40, n_cycles=4, ratio=0.5 gives [0, .2, .4, .6, .8, 1, 1, 1, 1, 1] x 4.
    The sigmoid and cosine shapes are scaled to [start, stop]; the reference applies them to v
    in [start, stop] directly, which is the same for the usual start=0, stop=1.
    For t >= total_steps beta holds at stop (the reference indexes past its array there), so
    training that runs longer than planned simply continues with the full KL.

    Reference: Fu et al. 2019, arXiv:1903.10145 (NAACL), and the authors' frange_cycle_* code.
    """
    _check_step(t)
    _check_count("total_steps", total_steps)
    _check_count("n_cycles", n_cycles, upper=total_steps)
    _check("ratio", ratio, lambda v: 0 < v <= 1, "in (0, 1] (fraction of each cycle spent rising)")
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {sorted(_SHAPES)}, got {shape!r}")
    _check("start", start, lambda v: v >= 0, "a finite number >= 0")
    _check("stop", stop, lambda v: v >= start, f"a finite number >= start ({start})")
    # BEGIN SOLUTION schedules: v = _cycle_position(...) / (ratio * period); ramp while v <= 1
    if t >= total_steps:
        return float(stop)
    v = _cycle_position(t, total_steps, n_cycles) / (total_steps / n_cycles * ratio)
    if v > 1:
        return float(stop)
    return start + (stop - start) * _SHAPES[shape](v)
    # END SOLUTION


def cyclical_zero_linear(t, total_steps, n_cycles=4, zero_ratio=0.5, ramp_ratio=0.25, stop=1.0):
    """Cyclical annealing with a KL-free start: in each cycle beta = 0, then a linear ramp, then stop.

    period = total_steps / n_cycles; at position i in its cycle, with z = ceil(zero_ratio * period)
    (the number of steps i < zero_ratio * period):
        beta = 0                                                   for i < z
        beta = min(stop, stop * (i - z) / (ramp_ratio * period))   after
    (the ramp starts with one more 0, exactly like the reference code). Defaults zero_ratio=0.5,
    ramp_ratio=0.25 are those of the Optimus launch scripts (--ratio_zero .5 --ratio_increase
    0.25); Optimus runs one cycle per epoch and uses stop = its --beta. For t >= total_steps
    beta holds at stop.

    Reference: Li et al. 2020, arXiv:2004.04092 (Optimus), code: frange_cycle_zero_linear.
    """
    _check_step(t)
    _check_count("total_steps", total_steps)
    _check_count("n_cycles", n_cycles, upper=total_steps)
    _check("zero_ratio", zero_ratio, lambda v: 0 <= v < 1, "in [0, 1)")
    _check("ramp_ratio", ramp_ratio, lambda v: 0 < v <= 1 - zero_ratio,
           f"in (0, 1 - zero_ratio] = (0, {1 - zero_ratio:g}] so the ramp ends inside its cycle")
    _check("stop", stop, lambda v: v >= 0, "a finite number >= 0")
    if t >= total_steps:
        return float(stop)
    period = total_steps / n_cycles
    i = _cycle_position(t, total_steps, n_cycles)
    if i < period * zero_ratio:
        return 0.0
    return min(float(stop), stop * (i - math.ceil(period * zero_ratio)) / (period * ramp_ratio))


SCHEDULES = {f.__name__: f for f in (constant, linear, linear_warmup, logistic, exponential,
                                     cyclical, cyclical_zero_linear)}


def make_schedule(name, **params):
    """Return beta(t) for the schedule called name with its hyperparameters fixed.

    Checks the name, the parameter names and (by evaluating beta(0)) their values right away,
    so a typo fails before training starts rather than at the first step.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid names: {_usage()}")
    fn = SCHEDULES[name]
    sig = inspect.signature(fn)
    names = list(sig.parameters)[1:]
    required = [p for p in names if sig.parameters[p].default is inspect.Parameter.empty]
    unknown = sorted(set(params) - set(names))
    missing = [p for p in required if p not in params]
    if unknown or missing:
        problem = "; ".join(filter(None, [unknown and f"unknown parameter(s) {unknown}",
                                          missing and f"missing required parameter(s) {missing}"]))
        raise ValueError(f"beta schedule {name!r}: {problem}. It takes {_usage(name)}")
    try:
        fn(0, **params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"beta schedule {name!r}: {e}") from None

    def beta(t):
        return fn(t, **params)
    beta.__doc__ = f"beta(t) = {name}(t, " + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"
    return beta


def from_flags(name, params_text, total_steps):
    """make_schedule from the scripts' --beta-schedule NAME --beta-params "key=value,key=value".

    Values are numbers (shape=linear|cosine|... stays text); counts become integers; the
    cyclical schedules get total_steps (the run's length) unless the text sets it. Errors are
    ValueErrors that name the flag at fault.
    """
    params = {}
    for item in filter(None, params_text.split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        try:
            params[key] = value if key == "shape" else float(value)
        except ValueError:
            raise ValueError(f"--beta-params: {item!r} is not key=number") from None
    for key in ("total_steps", "n_cycles", "warmup_steps"):  # integers where the schedule wants them
        if key in params:
            params[key] = int(params[key])
    if name in ("cyclical", "cyclical_zero_linear"):
        params.setdefault("total_steps", total_steps)
    try:
        return make_schedule(name, **params)
    except ValueError as err:
        raise ValueError(f"--beta-schedule: {err}") from None


def _usage(name=None):
    """'name(required, optional=default, ...)' for one schedule or all of them."""
    names = [name] if name else list(SCHEDULES)
    return ", ".join(f"{n}{inspect.signature(SCHEDULES[n])}".replace("(t, ", "(", 1) for n in names)


# ------------------------------------------------------------------- learning-rate schedules
# lr as a pure function of progress p in [0, 1], the fraction of the run done (of its steps, or of
# its time budget): the same schedule then fits a 10-epoch run and a 15-minute one.
def _check_progress(p):
    _check("progress", p, lambda v: 0 <= v, "a finite number >= 0 (the fraction of the run done)")


def constant_lr(p, lr):
    """The same learning rate throughout."""
    _check_progress(p)
    return float(lr)


def cosine_lr(p, lr):
    """Cosine decay from lr to 0 over the run: lr * 0.5 * (1 + cos(pi * p)); lr stays 0 past p = 1.

    Reference: Loshchilov & Hutter 2017, arXiv:1608.03983, eq. 5 (one period, no restart).
    """
    _check_progress(p)
    return 0.5 * lr * (1 + math.cos(math.pi * min(p, 1.0)))


BURDA_STAGES = 8  # i = 0..7: 3**i passes each, 3,280 passes in all


def burda_lr(p, lr):
    """Burda et al.'s schedule scaled to the run: stage i = 0..7 lasts 3**i / 3280 of it, at lr * 10**(-i/7).

    The paper trains 3**i epochs at 0.001 * 10**(-i/7); here the run's length replaces 3,280 epochs,
    so stage 7 (lr / 10) takes the last two thirds of it.
    Reference: Burda et al. 2016, arXiv:1509.00519, Sec. 5.
    """
    _check_progress(p)
    total, end, i = sum(3 ** i for i in range(BURDA_STAGES)), 0, 0
    for i in range(BURDA_STAGES):
        end += 3 ** i
        if p < end / total:
            break
    return lr * 10 ** (-i / 7)


LR_SCHEDULES = {"constant": constant_lr, "cosine": cosine_lr, "burda": burda_lr}


def learning_rate(name, lr, progress, step=0, warmup_steps=0):
    """The learning rate of schedule `name` at `progress`, times a linear warm-up over the first steps.

    Warm-up: lr grows from lr / warmup_steps at step 0 to the schedule's value at step warmup_steps - 1
    (Goyal et al. 2017, arXiv:1706.02677, Sec. 2.2); warmup_steps = 0 turns it off.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose from {sorted(LR_SCHEDULES)}")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warm * LR_SCHEDULES[name](progress, lr)
