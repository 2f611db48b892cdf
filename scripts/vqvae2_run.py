"""The run behind `train_autoencoder.py --model vqvae2`: stage 1 trains the two-level VQ-VAE,
stage 2 its three GRU priors, then vqvae2_measure.py measures it against a flat VQ-VAE with as
many bits and draws the pictures.

Both stages checkpoint after every epoch into one checkpoint.npz (the priors' parameters are part
of the model, their optimiser is saved beside the autoencoder's), so --resume continues either
stage, and minivae.load_model rebuilds the whole model from it.

    python scripts/train_autoencoder.py --model vqvae2 --data-dir path/to/mnist --out runs/vqvae2
    python scripts/train_autoencoder.py --model vqvae2 --quick --data-dir path/to/mnist --out runs/vqvae2-quick
"""
import time
import warnings

import numpy as np

import vqvae2_measure
from minivae import data, flags, vqvae, vqvae2
from minivae.allocator import reuse_freed_memory
from minivae.run import Run, resume, stop_if_not_finite
from minivae.engine import no_grad
from minivae.fileio import write_json
from minivae.optim import Adam

QUICK = {"limit": 30000, "prior_epochs": 1}  # --quick: about 1.5 minutes of CPU
QUICK_STEPS = 705  # --quick's training steps (3 epochs of 30,000 images), whatever the data set's size
QUICK_HELP = (f"--limit 30000, epochs enough for {QUICK_STEPS} steps (3 on full MNIST), --prior-epochs 1, "
              "class consistency on 200 test images")
LEVELS = ("top", "bottom")
LOG2 = np.log(2.0)


def load_data(args, dtype):
    """x_train, y_train, x_test, y_test (pixels in [0, 1]) and provenance, all of them (the caller
    applies --limit); train_autoencoder.py reads MNIST through it too."""
    try:
        with warnings.catch_warnings():  # the fallback warning: we print our own line below
            warnings.simplefilter("ignore", UserWarning)
            x_train, y_train, x_test, y_test, info = data.load_train_test(
                "mnist", data_dir=args.data_dir, download=not args.no_download, dtype=dtype)
    except (data.DataError, data.DataUnavailable) as err:
        raise SystemExit(f"data: {err}") from None
    if info["fallback"]:
        print(f"Full MNIST unavailable ({info['reason']}); training on the bundled MNIST test set: "
              f"{info['n_train']} train / {info['n_test']} held-out images.")
    return x_train, y_train, x_test, y_test, info


def quantisers(model):
    """[(codebook, stats key of its codes, of its z_e)]: one per level of the flat or two-level model."""
    if isinstance(model, vqvae2.VQVAE2):
        return [(getattr(model, f"codebook_{name}"), f"codes_{name}", f"z_e_{name}") for name in LEVELS]
    return [(model.codebook, "codes", "z_e")]


def start_codebooks(model, x, rng, emas):
    """Put every code on an encoder output, level by level (the bottom's inputs depend on the top's codes)."""
    for level, (book, codes_key, z_e_key) in enumerate(quantisers(model)):
        with no_grad():
            stats = model.loss(x)[1]
        vqvae.restart_dead_codes(book, np.zeros(len(book.E.data)), stats[z_e_key], rng, emas[level])


def autoencoder_epoch(model, x_train, optimizer, emas, usage, rng, args, step, bar, checkpoint=None):
    """One epoch of stage 1 over the batches `bar` yields; returns (train averages, step, codes restarted).

    After each Adam step each level's EMA moves its codebook, and every --restart-every steps
    the codes no batch chose since the last restart are moved onto encoder outputs.
    """
    totals, n_seen, restarted = {}, 0, 0
    for idx in bar:
        objective, stats = model.loss(x_train[idx])
        stop_if_not_finite(stats, step, checkpoint)  # before the update
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        for (book, codes_key, z_e_key), ema, used in zip(quantisers(model), emas, usage):
            used += np.bincount(stats[codes_key].ravel(), minlength=len(used))
            ema.step(stats[z_e_key], stats[codes_key])
            if args.restart_every and (step + 1) % args.restart_every == 0:
                restarted += vqvae.restart_dead_codes(book, used, stats[z_e_key], rng, ema)
                used[:] = 0
        step += 1
        for key in ("objective", "rec"):
            totals[key] = totals.get(key, 0.0) + stats[key] * len(idx)
        n_seen += len(idx)
        bar.set_postfix(objective=f"{totals['objective'] / n_seen:.2f}")
    return {f"train_{k}": v / n_seen for k, v in totals.items()}, step, restarted


