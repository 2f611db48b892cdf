"""Labs: after each assignment topic, one short command that shows the payoff on a real model.

    python scripts/labs.py sampler              # distributions: the sample variance is exp(logvar)
    python scripts/labs.py graph --break exp    # engine, ops: the debugger on a VAE loss, and its picture

Every lab prints its numbers next to the band a correct solution lands in, and ends with
"as expected" or "OUTSIDE THE BAND" (exit status 1). tests/test_labs.py runs each lab on the
reference; the long ones (mnist, iwae, free_bits: 15 s to 2 min) are marked slow there.

  graph      (engine, ops)     the MNIST VAE's loss: every VJP agrees with finite differences;
                               --break OP makes OP's VJP 0.1% wrong and the debugger names it
  sampler    (distributions)   Var(z) / exp(logvar) is 1; mixing up std and variance gives exp(logvar)
  kl         (distributions)   the analytic KL against a Monte-Carlo estimate
  schedules  (schedules)       cyclical annealing, 40 steps, 4 cycles, ratio 0.5
  gru        (gru)             the update gate is memory: z near 1 keeps a state for 30 steps, z
                               near 0 forgets it; a GRU learns to recall a sequence's first bit
  mnist      (optim)           the bundled-MNIST test -ELBO after one epoch
  iwae       (iwae)            the importance-weighted bound rises with K
  free_bits  (free_bits)       a small collapse run: the plain VAE collapses, free bits bring
                               active units back
"""
import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the copy this script stands in, never an installed minivae
from minivae import ops  # noqa: E402
from minivae.distributions import (bernoulli_log_likelihood, gaussian_log_density, kl_standard_normal,  # noqa: E402
                                   sample_gaussian,
                                   standard_normal_log_density)
from minivae.engine import Tensor  # noqa: E402


def bundled_test_digits(dtype=np.float32):
    """The held-out 2,000 of the digits that ship with minivae (no download, no warning)."""
    from minivae import data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load_train_test(download=False, dtype=dtype)[2]


def within(label, value, lo, hi, fmt="{:.3f}"):
    """Print one number with its band; True if inside."""
    ok = lo <= value <= hi
    print(f"  {label:44s} {fmt.format(value):>10s}   expected {fmt.format(lo)} .. {fmt.format(hi)}"
          f"   {'ok' if ok else 'OUTSIDE'}")
    return ok


def lab_graph(args):
    """The MNIST VAE's loss (bundled digits, batch 8, float64): the debugger checks every node."""
    from minivae.gradcheck import find_wrong_vjp
    from minivae.graph import draw_graph
    from minivae.models import MLPVAE

    op = ops.__dict__[args.break_op] if args.break_op else None
    right = op._vjps if op else None
    try:
        if op:  # a 0.1% slip in one VJP, as a student might make it
            op.defvjp(*[lambda g, ans, *xs, f=f, **p: 1.001 * f(g, ans, *xs, **p) for f in right])
        x = bundled_test_digits(np.float64)[:8]
        rng = np.random.default_rng(0)
        model = MLPVAE(rng=rng, dtype=np.float64)
        loss, _ = model.loss(x, rng.standard_normal((8, model.latent)))
        loss.backward()
        wrong = find_wrong_vjp(loss)
    finally:  # the op is shared by everything in this process: put its VJP back
        if op:
            op._vjps = right
    print(wrong if wrong else "every op's VJP agrees with finite differences at its own inputs")
    out = Path(args.out) / "vae_graph.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_graph(loss, out, names=dict(model.named_parameters()), highlight=wrong,
               title="MLPVAE loss, batch of 8 bundled digits"
               + (f"; {args.break_op}'s VJP made 0.1% wrong" if args.break_op else ""))
    print(f"wrote {out}: each node's op, shape, dtype and gradient norm" + (", the wrong one in red" if wrong else ""))
    return wrong is not None and wrong.node._op is op if op else wrong is None


