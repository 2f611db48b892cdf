"""Train a TD-VAE on a sequence task, then measure its jumpy rollouts against baselines.

--task oscillator: noisy 1-D harmonic oscillators of 200 steps; jumps d = t2 - t1 from 1..10
(probability 0.8) or 1..120 (0.2), d fed to q_S and p_T. Rollouts from t = 60: one jump of 20 or
100 steps, then 20 steps of 1, scored by a fitted sinusoid (frequency, amplitude, phase) and the
RMSE against the noiseless continuation, beside the median frequency, the zero prediction and a
same-size GRU trained by next-step regression; and a linear probe of frequency and amplitude
from the belief b_60 of either GRU. --task moving-digit: a 14x14 MNIST digit moving one pixel
per frame left or right, 20 frames, d uniform on 1..4 and not fed to p_T; 5 rollout steps after
1, 2, 5 and 11 context frames, scored by direction, jump size and the digit's identity.

    python scripts/train_tdvae.py --task oscillator --out runs/tdvae-oscillator
    python scripts/train_tdvae.py --task moving-digit --data-dir path/to/mnist --out runs/tdvae-digit
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: thread hand-offs cost more than they save

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from minivae import data, flags, schedules, sequences, tdvae  # noqa: E402
from minivae.allocator import reuse_freed_memory  # noqa: E402
from minivae.engine import no_grad  # noqa: E402
from minivae.fileio import write_json  # noqa: E402
from minivae.optim import Adam  # noqa: E402
from minivae.run import Run, plot_module, resume, stop_if_not_finite  # noqa: E402

ARCHITECTURE = ("task", "pre", "belief", "latent", "hidden", "dtype")
TASKS = {  # sequence length, pairs' jumps (max d, long max d, p(long)), sizes, default epochs
    "oscillator": dict(length=200, max_delta=10, long_delta=120, p_long=0.2, pre=32, belief=32, epochs=16),
    "moving-digit": dict(length=20, max_delta=4, long_delta=0, p_long=0.0, pre=128, belief=64, epochs=12),
}
JUMPS, CONTEXTS, T1 = (20, 100), (1, 2, 5, 11), 60


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="oscillator", help="which sequences to learn")
    p.add_argument("--quick", action="store_true", help="a short run (about a fifth of the updates) that still draws trained pictures")
    p.add_argument("--epochs", type=int, help="epochs of --steps-per-epoch updates (default: 16 oscillator, 12 moving-digit)")
    p.add_argument("--steps-per-epoch", type=int, default=250, help="updates per epoch (fresh sequences each batch)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per update")
    p.add_argument("--pairs", type=int, default=4, help="(t1, t2) pairs per sequence, sharing one GRU pass")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--warmup-steps", type=int, default=1000, help="updates over which the KL terms' weight "
                   "rises linearly from 0 to 1 (0: the loss of eq. 6 from the start)")
    p.add_argument("--max-delta", type=int, help="largest short jump d (default: 10 oscillator, 4 moving-digit)")
    p.add_argument("--p-long", type=float, help="oscillator: probability of a jump from 1..120 instead (default 0.2)")
    p.add_argument("--init-log-sigma", type=float, help="p_B's initial log sigma (default: the layer's init, about 0)")
    p.add_argument("--latent", type=int, default=8, help="size of the state z")
    p.add_argument("--hidden", type=int, default=50, help="hidden units of the D blocks")
    p.add_argument("--pre", type=int, help="pre-processing MLP width (default: 32 oscillator, 128 moving-digit)")
    p.add_argument("--belief", type=int, help="GRU belief size (default: 32 oscillator, 64 moving-digit)")
    p.add_argument("--baseline-steps", type=int, default=1500, help="oscillator: updates of the next-step GRU")
    p.add_argument("--test-sequences", type=int, default=200, help="test sequences the rollouts are scored on")
    p.add_argument("--samples", type=int, default=5, help="rollouts drawn per test sequence")
    p.add_argument("--data-dir", help="moving-digit: folder of the MNIST IDX .gz files (else the cache, "
                   "downloading when online, else the bundled digits)")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    flags.add_run_flags(p, out=None)
    p.set_defaults(model="tdvae")  # not a flag: the checkpoint's config names the model for load_model
    args = p.parse_args(argv)
    args.p_long = TASKS[args.task]["p_long"] if args.p_long is None else args.p_long
    for name in ("pre", "belief", "epochs", "max_delta"):
        if getattr(args, name) is None:
            setattr(args, name, max(1, TASKS[args.task][name] // (5 if args.quick and name == "epochs" else 1)))
    if args.quick:
        args.baseline_steps //= 5
        args.warmup_steps //= 5
    args.out = args.out or f"runs/tdvae-{args.task}"
    if not 0 <= args.p_long <= (args.task == "oscillator"):
        p.error(f"--p-long must be in [0, 1] for the oscillator and 0 for the moving digit (got {args.p_long})")
    flags.check_flags(p, args, at_least_1=("epochs", "steps_per_epoch", "batch_size", "pairs", "max_delta", "latent", "hidden",
                                           "pre", "belief", "test_sequences", "samples"), positive=("lr",),
                      at_least_0=("baseline_steps", "warmup_steps"))
    return args


def load_digits(config):
    """Training and test digits as 14x14 images (N, 196) in [0, 1]."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x_train, _, x_test, _, info = data.load_train_test("mnist", data_dir=config.get("data_dir"),
                                                               download=not config.get("no_download"))
    except (data.DataError, data.DataUnavailable) as err:
        raise SystemExit(f"data: {err}") from None
    if info["fallback"]:
        print(f"Full MNIST unavailable ({info['reason']}); using the bundled digits: "
              f"{info['n_train']} train / {info['n_test']} held out.")
    return sequences.shrink(x_train), sequences.shrink(x_test), info


