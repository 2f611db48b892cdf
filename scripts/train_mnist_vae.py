"""Train a VAE on MNIST or Fashion-MNIST with minivae, on a laptop CPU.

Defaults are the PyTorch VAE example's recipe (pytorch/examples vae/main.py): grayscale pixels
with the Bernoulli ("BCE") likelihood, 784-400-20 with ReLU, Adam 1e-3, batch 128, 10 epochs.
Without the full data set and without a network it trains on the MNIST test set that ships
with minivae (8,000 train / 2,000 held out) and says so.

    python scripts/train_mnist_vae.py --out runs/mnist
    python scripts/train_mnist_vae.py --latent 2 --epochs 20 --beta-schedule cyclical \\
        --beta-params n_cycles=4,ratio=0.5 --free-bits 0.1 --out runs/mnist-z2
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from minivae import data, diagnostics, schedules  # noqa: E402
from minivae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from minivae.elbo import FREE_BITS_MODES, NonFiniteLossError, check_finite  # noqa: E402
from minivae.engine import Tensor, no_grad  # noqa: E402
from minivae.train import reuse_freed_memory  # noqa: E402
from minivae.fileio import write_json  # noqa: E402
from minivae.models import MLPVAE  # noqa: E402
from minivae.optim import Adam, clip_grad_norm  # noqa: E402

ARCHITECTURE = ("dataset", "hidden", "latent", "activation", "likelihood", "dtype")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", help="folder holding the four IDX .gz files (else the cache "
                   "$MINIVAE_DATA or ~/.cache/minivae, downloading when online)")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=0.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--latent", type=int, default=20, help="latent dimensions d")
    p.add_argument("--hidden", type=int, nargs="+", default=[400], help="hidden layer sizes")
    p.add_argument("--activation", choices=["relu", "tanh", "softplus"], default="relu")
    p.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli")
    p.add_argument("--binarize", choices=["none", "dynamic", "static", "threshold"], default="none",
                   help="none: grayscale in [0,1]; dynamic: resample Bernoulli(x) every batch; "
                   "static: sample once (seeded); threshold: x > 0.5")
    p.add_argument("--beta", type=float, default=1.0, help="KL weight (the schedule's final value)")
    p.add_argument("--beta-schedule", choices=sorted(schedules.SCHEDULES), default="constant",
                   help="KL annealing as a function of the global step")
    p.add_argument("--beta-params", default="", help="schedule parameters as k=v,k=v (steps count "
                   "minibatches; total_steps defaults to the whole run). Schedules: "
                   + schedules._usage().replace("%", "%%"))
    p.add_argument("--free-bits", type=float, default=0.0, help="free bits lambda, nats per dimension")
    p.add_argument("--free-bits-mode", choices=FREE_BITS_MODES, default="batch_dim")
    p.add_argument("--iw-samples", type=int, default=0, help="K for the importance-weighted test "
                   "NLL after training (0: skip; 5000 is the usual, and slow)")
    p.add_argument("--iw-examples", type=int, default=0, help="evaluate the IW NLL on this many test "
                   "images (0: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", default="runs/mnist-vae", help="output folder")
    p.add_argument("--resume", help="checkpoint to continue from (same architecture)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "latent"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.beta < 0 or args.free_bits < 0 or args.clip < 0 or args.iw_samples < 0:
        p.error("--lr must be > 0 and --beta, --free-bits, --clip, --iw-samples >= 0")
    if any(h < 1 for h in args.hidden):
        p.error("--hidden sizes must be >= 1")
    return args


def beta_schedule(args, total_steps):
    """beta(t) from --beta-schedule, --beta-params and --beta (scaling the schedule's 0..1 range)."""
    try:
        fn = schedules.from_flags(args.beta_schedule, args.beta_params, total_steps)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return lambda t: args.beta * fn(t)


def load_data(args, dtype):
    try:
        with warnings.catch_warnings():  # the fallback warning: we print our own line below
            warnings.simplefilter("ignore", UserWarning)
            x_train, y_train, x_test, y_test, info = data.load_train_test(
                args.dataset, data_dir=args.data_dir, download=not args.no_download, dtype=dtype)
    except (data.DataError, data.DataUnavailable) as err:
        raise SystemExit(f"data: {err}") from None
    if info["fallback"]:
        print(f"Full {args.dataset} unavailable ({info['reason']}); training on the bundled MNIST "
              f"test set: {info['n_train']} train / {info['n_test']} held-out images.")
    rng = np.random.default_rng([args.seed, 7])  # binarisation noise, apart from training noise
    if args.binarize in ("static", "threshold"):
        x_train = data.binarize(x_train, args.binarize, rng)
    if args.binarize != "none":  # the test set is binarised once, so every epoch sees the same one
        x_test = data.binarize(x_test, "static" if args.binarize == "dynamic" else args.binarize, rng)
    return x_train, y_train, x_test, y_test, info


def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()  # large temporaries without page faults (see its docstring)
    dtype = np.dtype(args.dtype)
    os.makedirs(args.out, exist_ok=True)
    x_train, _, x_test, y_test, data_info = load_data(args, dtype)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    beta_fn = beta_schedule(args, args.epochs * steps_per_epoch)

    rng = np.random.default_rng(args.seed)
    model = MLPVAE(784, args.hidden, args.latent, args.activation, args.likelihood, rng=rng, dtype=dtype)
    optimizer = Adam(model.parameters(), lr=args.lr)
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress")}
    history, step, start_epoch = [], 0, 0
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    if args.resume:
        history, step, start_epoch = resume(args, model, optimizer, rng)

    for epoch in range(start_epoch, args.epochs):
        t0, totals, n_seen = time.perf_counter(), {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0}, 0
        bar = progress(data.batches(len(x_train), args.batch_size, rng), steps_per_epoch, epoch, args)
        for idx in bar:
            x = x_train[idx]  # (B, 784)
            if args.binarize == "dynamic":
                x = data.binarize(x, "dynamic", rng)
            eps = rng.standard_normal((len(idx), args.latent)).astype(dtype)  # reparameterisation noise
            beta = beta_fn(step)
            objective, stats = model.loss(x, eps, beta, args.free_bits, args.free_bits_mode)
            try:
                check_finite(stats, step)
            except NonFiniteLossError as err:
                raise SystemExit(f"{err} Last good checkpoint: {ckpt_path}") from None
            optimizer.zero_grad()
            objective.backward()
            if args.clip:
                clip_grad_norm(model.parameters(), args.clip)
            optimizer.step()
            step += 1
            for key in totals:
                totals[key] += stats[key] * len(idx)
            n_seen += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(neg_elbo=f"{totals['neg_elbo'] / n_seen:.2f}", beta=f"{beta:.3f}")

        test = diagnostics.evaluate_elbo(model, x_test, np.random.default_rng([args.seed, epoch, 1]))
        record = {"epoch": epoch + 1, "train_neg_elbo": totals["neg_elbo"] / n_seen,
                  "train_rec": totals["rec"] / n_seen, "train_kl": totals["kl"] / n_seen,
                  "test_neg_elbo": test["neg_elbo"], "test_rec": test["rec"], "test_kl": test["kl"],
                  "beta": beta_fn(step - 1), "seconds": time.perf_counter() - t0}
        history.append(record)
        print(f"epoch {epoch + 1:3d}/{args.epochs}  train -ELBO {record['train_neg_elbo']:8.2f}  "
              f"test -ELBO {record['test_neg_elbo']:8.2f}  rec {record['test_rec']:7.2f}  "
              f"KL {record['test_kl']:6.2f}  beta {record['beta']:.3f}  {record['seconds']:5.1f} s",
              flush=True)
        save_checkpoint(ckpt_path, params=model.state_dict(), optimizer=optimizer.state_dict(),
                        config=config, step=step, epoch=epoch + 1, history=history,
                        rng=rng.bit_generator.state)

    mu, _ = diagnostics.encode_all(model, x_test)
    n_active, _ = diagnostics.active_units(mu)
    iw_nll = None
    if args.iw_samples:
        x_iw = x_test[:args.iw_examples or len(x_test)]
        t0 = time.perf_counter()
        iw_nll = -float(np.mean(diagnostics.iw_log_likelihood(
            model, x_iw, args.iw_samples, np.random.default_rng([args.seed, 2]))))
        print(f"importance-weighted test NLL (K={args.iw_samples}, {len(x_iw)} images): "
              f"{iw_nll:.2f} nats ({time.perf_counter() - t0:.0f} s)")
    print(f"active units: {n_active} of {args.latent}")
    final_kl = diagnostics.evaluate_elbo(model, x_test, np.random.default_rng([args.seed, 3]))["kl_per_dim"]
    write_json(os.path.join(args.out, "metrics.json"), {
        "config": config, "data": data_info, "epochs": history, "test_iw_nll": iw_nll,
        "iw_samples": args.iw_samples or None, "active_units": n_active,
        "kl_per_dim": [float(v) for v in final_kl]})
    if not args.no_plots:
        make_figures(args, model, x_test, y_test, mu, history, beta_fn, steps_per_epoch, final_kl)
    print(f"wrote {args.out}/metrics.json, checkpoint.npz" + ("" if args.no_plots else " and figures"))
    return history


def resume(args, model, optimizer, rng):
    """Load a checkpoint into model, optimizer and rng; return (history, step, epoch)."""
    try:
        state = load_checkpoint(args.resume)
        saved = state["config"]
        changed = [k for k in ARCHITECTURE if saved.get(k) != vars(args).get(k)]
        if changed:
            raise CheckpointError(f"{args.resume} was trained with a different " + ", ".join(
                f"{k} ({saved.get(k)} there, {vars(args).get(k)} here)" for k in changed))
        model.load_state_dict(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
    except (CheckpointError, KeyError, ValueError) as err:
        raise SystemExit(f"--resume: {err}") from None
    print(f"resumed from {args.resume} after epoch {state['epoch']} (step {state['step']})")
    return state["history"], state["step"], state["epoch"]


def progress(iterable, total, epoch, args):
    if args.no_progress:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True)


def make_figures(args, model, x_test, y_test, mu, history, beta_fn, steps_per_epoch, kl_per_dim):
    """The PNGs: samples, reconstructions, curves, beta schedule, latent space, interpolations."""
    try:
        from minivae import plot
    except ImportError as err:
        print(f"skipping figures: {err}")
        return
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    rng = np.random.default_rng([args.seed, 4])
    with no_grad():
        plot.image_grid(model.sample(64, rng), out("samples.png"), title="samples from p(x|z), z ~ N(0, I)")
        plot.reconstructions(x_test[:10], model.reconstruct(x_test[:10]), out("reconstructions.png"), n=10)
        plot.latent_scatter(mu[:5000], y_test[:5000], out("latent.png"), title="posterior means of test images")
        # interpolate between the posterior means of the first test images of digits 0->1, 2->3, ...
        first = {int(label): i for i, label in reversed(list(enumerate(y_test)))}
        pairs = [(first[a], first[a + 1]) for a in range(0, 9, 2) if a in first and a + 1 in first]
        steps = np.linspace(0, 1, 10, dtype=mu.dtype)[:, None]
        rows = [model.mean_image(model.decode(Tensor((1 - steps) * mu[a] + steps * mu[b]))) for a, b in pairs]
        plot.interpolation_grid(rows, out("interpolation.png"), title="interpolating between posterior means")
        if args.latent == 2:
            plot.latent_grid(lambda z: model.mean_image(model.decode(Tensor(z.astype(mu.dtype)))),
                             out("latent_grid.png"))
    plot.training_curves(history, out("curves.png"))
    plot.beta_schedule(beta_fn, args.epochs * steps_per_epoch, out("beta_schedule.png"))
    plot.kl_per_dim(kl_per_dim, out("kl_per_dim.png"), threshold=args.free_bits or None,
                    threshold_label="free bits")


if __name__ == "__main__":
    main()
