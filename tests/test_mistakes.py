"""One test per solution region: the one `scripts/grade.py --explain` shows first.

Each test checks the property that the region's classic mistake breaks, and says in words what
is wrong when it fails ("Var(z) / exp(logvar) = 7.4, expected 1: ..."). None of them repeats the
solution: they check definitions (the adjoint of broadcasting, finite differences, numerical
integration), limits (a saturated gate) and invariants (Adam's step with a constant gradient).
scripts/assignment_lib.py (PRIMARY) names each region's test here.
"""
import ast
import re

import numpy as np
import pytest

import minivae.engine as engine
import minivae.ops as ops
from minivae import Tensor, diagnostics, distributions, elbo, layers, optim, schedules
from minivae.gradcheck import check_vjp
from minivae.models import MLPVAE


def _leaf(value):
    return Tensor(np.asarray(value, dtype=np.float64), requires_grad=True)


# ------------------------------------------------------------------------------------ engine

@pytest.mark.parametrize("g_shape, x_shape", [((4, 3), (4, 1)), ((2, 4, 3), (3,)), ((4, 3), (1, 3)),
                                              ((2, 4, 3), (4, 1)), ((4, 3), ()), ((4, 3), (4, 3))])
def test_unbroadcast_sums_over_the_broadcast_axes(g_shape, x_shape):
    rng = np.random.default_rng(0)
    g, v = rng.standard_normal(g_shape), rng.standard_normal(x_shape)
    try:
        out = np.asarray(engine.unbroadcast(g, np.zeros(x_shape), "add"))
    except ValueError as err:  # the engine's own shape check after your region: the shape it saw
        seen = re.search(r"gradient of shape (\(.*?\)) that cannot be reduced", str(err))
        if seen is None:
            raise
        out = np.zeros(ast.literal_eval(seen[1]))
    stretched = [i for i, n in enumerate(x_shape) if n == 1 and g_shape[len(g_shape) - len(x_shape) + i] != 1]
    why = ("size-1 axes must be summed with keepdims" if stretched and len(g_shape) == len(x_shape) else
           "the axes added in front must be summed away" if not stretched else
           "sum the axes added in front, then the size-1 axes with keepdims")
    assert out.shape == x_shape, (f"unbroadcast returned shape {out.shape} for an input of shape "
                                  f"{x_shape} (gradient of shape {g_shape}): {why}")
    # the adjoint of broadcasting: <unbroadcast(g), v> = <g, v copied to g's shape>
    want = float(np.vdot(g, np.broadcast_to(v, g_shape)))
    assert np.isclose(float(np.vdot(out, v)), want), (
        f"unbroadcast returned the right shape {x_shape} but wrong values for a gradient of shape "
        f"{g_shape}: each entry must be the SUM of the gradients of the entries it was copied to")


def _graph():
    """x -> a = x + x -> b = a - x -> c = a + b: a diamond, with x and a used twice."""
    x = _leaf(3.0)
    a = x + x
    b = a - x
    return x, a, b, a + b


def test_topological_order_lists_each_node_once_after_its_inputs():
    x, a, b, c = _graph()
    names = {id(x): "x", id(a): "a = x + x", id(b): "b = a - x", id(c): "c = a + b"}
    order = engine._topological_order(c)
    listed = [names.get(id(n), "?") for n in order]
    for n in (x, a, b, c):
        count = sum(m is n for m in order)
        assert count == 1, (f"_topological_order listed {names[id(n)]} {count} times in {listed}: "
                            "each node exactly once (remember which nodes are visited)")
    assert order[-1] is c, f"_topological_order must end with the node it starts from (c), got {listed}"
    position = {id(n): i for i, n in enumerate(order)}
    for n in (a, b, c):
        for p in n._parents:
            assert position[id(p)] < position[id(n)], (
                f"_topological_order put {names[id(n)]} before its input {names[id(p)]} ({listed}): "
                "a node may come only after all of its inputs")
    y = x
    for _ in range(3000):  # deeper than Python's recursion limit
        y = y + 1.0
    try:
        deep = engine._topological_order(y)
    except RecursionError:
        pytest.fail("_topological_order hit Python's recursion limit on a chain of 3000 nodes: walk "
                    "the graph with a loop and a stack of your own, not recursion")
    assert len(deep) == 3001, f"a chain of 3000 nodes on x has 3001 nodes, got {len(deep)}"