def batch(task, n, digits, rng, dtype):
    """n fresh training sequences (n, T, n_obs)."""
    if task == "oscillator":
        return sequences.oscillator(n, TASKS[task]["length"], rng)[0].astype(dtype)
    return sequences.moving_digits(digits[rng.integers(0, len(digits), n)], TASKS[task]["length"], rng)[0].astype(dtype)


def update(model, optimizer, x, args, rng, run):
    """One Adam step on the TD-VAE loss of `args.pairs` random pairs per sequence; returns its terms."""
    task = TASKS[args.task]
    t1, t2 = tdvae.draw_pairs(rng, (len(x), args.pairs), task["length"], args.max_delta, task["long_delta"], args.p_long)
    eps1, eps2 = (rng.standard_normal((len(x), args.pairs, args.latent)).astype(x.dtype) for _ in range(2))
    beta = schedules.linear_warmup(run.step, args.warmup_steps) if args.warmup_steps else 1.0
    objective, stats = model.loss(x, t1, t2, eps1, eps2, beta)
    stop_if_not_finite(stats, run.step, run.last_checkpoint)
    optimizer.zero_grad()
    objective.backward()
    optimizer.step()
    return stats


def train_next_step(args, dtype):
    """The baseline: a GRU of the TD-VAE's sizes trained by next-step regression on fresh sequences."""
    rng = np.random.default_rng([args.seed, 3])
    model = tdvae.NextStepGRU(1, rng, n_pre=args.pre, n_belief=args.belief, dtype=dtype)
    optimizer, loss = Adam(model.parameters(), lr=args.lr), None
    for step in range(args.baseline_steps):
        optimizer.zero_grad()
        loss = model.loss(batch("oscillator", args.batch_size, None, rng, dtype))
        loss.backward()
        optimizer.step()
    print(f"next-step GRU: {args.baseline_steps} updates" + (f", last training NLL {float(loss.data):.3f} nats per step" if loss is not None else ""))
    return model


def test_oscillators(config):
    """Test sequences, their context up to t = 60 and the noiseless truth after it (t = 61..180)."""
    obs, state = sequences.oscillator(config["test_sequences"], T1 + 1, np.random.default_rng([config["seed"], 7]))
    truth = sequences.continuation(state["x"][:, T1], state["v"][:, T1], state["omega"], max(JUMPS) + 20)
    return obs.astype(config["dtype"]), truth, state["omega"]


