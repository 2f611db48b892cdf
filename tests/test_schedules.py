"""KL-weight schedules: published check values (Bowman et al. 2016 arXiv:1511.06349; Fu et al. 2019
arXiv:1903.10145), the reference cyclical code, safety past the end, errors."""
import math

import numpy as np
import pytest

from minivae import schedules
from minivae.schedules import (SCHEDULES, constant, cyclical, cyclical_zero_linear, exponential,
                               linear, linear_warmup, logistic, make_schedule)

from conftest import reference  # Fu et al.'s code, brought by the grader

FAR = 10 ** 9   # a step far past the end of any planned run


# ---- ports of the papers' reference code (array builders), to compare against ----

def frange_cycle_zero_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio_increase=0.5, ratio_zero=0.3):
    """Li et al. 2020 (Optimus), code/examples/big_ae/utils.py, as published."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio_increase)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            if i < period * ratio_zero:
                L[int(i + c * period)] = start
            else:
                L[int(i + c * period)] = v
                v += step
            i += 1
    return L


def values(f, n, **kw):
    return np.array([f(t, **kw) for t in range(n)])


# ---- check values ----

def test_logistic_check_values():
    assert logistic(0) == pytest.approx(0.0019267, abs=5e-8)
    assert logistic(2500) == 0.5
    assert logistic(5000) == pytest.approx(0.9980733, abs=5e-8)
    # symmetric about x0, and equal to the textbook formula where that formula is safe
    for t in (0, 100, 2499, 2501, 4000):
        assert logistic(t) == pytest.approx(1 / (1 + math.exp(-0.0025 * (t - 2500))), rel=1e-14)
        assert logistic(t) + logistic(5000 - t) == pytest.approx(1.0, abs=1e-15)


def test_logistic_is_stable_far_from_the_midpoint():
    # RuntimeWarnings are errors in this test suite, and math.exp would raise OverflowError
    assert logistic(FAR) == 1.0
    assert logistic(0, k=10.0, x0=10 ** 6) == 0.0
    assert logistic(10 ** 6, k=10.0, x0=0) == 1.0


def test_linear_and_warmup_values():
    assert [linear(t, x0=4) for t in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert linear_warmup(0, 10) == 0.0
    assert linear_warmup(5, 10) == 0.5
    assert linear_warmup(10, 10) == 1.0
    assert linear_warmup(0, 10, start=0.1) == 0.1
    assert linear_warmup(5, 10, start=0.1) == pytest.approx(0.55)
    assert linear_warmup(25, 10, start=0.1) == 1.0


def test_linear_warmup_matches_the_reference_loop():
    # He et al. 2019 code: kl_weight = start; every batch: kl_weight = min(1, kl_weight + anneal_rate)
    start, warmup_steps = 0.1, 37.5          # e.g. 10 epochs * 3.75 batches
    anneal_rate = (1.0 - start) / warmup_steps
    kl_weight = start
    for n in range(1, 60):                   # batch number, from 1
        kl_weight = min(1.0, kl_weight + anneal_rate)
        assert linear_warmup(n, warmup_steps, start) == pytest.approx(kl_weight, abs=1e-12)


def test_exponential_form():
    rate = 0.01
    assert exponential(0, rate) == 0.0
    assert exponential(100, rate) == pytest.approx(1 - math.exp(-1))
    assert exponential(FAR, rate) == 1.0


def test_constant():
    assert constant(0) == constant(FAR) == 1.0
    assert constant(7, value=0.25) == 0.25


def test_cyclical_check_vector_exactly():
    expected = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0] * 4
    assert values(cyclical, 40, total_steps=40, n_cycles=4, ratio=0.5).tolist() == expected


@pytest.mark.parametrize("total", [7, 10, 33, 40, 101])
@pytest.mark.parametrize("n_cycles", [1, 3, 4, 7])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 1.0])
def test_cyclical_matches_reference_code(total, n_cycles, ratio):
    ref = reference("frange_cycle_linear")(total, n_cycle=n_cycles, ratio=ratio)
    ours = values(cyclical, total, total_steps=total, n_cycles=n_cycles, ratio=ratio)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    ref = reference("frange_cycle_linear")(total, start=0.2, stop=0.9, n_cycle=n_cycles, ratio=ratio)
    ours = values(cyclical, total, total_steps=total, n_cycles=n_cycles, ratio=ratio,
                  start=0.2, stop=0.9)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_cyclical_sigmoid_and_cosine_shapes():
    sig = values(cyclical, 40, total_steps=40, shape="sigmoid")
    assert sig[0] == pytest.approx(0.0024726, abs=5e-8)
    assert sig[5] == pytest.approx(0.9975274, abs=5e-8)      # v = 1, the last ramp step
    assert sig[2] == pytest.approx(1 / (1 + math.exp(-(12 * 0.4 - 6))))
    assert sig[6:10].tolist() == [1.0] * 4
    cos = values(cyclical, 40, total_steps=40, shape="cosine")
    assert cos[0] == 0.0 and cos[5] == 1.0
    assert cos[1] == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.2))
    for v in (sig, cos):
        np.testing.assert_array_equal(v[:10], v[10:20])       # every cycle is the same
        assert np.all(np.diff(v[:10]) >= 0)


def test_cyclical_zero_linear_optimus_defaults():
    # period 20: zero_ratio 0.5 -> 10 zeros, the ramp starts with one more 0, 0.25 -> 5 steps
    got = values(cyclical_zero_linear, 40, total_steps=40, n_cycles=2)
    assert got[:20].tolist() == [0.0] * 11 + [0.2, 0.4, 0.6, 0.8] + [1.0] * 5
    np.testing.assert_array_equal(got[:20], got[20:])


@pytest.mark.parametrize("total", [10, 37, 100])
@pytest.mark.parametrize("n_cycles", [1, 3, 4])
@pytest.mark.parametrize("zero_ratio, ramp_ratio", [(0.5, 0.25), (0.25, 0.25), (0.3, 0.5), (0.0, 1.0)])
def test_cyclical_zero_linear_matches_reference_code(total, n_cycles, zero_ratio, ramp_ratio):
    for stop in (1.0, 0.5):
        ref = frange_cycle_zero_linear(total, stop=stop, n_cycle=n_cycles,
                                       ratio_increase=ramp_ratio, ratio_zero=zero_ratio)
        ours = values(cyclical_zero_linear, total, total_steps=total, n_cycles=n_cycles,
                      zero_ratio=zero_ratio, ramp_ratio=ramp_ratio, stop=stop)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


# ---- shape properties and safety ----

MONOTONIC = [(linear, dict(x0=300)), (linear_warmup, dict(warmup_steps=300, start=0.1)),
             (logistic, dict()), (exponential, dict(rate=1e-3)), (constant, dict(value=0.5))]


@pytest.mark.parametrize("f, kw", MONOTONIC, ids=[f.__name__ for f, _ in MONOTONIC])
def test_monotonic_schedules_rise_within_bounds(f, kw):
    v = values(f, 6000, **kw)
    assert np.all(np.diff(v) >= 0)
    assert v.min() >= 0 and v.max() <= 1
    assert v[-1] <= f(FAR, **kw) <= 1


@pytest.mark.parametrize("shape", ["linear", "sigmoid", "cosine"])
def test_cyclical_stays_in_range_and_holds_stop_after_the_end(shape):
    kw = dict(total_steps=103, n_cycles=3, ratio=0.6, shape=shape, start=0.1, stop=0.8)
    v = values(cyclical, 103, **kw)
    assert v.min() >= 0.1 and v.max() <= 0.8
    assert v[0] == pytest.approx(0.1, abs=0.002)             # sigmoid starts at 0.0025 of the range
    for t in (103, 104, 10 ** 6, FAR):
        assert cyclical(t, **kw) == 0.8
        assert cyclical_zero_linear(t, total_steps=103, stop=0.8) == 0.8


def test_numpy_integer_steps_are_accepted():
    assert cyclical(np.int64(12), 40) == cyclical(12, 40)
    assert logistic(np.int32(2500)) == 0.5


@pytest.mark.parametrize("call, name", [
    (lambda: linear(-1, x0=10), "t"),
    (lambda: linear(3, x0=0), "x0"),
    (lambda: linear_warmup(3, warmup_steps=-5), "warmup_steps"),
    (lambda: linear_warmup(3, 10, start=1.5), "start"),
    (lambda: logistic(3, k=0), "k"),
    (lambda: logistic(3, x0=float("nan")), "x0"),
    (lambda: exponential(3, rate=-1.0), "rate"),
    (lambda: constant(3, value=-1), "value"),
    (lambda: cyclical(3, total_steps=0), "total_steps"),
    (lambda: cyclical(3, total_steps=40, n_cycles=0), "n_cycles"),
    (lambda: cyclical(3, total_steps=40, n_cycles=41), "n_cycles"),
    (lambda: cyclical(3, total_steps=40, ratio=0.0), "ratio"),
    (lambda: cyclical(3, total_steps=40, ratio=1.5), "ratio"),
    (lambda: cyclical(3, total_steps=40, shape="tanh"), "shape"),
    (lambda: cyclical(3, total_steps=40, start=0.5, stop=0.2), "stop"),
    (lambda: cyclical(-2, total_steps=40), "t"),
    (lambda: cyclical_zero_linear(3, 40, zero_ratio=1.0), "zero_ratio"),
    (lambda: cyclical_zero_linear(3, 40, zero_ratio=0.8, ramp_ratio=0.5), "ramp_ratio"),
])
def test_invalid_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"^{name}( \(.*\))? must be"):
        call()


def test_non_integer_step_is_rejected():
    with pytest.raises(TypeError, match="int"):
        linear(2.5, x0=10)


# ---- make_schedule ----

def test_make_schedule_returns_a_one_argument_function():
    beta = make_schedule("cyclical", total_steps=40, n_cycles=4)
    assert [beta(t) for t in range(40)] == values(cyclical, 40, total_steps=40).tolist()
    assert beta(FAR) == 1.0
    assert make_schedule("logistic")(2500) == 0.5
    assert set(SCHEDULES) == {"constant", "linear", "linear_warmup", "logistic", "exponential",
                              "cyclical", "cyclical_zero_linear"}
    assert set(SCHEDULES) <= set(schedules.__all__)


def test_make_schedule_errors_list_names_and_parameters():
    with pytest.raises(ValueError) as err:
        make_schedule("cosine_annealing")
    assert "cyclical(total_steps, n_cycles=4" in str(err.value) and "linear(x0)" in str(err.value)
    with pytest.raises(ValueError, match=r"missing required parameter\(s\) \['total_steps'\]"):
        make_schedule("cyclical", n_cycles=4)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['warmup'\].*"
                                         r"linear_warmup\(warmup_steps"):
        make_schedule("linear_warmup", warmup=10)
    with pytest.raises(ValueError, match="beta schedule 'cyclical': ratio must be in"):
        make_schedule("cyclical", total_steps=40, ratio=2.0)    # values are checked up front


def test_from_flags_reads_the_scripts_beta_params():
    beta = schedules.from_flags("cyclical", "n_cycles=2, ratio=0.5", total_steps=100)
    assert beta(0) == 0.0 and beta(25) == 1.0 and beta(50) == 0.0  # two cycles over the given 100 steps
    assert schedules.from_flags("linear", "x0=20", total_steps=7)(10) == 0.5
    with pytest.raises(ValueError, match=r"--beta-params: 'x0' is not key=number"):
        schedules.from_flags("linear", "x0", total_steps=7)
    with pytest.raises(ValueError, match=r"--beta-schedule: .*unknown parameter"):
        schedules.from_flags("linear", "x0=2,bogus=1", total_steps=7)


# ---- learning-rate schedules: functions of the fraction of the run done ----

def test_burda_lr_reproduces_the_papers_epoch_schedule():
    """Over 3,280 epochs the scaled schedule is the paper's: 3**i epochs at 1e-3 * 10**(-i/7)."""
    epochs = [schedules.burda_lr(e / 3280, 1e-3) for e in range(3280)]
    expected = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3 ** i)]  # Burda et al. 2016, Sec. 5
    np.testing.assert_allclose(epochs, expected, rtol=1e-12)
    assert schedules.burda_lr(1.0, 1e-3) == schedules.burda_lr(5.0, 1e-3) == pytest.approx(1e-4)