def test_backward_adds_the_gradients_of_every_use():
    x, a, b, c = _graph()  # c = a + b = (x + x) + (x + x - x) = 3x
    c.backward()
    assert x.grad is not None, "after c.backward(), the leaf x has no .grad: leaves receive their gradient in .grad"
    assert np.isclose(float(x.grad), 3.0), (
        f"c = (x + x) + ((x + x) - x) = 3x, so dc/dx = 3, got {float(x.grad):g}: a node used more than "
        "once must receive the SUM of the gradients from every use (add, do not overwrite)")
    x.grad = None
    (x + x).backward()
    (x + x).backward()
    assert np.isclose(float(x.grad), 4.0), (
        f"two calls of (x + x).backward() must leave x.grad = 2 + 2 = 4, got {float(x.grad):g}: "
        "backward adds to a leaf's existing .grad")
    w, bias = _leaf(np.ones((4, 3))), _leaf(np.zeros(3))
    (w + bias).backward(np.ones((4, 3)))
    assert bias.grad.shape == (3,) and np.allclose(bias.grad, 4.0), (
        f"bias (3,) added to w (4, 3): its gradient must be summed over the 4 rows to shape (3,), got "
        f"{np.shape(bias.grad)}: pass each parent's gradient through unbroadcast")


# --------------------------------------------------------------------------------------- ops

VJP_CASES = {  # region name -> (op, inputs as (shape, "real" or "positive"), parameters)
    "multiply": (ops.multiply, [((3, 4), "real"), ((3, 4), "real")], {}),
    "divide": (ops.divide, [((3, 4), "real"), ((3, 4), "positive")], {}),
    "exp": (ops.exp, [((3, 4), "real")], {}),
    "log": (ops.log, [((3, 4), "positive")], {}),
    "tanh": (ops.tanh, [((3, 4), "real")], {}),
    "sigmoid": (ops.sigmoid, [((3, 4), "real")], {}),
    "sum": (ops.sum, [((3, 4), "real")], {"axis": 1, "keepdims": False}),
    "logsumexp": (ops.logsumexp, [((3, 4), "real")], {"axis": 1, "keepdims": False}),
}
ORDINAL = ["first", "second"]


def _values(specs, rng):
    return [rng.uniform(0.5, 2.0, shape) if domain == "positive" else rng.standard_normal(shape)
            for shape, domain in specs]


def _vjp_problems(op, values, params, i):
    """The problems of op's VJP for input i alone, as one sentence (empty if right)."""
    needs = [j == i for j in range(len(values))]
    problems = check_vjp(op, values, params, needs)
    return "; ".join(p["message"] for p in problems)


@pytest.mark.parametrize("name", list(VJP_CASES))
def test_vjp_alone(name):
    op, specs, params = VJP_CASES[name]
    values = _values(specs, np.random.default_rng(1))
    extra = [{}] if name not in ("sum", "logsumexp") else [{}, {"axis": None, "keepdims": False},
                                                          {"axis": 0, "keepdims": True}]
    for more in extra:
        for i in range(len(values)):
            problems = _vjp_problems(op, values, {**params, **more}, i)
            where = f" with {more}" if more else ""
            assert not problems, (f"{name}'s VJP for its {ORDINAL[i]} input is wrong{where} "
                                  f"(checked alone against finite differences): {problems}")


MATMUL_CASES = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5))]
# (the primitive _matmul sees matrices and stacks of them; ops.matmul reshapes a vector operand first)


@pytest.mark.parametrize("which", ["x", "y"])
def test_matmul_vjp_alone(which):
    i = "xy".index(which)
    rng = np.random.default_rng(2)
    for shapes in MATMUL_CASES:
        values = [rng.standard_normal(s) for s in shapes]
        problems = _vjp_problems(ops._matmul, values, {}, i)
        stacked = any(len(s) > 2 for s in shapes)
        hint = " (for stacked matrices .T reverses EVERY axis: swap only the last two)" if stacked else ""
        assert not problems, (f"matmul's VJP for its {ORDINAL[i]} input ({which}) is wrong for "
                              f"{shapes[0]} @ {shapes[1]}{hint}: {problems}")


# ----------------------------------------------------------------------------- distributions