def probe_r2(features, targets, n_fit):
    """R^2 on held-out rows of a least-squares linear map (with intercept) fitted on the first n_fit rows."""
    a = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(a[:n_fit], targets[:n_fit], rcond=None)
    resid, centred = targets[n_fit:] - a[n_fit:] @ coef, targets[n_fit:] - targets[n_fit:].mean(axis=0)
    return 1 - (resid ** 2).sum(axis=0) / (centred ** 2).sum(axis=0)


def measure_oscillator(model, baseline, config):
    """Frequency, amplitude, phase and RMSE of the rollouts after each jump, beside the baselines; the probes."""
    obs, truth, omega = test_oscillators(config)
    S, rng = config["samples"], np.random.default_rng([config["seed"], 8])
    ctx = np.repeat(obs, S, axis=0)  # S rollouts per sequence
    gru_roll = baseline.rollout(obs, max(JUMPS) + 20)[..., 0]  # (n, 120): t = 61..180
    metrics = {}
    for jump in JUMPS:
        window = truth[:, jump - 1:jump + 20]  # t = 60 + jump .. 80 + jump
        w_true, a_true, ph_true = sequences.fit_sinusoid(window)
        predictions = {"tdvae": model.rollout(ctx, [jump] + [1] * 20, rng)[..., 0],
                       "next_step_gru": gru_roll[:, jump - 1:jump + 20]}
        for name, pred in predictions.items():
            k = len(pred) // len(window)  # rollouts per sequence
            w, a, ph = sequences.fit_sinusoid(pred)
            rep = lambda v: np.repeat(v, k, axis=0)  # noqa: E731
            metrics[f"{name}_jump{jump}"] = {
                "freq_abs_err": float(np.mean(np.abs(w - rep(omega)))),
                "amp_rel_err": float(np.mean(np.abs(a - rep(a_true)) / rep(a_true))),
                "phase_err": float(np.mean(sequences.phase_error(ph, rep(ph_true)))),
                "rmse": float(np.sqrt(np.mean((pred - rep(window)) ** 2)))}
        metrics[f"baselines_jump{jump}"] = {
            "median_freq_abs_err": float(np.mean(np.abs(np.median(sequences.OMEGA) - omega))),
            "median_amp_rel_err": float(np.mean(np.abs(np.mean(sequences.AMPLITUDE) - a_true) / a_true)),
            "random_phase_err": float(np.pi / 2), "zero_rmse": float(np.sqrt(np.mean(window ** 2)))}
    metrics["latent_use"] = latent_use(model, config)
    probe_obs, probe_truth, probe_omega = test_oscillators({**config, "test_sequences": 5 * len(obs), "seed": config["seed"] + 1000})
    targets = np.stack([np.concatenate([probe_omega, omega]),
                        np.concatenate([sequences.fit_sinusoid(probe_truth[:, :40])[1], sequences.fit_sinusoid(truth[:, :40])[1]])], 1)
    for name, net in (("tdvae", model), ("next_step_gru", baseline)):
        b = net.beliefs(np.concatenate([probe_obs, obs]))[:, T1].data
        r2 = probe_r2(b, targets, len(probe_obs))
        metrics[f"probe_r2_{name}"] = {"omega": float(r2[0]), "amplitude": float(r2[1])}
    return metrics