def prior_terms(model, top, bottom):
    """{name: (nll Tensor, nats per image)} of each prior of the two-level model on these codes."""
    losses = {"top_prior": model.top_prior.loss(top), "bottom_prior": model.bottom_prior.loss(bottom, top),
              "bottom_prior_alone": model.bottom_prior_alone.loss(bottom)}
    return {name: (nll, stats["nll"]) for name, (nll, stats) in losses.items()}


def prior_nll_bits(model, top, bottom, batch_size=1000):
    """Each prior's NLL in bits per image, averaged over the given codes."""
    totals = {}
    with no_grad():
        for i in range(0, len(top), batch_size):
            for name, (_, nats) in prior_terms(model, top[i:i + batch_size], bottom[i:i + batch_size]).items():
                totals[name] = totals.get(name, 0.0) + nats * len(top[i:i + batch_size])
    return {name: total / len(top) / LOG2 for name, total in totals.items()}


def evaluate(model, x, batch_size=1000):
    """Test reconstruction (BCE, nats per image), and per level the codes used and their perplexity."""
    rec = 0.0
    with no_grad():
        for i in range(0, len(x), batch_size):
            rec += model.loss(x[i:i + batch_size])[1]["rec"] * len(x[i:i + batch_size])
    result = {"test_rec": rec / len(x)}
    for name, codes, K in zip(LEVELS, model.codes(x), (model.n_codes_top, model.n_codes_bottom)):
        result[f"{name}_codes_used"] = int(len(np.unique(codes)))
        result[f"{name}_perplexity"] = vqvae.perplexity(codes, K)
    return result


def fill_code_defaults(args):
    """Codebook size and prior epochs left unset: 512 top codes (the bottom's K is --n-codes-bottom)
    and 2 prior epochs for vqvae2 (its priors see 20 codes per image), 64 codes and 10 prior epochs
    for vqvae."""
    if args.n_codes is None:
        args.n_codes = 512 if args.model == "vqvae2" else 64
    if args.prior_epochs is None:
        args.prior_epochs = 2 if args.model == "vqvae2" else 10