def lab_sampler(args):
    """Var(z) of the reparameterised sample, against exp(logvar), for several logvar."""
    rng = np.random.default_rng(0)
    logvar = np.array([-2.0, -0.5, 0.0, 1.0, 2.0])
    mu = np.array([0.5, -1.0, 0.0, 2.0, 0.0])
    eps = rng.standard_normal((200_000, 5))
    z = sample_gaussian(Tensor(mu), Tensor(logvar), Tensor(eps)).data
    ratio = z.var(axis=0) / np.exp(logvar)
    print("  logvar:                    " + "  ".join(f"{v:6.2f}" for v in logvar))
    print("  Var(z) / exp(logvar):      " + "  ".join(f"{v:6.3f}" for v in ratio))
    print("  ... if std and variance are mixed up (z = mu + exp(logvar)*eps), it would be exp(logvar):")
    print("                             " + "  ".join(f"{v:6.3f}" for v in np.exp(logvar)))
    ok = within("worst Var(z) / exp(logvar)", float(ratio[np.argmax(np.abs(ratio - 1))]), 0.98, 1.02)
    return within("mean(z) - mu, largest", float(np.max(np.abs(z.mean(axis=0) - mu))), 0.0, 0.02) and ok


def lab_kl(args):
    """KL(q || N(0, I)) in closed form, against the average of log q(z) - log p(z) over samples."""
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(0, 1, (4, 6)), rng.normal(-0.5, 0.8, (4, 6))
    analytic = kl_standard_normal(Tensor(mu), Tensor(logvar)).data
    eps = rng.standard_normal((50_000, 4, 6))
    z = sample_gaussian(Tensor(mu), Tensor(logvar), Tensor(eps))
    samples = gaussian_log_density(z, Tensor(mu), Tensor(logvar)).data - standard_normal_log_density(z).data
    mc, se = samples.mean(axis=0), samples.std(axis=0) / np.sqrt(len(samples))
    print("  analytic KL:    " + "  ".join(f"{v:7.3f}" for v in analytic))
    print("  Monte Carlo:    " + "  ".join(f"{v:7.3f}" for v in mc))
    return within("largest |analytic - MC| / standard error", float(np.max(np.abs(analytic - mc) / se)), 0.0, 4.0)


def lab_schedules(args):
    """Cyclical annealing (Fu et al. 2019): 4 ramps from 0 to 1 over the first half of each cycle."""
    from minivae.schedules import cyclical
    beta = [cyclical(t, total_steps=40, n_cycles=4, ratio=0.5) for t in range(40)]
    print("  beta, steps 0-9: " + " ".join(f"{b:.1f}" for b in beta[:10]) + "   (then the same 3 more times)")
    expected = [0, .2, .4, .6, .8, 1, 1, 1, 1, 1] * 4
    return within("largest difference from 0 .2 .4 .6 .8 1 1 1 1 1", float(np.max(np.abs(np.subtract(beta, expected)))),
                  0.0, 1e-9, "{:.1g}")