def test_cosine_lr_values():
    assert schedules.cosine_lr(0, 0.01) == 0.01
    assert schedules.cosine_lr(0.5, 0.01) == pytest.approx(0.005)
    assert schedules.cosine_lr(0.25, 0.01) == pytest.approx(0.005 * (1 + math.sqrt(0.5)))
    assert schedules.cosine_lr(1.0, 0.01) == pytest.approx(0, abs=1e-18) and schedules.cosine_lr(3.0, 0.01) == \
        pytest.approx(0, abs=1e-18)
    values = [schedules.cosine_lr(p, 1.0) for p in np.linspace(0, 1, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert schedules.constant_lr(0.7, 0.02) == 0.02


def test_learning_rate_warmup_and_errors():
    lr = [schedules.learning_rate("constant", 1e-3, 0.0, step, warmup_steps=4) for step in range(6)]
    np.testing.assert_allclose(lr, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert schedules.learning_rate("cosine", 1e-3, 0.5, step=10) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'.*burda"):
        schedules.learning_rate("step", 1e-3, 0.1)
    with pytest.raises(ValueError, match="progress must be"):
        schedules.cosine_lr(-0.1, 1e-3)
    with pytest.raises(ValueError, match="progress must be"):
        schedules.burda_lr(float("nan"), 1e-3)