def train_model(args, argv=None, script=None):
    """Both stages, the measurements and the pictures; returns (metrics, model, x_test)."""
    if args.quick:
        vars(args).update(QUICK)
    reuse_freed_memory()  # large temporaries without page faults (see its docstring)
    run = Run(args, argv, script)  # the output folder, the last checkpoint, the clean stop
    dtype = np.dtype(args.dtype)
    x_all, y_all, x_test, y_test, data_info = load_data(args, dtype)
    x_train = x_all[:args.limit or len(x_all)]  # the classifier of the measurements trains on all of them
    steps_per_epoch = -(-len(x_train) // args.batch_size)  # the last batch may be short
    if args.quick:  # as many steps on the 8,000 bundled digits as on full MNIST
        args.epochs = -(-QUICK_STEPS // steps_per_epoch)
    rng = np.random.default_rng(args.seed)
    config = flags.run_config(args)
    model = vqvae2.make_model(config, rng)
    emas = [vqvae.EMACodebook(book, args.ema_decay) for book, _, _ in quantisers(model)]
    usage = [np.zeros(len(book.E.data), int) for book, _, _ in quantisers(model)]
    optimizer = Adam(model.autoencoder_parameters(), lr=args.lr)
    prior_optimizer = Adam([p for prior in model.priors().values() for p in prior.parameters()], lr=args.lr)
    history, prior_history, step, start_epoch, start_prior_epoch = [], [], 0, 0, 0
    if args.resume:
        import train_autoencoder  # the flags that fix the architecture
        architecture = (*train_autoencoder.ARCHITECTURE, "n_codes_bottom", "decoder")
        state = resume(args.resume, args, architecture, model, optimizer, rng,
                       needs=("prior_epoch",), ema_top=emas[0], ema_bottom=emas[1], prior_optimizer=prior_optimizer)
        history, step, start_epoch = state["history"], state["step"], state["epoch"]
        prior_history, start_prior_epoch = state["prior_history"], state["prior_epoch"]
        usage = [np.asarray(state["usage_top"]), np.asarray(state["usage_bottom"])]
    else:
        start_codebooks(model, x_train[:args.batch_size], rng, emas)

    def save(epoch, prior_epoch):
        run.save(model, optimizer, rng, config=config, step=step, epoch=epoch, history=history,
                     prior_epoch=prior_epoch, prior_history=prior_history, usage_top=usage[0],
                     usage_bottom=usage[1], ema_top=emas[0].state_dict(), ema_bottom=emas[1].state_dict(),
                     prior_optimizer=prior_optimizer.state_dict())

    with run.stop_cleanly():  # Ctrl-C or SIGTERM: say where, keep the last checkpoint, print how to resume
        for epoch in range(start_epoch, args.epochs):  # stage 1: the autoencoder
            t0, prior_history, start_prior_epoch = time.perf_counter(), [], 0  # new codes: the priors start again
            bar = run.progress(data.batches(len(x_train), args.batch_size, rng), steps_per_epoch, epoch, step)
            averages, step, restarted = autoencoder_epoch(model, x_train, optimizer, emas, usage, rng, args, step,
                                                          bar, run.last_checkpoint)
            record = {"epoch": epoch + 1, "steps": step, **averages, **evaluate(model, x_test),
                      "dead_codes_restarted": restarted, "seconds": time.perf_counter() - t0}
            history.append(record)
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train objective {record['train_objective']:8.2f}  "
                  f"test rec {record['test_rec']:7.2f}  codes used top {record['top_codes_used']} bottom "
                  f"{record['bottom_codes_used']}  {record['seconds']:5.1f} s", flush=True)
            save(epoch + 1, 0)

        codes_train, codes_test = model.codes(x_train), model.codes(x_test)
        for prior_epoch in range(start_prior_epoch, args.prior_epochs):  # stage 2: the priors
            t0, totals = time.perf_counter(), {}
            for idx in data.batches(len(x_train), args.batch_size, rng):
                terms = prior_terms(model, codes_train[0][idx], codes_train[1][idx])
                prior_optimizer.zero_grad()
                sum(nll for nll, _ in terms.values()).backward()
                prior_optimizer.step()
                for name, (_, nats) in terms.items():  # the average while training, in bits
                    totals[name] = totals.get(name, 0.0) + nats * len(idx) / LOG2 / len(x_train)
            record = {"prior_epoch": prior_epoch + 1, **{f"train_{k}_bits": v for k, v in totals.items()},
                      **{f"test_{k}_bits": v for k, v in prior_nll_bits(model, *codes_test).items()},
                      "seconds": time.perf_counter() - t0}
            prior_history.append(record)
            print(f"prior epoch {prior_epoch + 1:3d}/{args.prior_epochs}  test NLL (bits): top "
                  f"{record['test_top_prior_bits']:.1f}  bottom|top {record['test_bottom_prior_bits']:.1f}  "
                  f"bottom alone {record['test_bottom_prior_alone_bits']:.1f}  {record['seconds']:5.1f} s", flush=True)
            save(args.epochs, prior_epoch + 1)

        n = min(len(x_test), len(x_train))  # train vs test NLL of the final priors, on as many images each
        final = {"train": prior_nll_bits(model, *(c[:n] for c in codes_train)),
                 "test": prior_nll_bits(model, *codes_test)}
        metrics = {"config": config, "data": data_info, "epochs": history, "prior_epochs": prior_history,
                   "prior_nll_bits": final,
                   "train_seconds": sum(r["seconds"] for r in history),
                   "prior_seconds": sum(r["seconds"] for r in prior_history), **evaluate(model, x_test)}
        metrics.update(vqvae2_measure.measure(model, (x_all, y_all, x_test, y_test), codes_train,
                                              codes_test, args, run.path))
    write_json(run.path("metrics.json"), metrics)
    print(f"wrote {args.out}/metrics.json, checkpoint.npz" + ("" if args.no_plots else " and figures"))
    return metrics, model, x_test