def latent_use(model, config, t=T1):
    """What z carries, on test sequences of 200 steps: the spread over sequences and times of p_B's
    mean per dimension (0 for a dimension that carries nothing) and p_B's mean sigma; the one-step
    prediction of p_T (d = 1) from p_B's mean at t, as the RMSE of z[0] against the true next
    position, beside repeating the true position; kl_t2 at t1 = t for jumps of 1, 10 and 100."""
    obs, state = sequences.oscillator(config["test_sequences"], 200, np.random.default_rng([config["seed"], 10]))
    obs, rng, n = obs.astype(config["dtype"]), np.random.default_rng([config["seed"], 11]), len(obs)
    mu, logvar = model.p_B(model.beliefs(obs)[:, t:t + 40])  # (n, 40, latent): 40 steps from t
    step, _ = model.transition(mu.reshape(n * 40, -1), np.ones(n * 40))
    x_next, x_now = state["x"][:, t + 1:t + 41], state["x"][:, t:t + 40]
    out = {f"pB_mean_spread_z{k}": float(mu.data[..., k].std()) for k in range(model.n_latent)}
    out.update({"pB_sigma_mean": float(np.exp(0.5 * logvar.data).mean()),
                "pT_step1_rmse": float(np.sqrt(np.mean((step.data[:, 0].reshape(n, 40) - x_next) ** 2))),
                "repeat_position_rmse": float(np.sqrt(np.mean((x_now - x_next) ** 2)))})
    for d in (1, 10, 100):
        eps = [rng.standard_normal((n, 1, model.n_latent)).astype(obs.dtype) for _ in range(2)]
        out[f"kl_t2_jump{d}"] = float(model.loss_terms(obs, np.full((n, 1), t), np.full((n, 1), t + d), *eps)["kl_t2"].data.mean())
    return out


def measure_digits(model, config, x_train, x_test):
    """Direction accuracy, jump size and aligned BCE of 5-step rollouts after each context length."""
    rng = np.random.default_rng([config["seed"], 8])
    digits = x_test[:config["test_sequences"]]
    frames, direction = sequences.moving_digits(digits, TASKS["moving-digit"]["length"], rng)
    frames = frames.astype(config["dtype"])
    mean_frame = np.full(196, np.repeat(x_train.reshape(-1, 14, 14).mean(axis=(0, 2)), 14))  # every column alike
    metrics = {"baselines": {
        "copy_last_frame_bce": float(np.mean(sequences.aligned_bce(frames[:, 0], digits))),  # the digit itself
        "mean_frame_bce": float(np.mean(sequences.aligned_bce(mean_frame, digits))),
        "other_digit_bce": float(np.mean(sequences.aligned_bce(np.roll(digits, 1, axis=0), digits)))}}
    for c in CONTEXTS:
        roll = model.rollout(np.repeat(frames[:, :c], config["samples"], axis=0), [1] * 5, rng)  # (n S, 5, 196)
        seen = np.concatenate([np.repeat(frames[:, c - 1:c], config["samples"], axis=0), roll], axis=1)
        shifts = sequences.best_shift(seen[:, :-1], seen[:, 1:])  # (n S, 5)
        truth = np.repeat(direction, config["samples"])
        metrics[f"context{c}"] = {
            "direction_accuracy": float(np.mean(np.sign(shifts.sum(axis=1)) == truth)),
            "step_direction_accuracy": float(np.mean(np.sign(shifts) == truth[:, None])),
            "mean_jump_px": float(np.mean(np.abs(shifts))),
            "aligned_bce": float(np.mean(sequences.aligned_bce(roll, np.repeat(digits, config["samples"], axis=0)[:, None])))}
    return metrics


