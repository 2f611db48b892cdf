"""Train a VAE on MNIST or Fashion-MNIST with minivae, on a laptop CPU.

Defaults are the PyTorch VAE example's recipe (pytorch/examples vae/main.py): grayscale pixels
with the Bernoulli ("BCE") likelihood, 784-400-20 with ReLU, Adam 1e-3, batch 128, 10 epochs.
Without the full data set and without a network it trains on the MNIST test set that ships
with minivae (8,000 train / 2,000 held out) and says so. --conditional trains a conditional VAE
(the digit's label enters encoder and decoder; its test -ELBO bounds -log p(x|y), not -log p(x))
with a 2-D latent unless --latent says otherwise, draws its samples one row per label, and
reports its label control: how often a classifier trained on the same images reads a sample
decoded with label c as c, per class (metrics.json, "label_control"; docs/guide.md, section 7).
--likelihood gaussian trains a Gaussian decoder whose variance --x-logvar learns or fixes.

    python scripts/train_mnist_vae.py --data-dir path/to/mnist --out runs/mnist
    python scripts/train_mnist_vae.py --conditional --data-dir path/to/mnist --out runs/mnist-cvae
    python scripts/train_mnist_vae.py --latent 2 --epochs 20 --beta-schedule cyclical \\
        --beta-params n_cycles=4,ratio=0.5 --free-bits 0.1 --out runs/mnist-z2
"""
import argparse
import sys
import time
import warnings

import numpy as np

import digit_classifier  # the sibling script: the classifier that checks a conditional VAE's samples
import mnist_figures  # the sibling script: this script's PNGs
from minivae import data, diagnostics, fast, flags, schedules
from minivae.allocator import reuse_freed_memory
from minivae.engine import no_grad
from minivae.fileio import write_json
from minivae.models import LABEL_INTO, LEARNED_X_LOGVAR, make_model
from minivae.fast import FusedAdam
from minivae.optim import clip_grad_norm
from minivae.run import Run, progress, resume, stop_if_not_finite, warn_if_one_batch

CONDITIONAL_LATENT = 2  # --conditional's default latent size: see docs/guide.md, section 7
ARCHITECTURE = ("dataset", "hidden", "latent", "activation", "likelihood", "x_logvar", "conditional", "label_into",
                "dtype")