def lab_gru(args):
    """Your GRU cell as memory: the update gate keeps or forgets a state; a GRU learns to recall."""
    from minivae import layers, optim
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 30, 2)))
    spread = []
    for bias in (6.0, -6.0):  # z = sigmoid(~6) ~ 0.998 keeps the state, sigmoid(~-6) forgets it
        gru = layers.GRU(2, 3, np.random.default_rng(1), dtype=np.float64)
        gru.cell.b_h.data[3:6] = bias
        finals = [gru(x, np.full(4, 30), Tensor(np.full((4, 3), h0)))[1].data for h0 in (-0.9, 0.9)]
        spread.append(float(np.abs(finals[1] - finals[0]).mean()))
    print("  two states started 1.8 apart, after 30 steps of the same input:")
    ok = within("z near 1 (update-gate bias +6): still apart by", spread[0], 0.5, 1.8)
    ok &= within("z near 0 (update-gate bias -6): still apart by", spread[1], 0.0, 1e-3, "{:.2g}")
    bits = rng.integers(0, 2, (512, 8, 1)).astype(np.float64)  # recall each sequence's first bit
    gru = layers.GRU(1, 8, np.random.default_rng(2), dtype=np.float64)
    readout = layers.Dense(8, 1, np.random.default_rng(3), dtype=np.float64)
    opt = optim.Adam(gru.parameters() + readout.parameters(), lr=0.03)
    for step in range(150):
        batch = bits[rng.integers(0, 512, 32)]
        logits = readout(gru(Tensor(batch), np.full(32, 8))[1])  # from the final state
        loss = -ops.mean(bernoulli_log_likelihood(Tensor(batch[:, 0]), logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits = readout(gru(Tensor(bits), np.full(512, 8))[1]).data
    accuracy = float(np.mean((logits > 0) == (bits[:, 0] > 0.5)))
    return within("recall of the first of 8 bits after 150 steps", accuracy, 0.9, 1.0) and ok


def _train_one_epoch(args):
    import train_mnist_vae
    out = Path(args.out) / "mnist"
    history = train_mnist_vae.main(["--epochs", "1", "--no-download", "--no-plots", "--no-progress",
                                    "--out", str(out)])
    return history[-1], out


def lab_mnist(args):
    """The PyTorch example's VAE (784-400-20) for one epoch on the 8,000 bundled digits."""
    record, _ = _train_one_epoch(args)
    return within("test -ELBO after one epoch (nats)", record["test_neg_elbo"], 190.0, 215.0, "{:.1f}")


def lab_iwae(args):
    """log p_K(x) on 200 held-out digits for K = 1, 10, 100, after one epoch of training."""
    from minivae import diagnostics
    from minivae.checkpoint import load_checkpoint
    from minivae.models import MLPVAE
    _, out = _train_one_epoch(args)
    model = MLPVAE()
    model.load_state_dict(load_checkpoint(out / "checkpoint.npz")["params"])
    x = bundled_test_digits()[:200]
    bounds = []
    for K in (1, 10, 100):
        bounds.append(float(np.mean(diagnostics.iw_log_likelihood(model, x, K, np.random.default_rng(K)))))
        print(f"  K = {K:3d}: log p_K(x) = {bounds[-1]:8.2f} nats")
    ok = within("gain from K = 1 to K = 10 (nats)", bounds[1] - bounds[0], 1.0, 15.0, "{:.2f}")
    return within("gain from K = 10 to K = 100 (nats)", bounds[2] - bounds[1], 0.3, 10.0, "{:.2f}") and ok


def lab_free_bits(args):
    """A small collapse run on the toy corpus: the plain sentence VAE and free bits (0.25 nats/dim)."""
    import collapse_study
    out = Path(args.out) / "collapse"
    collapse_study.main(["--out", str(out), "--quick", "--epochs", "10", "--toy-sentences", "2000",
                         "--methods", "vanilla,free_bits"])
    import json
    rows = {r["method"]: r for r in json.loads((out / "collapse.json").read_text())["rows"]}
    ok = within("plain VAE: KL (nats per sentence)", rows["vanilla"]["kl"], 0.0, 0.5, "{:.2f}")
    ok &= within("plain VAE: active units of 16", rows["vanilla"]["active_units"], 0, 1, "{:.0f}")
    ok &= within("free bits: KL (nats per sentence)", rows["free_bits"]["kl"], 0.5, 6.0, "{:.2f}")
    return within("free bits: active units of 16", rows["free_bits"]["active_units"], 1, 16, "{:.0f}") and ok


LABS = {"graph": lab_graph, "sampler": lab_sampler, "kl": lab_kl, "schedules": lab_schedules, "gru": lab_gru,
        "mnist": lab_mnist, "iwae": lab_iwae, "free_bits": lab_free_bits}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index("  graph "):])
    parser.add_argument("lab", choices=list(LABS), help="which lab to run (listed below)")
    parser.add_argument("--out", default="runs/labs", help="where labs write their files")
    parser.add_argument("--break", dest="break_op", metavar="OP",
                        help="graph lab: make this op's VJP 0.1%% wrong (e.g. exp, tanh, matmul)")
    args = parser.parse_args(argv)
    print(f"lab {args.lab}: {LABS[args.lab].__doc__.splitlines()[0]}")
    ok = LABS[args.lab](args)
    print("as expected" if ok else "OUTSIDE THE BAND: compare your code with the docstring's formula")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