def pictures(model, config, out, baseline=None, x_test=None):
    """The rollout figures of a trained model; returns the file names written."""
    plot = plot_module()
    if plot is None:
        return []
    rng = np.random.default_rng([config["seed"], 9])
    if config["task"] == "moving-digit":
        x_test = load_digits(config)[1] if x_test is None else x_test
        frames, _ = sequences.moving_digits(x_test[:8], 16, rng)
        frames = frames.astype(config["dtype"])
        for c in (11, 1):
            roll = model.rollout(frames[:, :c], [1] * (16 - c), rng)
            plot.interpolation_grid(list(np.concatenate([frames[:, :c], roll], axis=1)), os.path.join(out, f"rollouts_context{c}.png"),
                                    image_shape=(14, 14), title=f"{c} context frame(s), then {16 - c} jumpy rollout steps")
        return ["rollouts_context11.png", "rollouts_context1.png"]
    obs, truth, omega = test_oscillators({**config, "test_sequences": 4})
    panels = []
    for i in range(4):
        for jump in JUMPS:
            lines = [(np.arange(T1 + 1), obs[i, :, 0], {"color": "0.6", "lw": 0.8, "label": "observed"}),
                     (np.arange(T1 + 1, T1 + 121), truth[i], {"color": "k", "lw": 1, "label": "noiseless truth"})]
            roll = model.rollout(np.repeat(obs[i:i + 1], 5, axis=0), [jump] + [1] * 20, rng)[..., 0]
            lines += [(np.arange(T1 + jump, T1 + jump + 21), r, {"color": "C0", "lw": 1, "label": "TD-VAE rollouts" if k == 0 else "_"})
                      for k, r in enumerate(roll)]
            if baseline is not None:
                lines.append((np.arange(T1 + 1, T1 + 121), baseline.rollout(obs[i:i + 1], 120)[0, :, 0],
                              {"color": "C3", "lw": 0.8, "ls": "--", "label": "next-step GRU"}))
            panels.append((f"omega {omega[i]:.2f}: from t = {T1}, a jump of {jump}, then 20 of 1", lines))
    from minivae.charts import line_panels  # matplotlib is there: plot_module() returned plot
    line_panels(panels, os.path.join(out, "rollouts.png"), title="Oscillator rollouts (Figure 4 of Gregor et al. 2019, small)")
    return ["rollouts.png"]


def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()
    run, dtype = Run(args, argv, __file__), np.dtype(args.dtype)
    rng, config = np.random.default_rng(args.seed), flags.run_config(args)
    x_train = x_test = info = None
    if args.task == "moving-digit":
        x_train, x_test, info = load_digits(config)
    model = tdvae.from_config(config, np.random.default_rng([args.seed, 1]))
    optimizer = Adam(model.parameters(), lr=args.lr)
    history, start, step = [], 0, 0
    if args.resume:
        state = resume(args.resume, args, ARCHITECTURE, model, optimizer, rng)
        history, start, step = state["history"], state["epoch"], state["step"]
    print(f"TD-VAE on {args.task}: {model.num_parameters()} parameters, {args.epochs} epochs of {args.steps_per_epoch} updates")
    began = time.time()
    with run.stop_cleanly():
        for epoch in range(start, args.epochs):
            totals, tick = {}, time.time()
            for _ in run.progress(range(args.steps_per_epoch), args.steps_per_epoch, epoch, step):
                stats = update(model, optimizer, batch(args.task, args.batch_size, x_train, rng, dtype), args, rng, run)
                totals = {k: totals.get(k, 0.0) + v / args.steps_per_epoch for k, v in stats.items()}
            step = run.step
            history.append({"epoch": epoch + 1, "step": step, **totals, "loss": sum(totals.values()), "seconds": time.time() - tick})
            print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {history[-1]['loss']:.3f} = rec {totals['rec']:.3f} "
                  f"+ kl_t1 {totals['kl_t1']:.3f} + kl_t2 {totals['kl_t2']:.3f}  ({history[-1]['seconds']:.0f} s)", flush=True)
            run.save(model, optimizer, rng, config=config, step=step, epoch=epoch + 1, history=history)
    metrics = {"config": config, "history": history, "train_seconds": time.time() - began, "data": info}
    baseline = train_next_step(args, dtype) if args.task == "oscillator" else None
    with no_grad():
        if args.task == "oscillator":
            metrics["measures"] = measure_oscillator(model, baseline, config)
        else:
            metrics["measures"] = measure_digits(model, config, x_train, x_test)
        metrics["seconds"] = time.time() - began
        written = [] if args.no_plots else pictures(model, config, args.out, baseline, x_test)
    write_json(run.path("metrics.json"), metrics)
    for name, values in metrics["measures"].items():
        print(f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"wrote metrics.json, checkpoint.npz{''.join(', ' + w for w in written)} to {args.out} ({metrics['seconds']:.0f} s)")
    return metrics


if __name__ == "__main__":
    main()