def test_sampler_variance_is_exp_logvar():
    rng = np.random.default_rng(3)
    mu, logvar = np.array([0.5, -1.0, 2.0, 0.0]), np.array([2.0, -1.0, -2.5, 1.0])
    eps = rng.standard_normal((100_000, 4))
    z = np.asarray(distributions.sample_gaussian(Tensor(mu), Tensor(logvar), Tensor(eps)).data)
    assert z.shape == eps.shape, f"sample_gaussian returned shape {z.shape} for eps of shape {eps.shape}"
    ratio = z.var(axis=0) / np.exp(logvar)
    worst = int(np.argmax(np.abs(np.log(ratio))))
    hint = ("standard deviation and variance mixed up? exp(logvar) is the variance, its square root the "
            "standard deviation" if not 0.95 < ratio[worst] < 1.05 else "")
    assert not hint, (f"Var(z)/exp(logvar) = {ratio[worst]:.3g} at logvar = {logvar[worst]:g}, "
                      f"expected 1: {hint}")
    shift = np.abs(z.mean(axis=0) - mu).max()
    assert shift < 0.05, f"the mean of z differs from mu by {shift:.3g}: z must be mu plus the scaled noise"


def test_kl_per_dim_matches_numerical_integration():
    mu, logvar = np.array([[0.0, 1.0, -2.0], [0.5, 0.0, 0.3]]), np.array([[0.0, 0.5, -1.0], [1.5, -2.0, 0.0]])
    kl = np.asarray(distributions.kl_standard_normal_per_dim(Tensor(mu), Tensor(logvar)).data)
    assert kl.shape == mu.shape, (f"kl_standard_normal_per_dim returned shape {kl.shape} for mu of shape "
                                  f"{mu.shape}: one KL per dimension, no sum")
    t = np.linspace(-12, 12, 200_001)
    for idx in np.ndindex(mu.shape):
        sd = np.sqrt(np.exp(logvar[idx]))
        log_q = -0.5 * ((t - mu[idx]) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
        log_p = -0.5 * t ** 2 - 0.5 * np.log(2 * np.pi)
        want = np.trapezoid(np.exp(log_q) * (log_q - log_p), t)
        assert np.isclose(kl[idx], want, atol=1e-6), (
            f"KL at mu = {mu[idx]:g}, logvar = {logvar[idx]:g} is {kl[idx]:.6g}, numerical integration "
            f"of q log(q/p) gives {want:.6g}: check the formula (logvar is the log-VARIANCE)")


def test_bernoulli_log_likelihood_from_logits_is_exact_and_stable():
    x = np.array([[1.0, 0.0, 1.0, 0.0]])
    for logits, want, what in [([0.0, 0.0, 0.0, 0.0], -4 * np.log(2), "logits 0"),
                               ([800.0, -800.0, 30.0, -30.0], -2 * np.log1p(np.exp(-30.0)), "logits +-800"),
                               ([-800.0, 0.0, 0.0, 0.0], -800 - 3 * np.log(2), "x = 1 at logit -800")]:
        got = distributions.bernoulli_log_likelihood(Tensor(x), Tensor(np.array([logits]))).data
        assert np.shape(got) == (1,), (f"bernoulli_log_likelihood returned shape {np.shape(got)} for "
                                       "x (1, 4): sum over the last axis (pixels)")
        assert np.isclose(float(got[0]), want, rtol=1e-12, atol=1e-12), (
            f"bernoulli_log_likelihood with {what} is {float(got[0]):.6g}, expected {want:.6g}: compute it "
            "from the logits with softplus (never log(sigmoid(l)), which gives -inf past |l| ~ 40)")


# -------------------------------------------------------------------------------- free bits

def test_free_bits_floors_what_each_mode_says():
    kl = np.array([[0.02, 3.0], [0.04, 0.3]])  # (B=2 examples, d=2 dimensions), free bits 0.5
    expected = {"batch_dim": (0.5 + 1.65, "floor each dimension's batch-mean KL, then sum the dimensions"),
                "example_dim": ((3.0 + 0.0) / 2, "drop each KL_ij not above the floor, then the mean "
                                "over the batch of the sum over dimensions"),
                "total": ((3.02 + 1.0) / 2, "floor each example's total KL at free_bits * d, then the mean")}
    total_floored = max(kl.sum(axis=1).mean(), 0.5 * 2)
    for mode, (want, what) in expected.items():
        got = float(elbo.free_bits_kl(Tensor(kl), 0.5, mode).data)
        if np.isclose(got, want):
            continue
        also = " (yours floors the total KL of the batch)" if np.isclose(got, total_floored) else ""
        pytest.fail(f"free_bits_kl(mode='{mode}', free_bits=0.5) = {got:.4g}, expected {want:.4g}: "
                    f"{what}{also}", pytrace=False)
    t = _leaf(kl)
    elbo.free_bits_kl(t, 0.5, "batch_dim").backward()
    assert np.allclose(t.grad[:, 0], 0.0) and np.allclose(t.grad[:, 1], 0.5), (
        f"mode 'batch_dim': dimension 0 is below the floor, so its KL must get exactly zero gradient "
        f"and dimension 1 gradient 1/B = 0.5; got {t.grad.tolist()}")


# -------------------------------------------------------------------------------- schedules

def test_cyclical_ramps_then_holds_in_each_cycle():
    got = [schedules.cyclical(t, total_steps=40, n_cycles=4, ratio=0.5) for t in range(40)]
    want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0] * 4
    assert np.allclose(got, want), (
        f"cyclical(t, total_steps=40, n_cycles=4, ratio=0.5) for t = 0..9 gives "
        f"{' '.join(f'{b:.2g}' for b in got[:10])}, expected 0 .2 .4 .6 .8 1 1 1 1 1 (then the same 3 more "
        "times): each cycle of 10 steps ramps from start to stop over its first ratio * 10 steps, then holds")
    got = [schedules.cyclical(t, total_steps=10, n_cycles=1, ratio=1.0, start=0.2, stop=0.7) for t in (0, 5, 10, 99)]
    assert np.allclose(got, [0.2, 0.45, 0.7, 0.7]), (
        f"cyclical(t, total_steps=10, n_cycles=1, ratio=1.0, start=0.2, stop=0.7) at t = 0, 5, 10, 99 gives "
        f"{np.round(got, 4).tolist()}, expected [0.2, 0.45, 0.7, 0.7]: it ramps from start and holds stop "
        "from total_steps on")