def x_logvar_flag(text):
    """argparse type of --x-logvar: learned-scalar, learned-pixel, or a finite number (fixed)."""
    return text if text in LEARNED_X_LOGVAR else flags.finite_float(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist", help="which image set")
    p.add_argument("--data-dir", help="folder holding the four IDX .gz files (else the cache "
                   "$MINIVAE_DATA or ~/.cache/minivae, downloading when online)")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training images (with --time-budget: at most)")
    p.add_argument("--batch-size", type=int, default=128, help="images per Adam step")
    p.add_argument("--lr", type=flags.finite_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--clip", type=flags.finite_float, default=0.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--latent", type=int, default=argparse.SUPPRESS, help=f"latent dimensions d (default: 20; {CONDITIONAL_LATENT} with "
                   "--conditional, so that z keeps the style and leaves the class to the label)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400], help="hidden layer sizes")
    p.add_argument("--activation", choices=["relu", "tanh", "softplus"], default="relu", help="hidden units' nonlinearity")
    p.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli",
                   help="bernoulli: the BCE of the pixels; gaussian: a Gaussian density (L2 plus its variance)")
    p.add_argument("--x-logvar", type=x_logvar_flag, default="learned-scalar", help="gaussian decoder's "
                   "log-variance: learned-scalar, learned-pixel (one per pixel) or a fixed number")
    p.add_argument("--conditional", action="store_true", help="conditional VAE: the one-hot label enters "
                   "encoder and decoder (Sohn et al. 2015)")
    p.add_argument("--label-into", choices=LABEL_INTO, default="input", help="with --conditional: where "
                   "the decoder reads the label: with z at its input (Sohn et al.), or at every layer "
                   "(docs/guide.md, section 7, measures both)")
    p.add_argument("--binarize", choices=["none", "dynamic", "static", "threshold"], default="none",
                   help="none: grayscale in [0,1]; dynamic: resample Bernoulli(x) every batch; "
                   "static: sample once (seeded); threshold: x > 0.5")
    flags.add_kl_flags(p)
    p.add_argument("--output-bias", choices=["random", "data"], default="random", help="data: start the "
                   "decoder's output bias at the log-odds of the mean training image (its mean, Gaussian)")
    p.add_argument("--iw-train", type=int, default=1, help="train on the K-sample importance-weighted "
                   "bound (IWAE, Burda et al. 2016) with this K; 1 is the ELBO")
    p.add_argument("--lr-schedule", choices=sorted(schedules.LR_SCHEDULES), default="constant",
                   help="learning rate over the run: constant, cosine decay to 0, or Burda et al.'s "
                   "3^i-epoch stages scaled to the run (steps, or the --time-budget)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up over "
                   "this many steps (0: off)")
    p.add_argument("--time-budget", type=flags.finite_float, default=0.0, help="stop training after "
                   "this many minutes of wall-clock (0: off; --epochs still caps the run), then evaluate")
    p.add_argument("--iw-samples", type=int, default=0, help="K for the importance-weighted test "
                   "NLL after training (0: skip; 5000 is the usual, and slow)")
    p.add_argument("--iw-examples", type=int, default=0, help="evaluate the IW NLL on this many test "
                   "images (0: all)")
    flags.add_run_flags(p, out="runs/mnist-vae")
    p.set_defaults(model="mlp_vae")  # not a flag: the checkpoint's config names the model for load_model
    args = p.parse_args(argv)
    if "latent" not in vars(args):  # not given: the default depends on --conditional
        args.latent = CONDITIONAL_LATENT if args.conditional else 20
    if args.likelihood != "gaussian" and args.x_logvar != "learned-scalar":
        p.error("--x-logvar sets the variance of --likelihood gaussian; the Bernoulli decoder has none")
    if args.iw_train > 1 and args.free_bits:
        p.error("--iw-train K > 1 trains on the importance-weighted bound, which has no free bits: drop --free-bits")
    if args.conditional and args.iw_samples:
        p.error("--iw-samples estimates log p(x) of an unconditional model; drop it with --conditional")
    flags.check_flags(p, args, at_least_1=("epochs", "batch_size", "latent", "hidden", "iw_train"),
                      positive=("lr",),
                      at_least_0=("beta", "free_bits", "clip", "iw_samples", "iw_examples", "warmup_steps",
                                  "time_budget"))
    flags.warn_ignored(p, args, {name: when for name, used, when in [
        ("iw_examples", args.iw_samples, "without --iw-samples"), ("free_bits_mode", args.free_bits, "without --free-bits"),
        ("label_into", args.conditional, "without --conditional")] if not used})
    if not args.conditional:
        args.label_into = "input"  # an unconditional decoder reads no label; its config says so
    if args.data_dir is not None:  # complete: the bundled fallback is for runs that asked for no folder
        try:
            data.check_data_dir(args.dataset, args.data_dir)
        except data.DataError as err:
            p.error(f"--data-dir: {err}")
    return args


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


class TimeBudget:
    """--time-budget: minutes of training over the whole run, a resumed run's epochs included (0: none).

    A finished epoch counts with its recorded seconds (training and its test evaluation); the
    epoch in progress counts from its start.
    """

    def __init__(self, minutes, history):
        self.seconds = 60 * minutes
        self.spent = sum(record["seconds"] for record in history)  # the finished epochs
        self.epoch_start = None  # time.perf_counter() when the epoch in progress began

    def start_epoch(self):
        self.epoch_start = time.perf_counter()

    def end_epoch(self):
        """The seconds of the epoch that ends now, which count as spent from here on."""
        seconds = time.perf_counter() - self.epoch_start
        self.spent += seconds
        self.epoch_start = None
        return seconds

    def elapsed(self):
        """Seconds spent: the finished epochs' and the epoch in progress's so far."""
        if self.epoch_start is None:
            return self.spent
        return self.spent + time.perf_counter() - self.epoch_start

    def used(self):
        """The fraction of the budget used (0 without a budget), for the learning-rate schedule."""
        return self.elapsed() / self.seconds if self.seconds else 0.0

    def is_over(self):
        return self.seconds > 0 and self.elapsed() >= self.seconds


def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()  # large temporaries without page faults (see its docstring)
    dtype = np.dtype(args.dtype)
    run = Run(args, argv, __file__)  # the output folder, the last checkpoint, the clean stop
    with run.stop_cleanly():  # Ctrl-C, SIGTERM, a full disk: say where, keep the last checkpoint, print how to resume
        x_train, y_train, x_test, y_test, data_info = load_data(args, dtype)
        steps_per_epoch = -(-len(x_train) // args.batch_size)
        total_steps = args.epochs * steps_per_epoch
        warn_if_one_batch(args.batch_size, len(x_train), "images")
        beta_fn = flags.beta_schedule(args, total_steps)

        rng = np.random.default_rng(args.seed)
        config = flags.run_config(args)
        model = make_model(config, rng)
        if args.output_bias == "data":
            model.init_output_bias(x_train.mean(axis=0))
        optimizer = FusedAdam(model.parameters(), lr=args.lr)
        labels = {"y": y_test, "batch_size": len(x_test)} if args.conditional else {}  # for evaluate_elbo
        history, step, start_epoch = [], 0, 0
        if args.resume:
            state = resume(args.resume, args, ARCHITECTURE, model, optimizer, rng)
            history, step, start_epoch = state["history"], state["step"], state["epoch"]
            if history and cut_short(history[-1], steps_per_epoch):
                print(f"note: in the checkpoint, {cut_short(history[-1], steps_per_epoch)}")

        budget = TimeBudget(args.time_budget, history)
        for epoch in range(start_epoch, args.epochs):
            if budget.is_over():
                break
            budget.start_epoch()
            totals, n_seen, first_step = {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0}, 0, step
            bar = run.progress(data.batches(len(x_train), args.batch_size, rng), steps_per_epoch, epoch, step)
            for idx in bar:
                done = max(step / total_steps, budget.used())  # how far the run is, for the lr and beta schedules
                optimizer.lr = schedules.learning_rate(args.lr_schedule, args.lr, done, step, args.warmup_steps)
                x = x_train[idx]  # (B, 784)
                if args.binarize == "dynamic":
                    x = data.binarize(x, "dynamic", rng)
                beta = beta_fn(flags.beta_step(args, step, done, total_steps))
                y = y_train[idx] if args.conditional else None  # the labels, for the conditional VAE
                if args.iw_train > 1:  # K reparameterisation draws per image: (K, B, latent)
                    eps = rng.standard_normal((args.iw_train, len(idx), args.latent)).astype(dtype)
                    objective, stats = model.iw_loss(x, eps, beta, y=y)
                else:
                    eps = rng.standard_normal((len(idx), args.latent)).astype(dtype)  # reparameterisation noise
                    objective, stats = model.loss(x, eps, beta, args.free_bits, args.free_bits_mode, y=y)
                stop_if_not_finite(stats, step, run.last_checkpoint)  # before the update
                optimizer.zero_grad()
                objective.backward()
                if args.clip:
                    clip_grad_norm(model.parameters(), args.clip)
                optimizer.step()
                step += 1
                for key in totals:
                    totals[key] += stats[key] * len(idx)
                n_seen += len(idx)
                bar.set_postfix(neg_elbo=f"{totals['neg_elbo'] / n_seen:.2f}", beta=f"{beta:.3f}",
                                lr=f"{optimizer.lr:.2g}")
                if budget.is_over():  # out of time: evaluate this epoch
                    break

            test = diagnostics.evaluate_elbo(model, x_test, np.random.default_rng([args.seed, epoch, 1]), **labels)
            seconds = budget.end_epoch()
            record = {"epoch": epoch + 1, "train_neg_elbo": totals["neg_elbo"] / n_seen,
                      "train_rec": totals["rec"] / n_seen, "train_kl": totals["kl"] / n_seen,
                      "test_neg_elbo": test["neg_elbo"], "test_rec": test["rec"], "test_kl": test["kl"],
                      "beta": beta, "lr": optimizer.lr, "steps": step, "batches": step - first_step,
                      "seconds": seconds}
            history.append(record)
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train -ELBO {record['train_neg_elbo']:8.2f}  "
                  f"test -ELBO {record['test_neg_elbo']:8.2f}  rec {record['test_rec']:7.2f}  "
                  f"KL {record['test_kl']:6.2f}  beta {record['beta']:.3f}  {record['seconds']:5.1f} s",
                  flush=True)
            run.save(model, optimizer, rng, config=config, step=step, epoch=epoch + 1, history=history)

        if budget.is_over():
            print(f"time budget of {args.time_budget:g} min used after {len(history)} epochs ({step} steps)")
            if history and cut_short(history[-1], steps_per_epoch):
                print(cut_short(history[-1], steps_per_epoch))
        with no_grad():
            if args.conditional:
                mu = model.encode(x_test, y_test)[0].data
            else:
                mu = diagnostics.encode_all(model, x_test)[0]
        n_active, _ = diagnostics.active_units(mu)
        iw_nll = None
        if args.iw_samples:
            x_iw = x_test[:args.iw_examples or len(x_test)]
            t0 = time.perf_counter()
            iw_nll = -float(np.mean(fast.iw_log_likelihood(
                model, x_iw, args.iw_samples, np.random.default_rng([args.seed, 2]), progress=iw_progress(args))))
            print(f"importance-weighted test NLL (K={args.iw_samples}, {len(x_iw)} images): "
                  f"{iw_nll:.2f} nats ({time.perf_counter() - t0:.0f} s)")
        print(f"active units: {n_active} of {args.latent}")
        final_kl = diagnostics.evaluate_elbo(model, x_test, np.random.default_rng([args.seed, 3]), **labels)["kl_per_dim"]
        control = None
        if args.conditional:
            control = label_control(args, run.path, model, x_train, y_train, x_test, y_test)
        write_json(run.path("metrics.json"), {
            "config": config, "data": data_info, "epochs": history, "test_iw_nll": iw_nll,
            "iw_samples": args.iw_samples or None, "active_units": n_active,
            "kl_per_dim": [float(v) for v in final_kl], "label_control": control})
        if not args.no_plots:
            beta_curve = (beta_fn, total_steps)  # beta over the steps, as the loop read it
            if args.time_budget and step:  # read by the budget's clock: over the steps taken, evenly spaced in time
                beta_curve = (lambda t: beta_fn(flags.beta_step(args, t, t / step, total_steps)), step)
            mnist_figures.make_figures(args, run.path, model, x_test, y_test, mu, history, beta_curve, final_kl)
        print(f"wrote {args.out}/metrics.json, checkpoint.npz" + ("" if args.no_plots else " and figures"))
    return history


def label_control(args, output_path, model, x_train, y_train, x_test, y_test):
    """The conditional VAE's label control, printed and returned: digit_classifier.label_control
    and .relabelled (on the first 2,000 test images), with a classifier trained on this run's
    training images (cached in the run folder as classifier.npz).
    """
    clf, accuracy = digit_classifier.load_or_train(output_path("classifier.npz"), x_train, y_train, x_test,
                                                   y_test, seed=args.seed)
    rng = np.random.default_rng([args.seed, 5])
    control = digit_classifier.label_control(clf, model, rng)
    control.update(classifier_test_accuracy=accuracy,
                   relabelled=digit_classifier.relabelled(clf, model, x_test[:2000], y_test[:2000], rng))
    print(f"label control: {control['overall']:.1%} of prior samples decoded with label c are classified as c "
          f"(classifier test accuracy {accuracy:.1%}); per class: "
          + ", ".join(f"{c} {rate:.0%}" for c, rate in enumerate(control["per_class"])))
    print(f"  test images' codes decoded with another label c: {control['relabelled']:.1%} classified as c "
          "(lower: z carries the class)")
    return control


def cut_short(record, steps_per_epoch):
    """For an epoch the time budget ended before its last batch, a sentence saying so; else None."""
    batches = record.get("batches", steps_per_epoch)  # records written before "batches" existed: complete
    if batches >= steps_per_epoch:
        return None
    return (f"epoch {record['epoch']} ended early, after {batches} of its {steps_per_epoch} batches (time budget); "
            f"it counts as finished, and --resume continues with epoch {record['epoch'] + 1}, skipping the rest "
            f"of epoch {record['epoch']}")


def iw_progress(args):
    """Progress of the IW evaluation: a bar on a terminal, else a line at every tenth of the batches."""
    def wrap(batches, total):
        if not args.no_progress and sys.stderr.isatty():
            yield from progress(batches, total, "IW test NLL")
            return
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            yield batch
            if (i + 1) * 10 // total > i * 10 // total:
                print(f"  IW evaluation {100 * (i + 1) // total:3d}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    return wrap


if __name__ == "__main__":
    main()