# ------------------------------------------------------------------------------------ optim

def test_adam_moves_each_parameter_by_lr_under_a_constant_gradient():
    p = _leaf(np.array([1.0, -2.0, 0.5]))
    opt = optim.Adam([p], lr=0.1, eps=1e-12)
    g = np.array([3.0, -0.01, 0.5])
    moves = []
    for step in range(1, 4):
        before = p.data.copy()
        p.grad = g.copy()
        opt.step()
        moves.append(before - p.data)
        assert np.allclose(moves[-1], 0.1 * np.sign(g), rtol=1e-6), (
            f"with the same gradient {g.tolist()} at every step, Adam's step {step} must move every "
            f"parameter by lr = 0.1 against its gradient's sign (then m_hat = g and v_hat = g**2); it "
            f"moved them by {np.round(moves[-1], 4).tolist()}: bias correction missing or wrong? m_hat = "
            "m / (1 - beta1**t), v_hat = v / (1 - beta2**t), t = this parameter's step count")
    assert np.array_equal(p.grad, g), "Adam.step must only read p.grad, not change it"


# -------------------------------------------------------------------------------------- gru

def _cell(rng, gate_bias):
    """A GRUCell (n_in 2, H 3) whose recurrent bias pushes the gates r, z to 0 or 1 (None: leave)."""
    cell = layers.GRUCell(2, 3, rng, dtype=np.float64)
    for k, bias in enumerate(gate_bias):
        if bias is not None:
            cell.b_h.data[3 * k:3 * k + 3] = bias
    return cell


def test_gru_gates_do_what_their_names_say():
    rng = np.random.default_rng(5)
    x, h = rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    cell = _cell(rng, [None, 40.0])  # z = sigmoid(~40) = 1 in float64
    got = cell(Tensor(x), Tensor(h)).data
    assert np.allclose(got, h, atol=1e-9), (
        f"with the update gate z = 1 (bias +40), h' must equal h, the old state kept; yours differs by "
        f"{np.abs(got - h).max():.3g}: are the roles of z and 1 - z swapped? (h' = (1 - z) * n + z * h)")
    for r_bias, what in [(-40.0, "tanh(x W_in + b_in): r = 0 removes h W_hn + b_hn"),
                         (40.0, "tanh(x W_in + b_in + h W_hn + b_hn)")]:
        cell = _cell(rng, [r_bias, -40.0])  # z = 0: h' = n
        H = 3
        a = x @ cell.W_x.data + cell.b_x.data
        p = h @ cell.W_h.data + cell.b_h.data
        want = np.tanh(a[:, 2 * H:] + (r_bias > 0) * p[:, 2 * H:])
        got = cell(Tensor(x), Tensor(h)).data
        assert np.allclose(got, want, atol=1e-9), (
            f"with z = 0 and the reset gate r = {int(r_bias > 0)}, h' must be the candidate n = {what}; "
            f"yours differs by {np.abs(got - want).max():.3g} (gate order along 3H: r, z, n; r multiplies "
            "h W_hn + b_hn)")


# ------------------------------------------------------------------------------------- iwae

def test_log_mean_exp_is_the_log_of_the_mean_weight_and_never_overflows():
    cases = [([[0.0], [-10.0]], "log w = 0 and -10"), ([[-800.0], [-801.0]], "log w = -800 and -801"),
             ([[800.0], [799.0]], "log w = 800 and 799")]
    for log_w, what in cases:
        log_w = np.array(log_w)
        top = log_w.max()
        want = top + np.log(np.mean(np.exp(log_w - top)))
        with np.errstate(all="ignore"):
            got = np.asarray(diagnostics.log_mean_exp(log_w), dtype=np.float64)
        assert got.shape == (1,), f"log_mean_exp of log w (K=2, b=1) returned shape {got.shape}, expected (1,)"
        if np.isclose(got[0], want, rtol=1e-12):
            continue
        why = ("exp overflows or underflows at |log w| ~ 800: subtract the maximum first (log-sum-exp)"
               if not np.isfinite(got[0]) else
               "that is the mean of log w (the ELBO), not the log of the mean of w" if np.isclose(got[0], log_w.mean()) else
               "log of the mean: subtract log K" if np.isclose(got[0], want + np.log(2)) else "")
        pytest.fail(f"log_mean_exp with {what} is {got[0]:.6g}, expected {want:.6g}" + (f": {why}" if why else ""),
                    pytrace=False)


def _tiny_vae(rng):
    return MLPVAE(n_in=6, hidden=(5,), latent=2, rng=rng, dtype=np.float64)


def test_log_weights_are_log_p_x_z_plus_log_p_z_minus_log_q():
    rng = np.random.default_rng(6)
    model = _tiny_vae(rng)
    x = (rng.uniform(size=(3, 6)) > 0.5).astype(np.float64)
    mu, logvar = rng.standard_normal((3, 2)), 0.3 * rng.standard_normal((3, 2))
    eps = rng.standard_normal((4, 3, 2))
    got = np.asarray(diagnostics._log_weights(model, x, mu, logvar, eps))
    assert got.shape == (4, 3) and got.dtype == np.float64, (
        f"_log_weights must return float64 log w of shape (K, b) = (4, 3), got {got.dtype} {got.shape}")
    z = mu + np.sqrt(np.exp(logvar)) * eps
    logits = model.decode(Tensor(z.reshape(-1, 2))).data.reshape(4, 3, 6)
    log_px_z = np.sum(x * logits - np.logaddexp(0, logits), axis=-1)
    log_pz = np.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), axis=-1)
    log_q = np.sum(-0.5 * eps ** 2 - 0.5 * logvar - 0.5 * np.log(2 * np.pi), axis=-1)
    want = log_px_z + log_pz - log_q
    sign = " (yours adds log q)" if np.allclose(got, log_px_z + log_pz + log_q) else ""
    assert np.allclose(got, want, rtol=1e-10), (
        f"log w differs from log p(x|z) + log p(z) - log q(z|x) by up to {np.abs(got - want).max():.3g}{sign}")


def test_iw_bound_is_log_mean_exp_of_the_weights():
    rng = np.random.default_rng(7)
    K, B, d = 5, 3, 2
    mu, logvar = rng.standard_normal((B, d)), 0.3 * rng.standard_normal((B, d))
    z = mu + np.sqrt(np.exp(logvar)) * rng.standard_normal((K, B, d))
    for shift, what in [(0.0, "log p(x|z) near -1"), (-900.0, "log p(x|z) near -900")]:
        log_px_z = shift - rng.uniform(0.5, 1.5, (K, B))
        log_w = log_px_z + (distributions.standard_normal_log_density(Tensor(z))
                            - distributions.gaussian_log_density(Tensor(z), Tensor(mu), Tensor(logvar))).data
        top = log_w.max(axis=0)
        want = float(np.mean(top + np.log(np.mean(np.exp(log_w - top), axis=0))))
        with np.errstate(all="ignore"):
            _, stats = elbo.iw_objective(Tensor(log_px_z), Tensor(z), Tensor(mu), Tensor(logvar))
        got = stats["iw_bound"]
        why = ("that is the mean of log w (the ELBO), not the log of the mean of w" if np.isclose(got, log_w.mean())
               else "exp underflows at log w ~ -900: use ops.logsumexp" if not np.isfinite(got) else "")
        assert np.isclose(got, want, rtol=1e-10), (
            f"the IW bound with K = {K} and {what} is {got:.6g}, expected {want:.6g} = mean over the batch of "
            "log((1/K) sum_k w_k)" + (f": {why}" if why else ""))
