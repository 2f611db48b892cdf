"""Train one model of the autoencoder family on MNIST (or the generated shapes) on a laptop CPU.

--model picks it: ae, dae (denoising), sparse (KL-to-rho), ksparse, contractive, vae, beta_vae
(trained on the generated shapes by default, with traversals and the MIG score), vqvae (with its
GRU prior over the codes), vqvae2 (two levels of codes and their priors, measured against a flat
VQ-VAE: scripts/vqvae2_run.py) or iaf (a VAE with an inverse-autoregressive-flow posterior). Without the
full data set and a network it trains on the MNIST test set bundled with minivae and says so.

    python scripts/train_autoencoder.py --model dae --noise masking --noise-level 0.3 --out runs/dae
    python scripts/train_autoencoder.py --model vqvae --ema --data-dir path/to/mnist --epochs 5 --out runs/vq
    python scripts/train_autoencoder.py --model vqvae2 --data-dir path/to/mnist --out runs/vqvae2
"""
import argparse
import time

import numpy as np

import autoencoder_figures
import vqvae2_run
from minivae import autoencoders, data, diagnostics, flags, iaf, shapes, vqvae
from minivae.allocator import reuse_freed_memory
from minivae.checkpoint import save_checkpoint
from minivae.engine import Tensor, no_grad
from minivae.fileio import write_json
from minivae.models import MLPVAE
from minivae.optim import Adam
from minivae.run import Run, resume, stop_if_not_finite, warn_if_one_batch

MODELS = ("ae", "dae", "sparse", "ksparse", "contractive", "vae", "beta_vae", "vqvae", "iaf")
LATENT = {"ae": 32, "dae": 32, "sparse": 196, "ksparse": 256, "contractive": 64, "vae": 20,
          "beta_vae": 10, "vqvae": 8, "iaf": 20, "vqvae2": 4}  # vqvae: code vectors L; vqvae2: top codes
GENERATIVE = ("vae", "beta_vae", "vqvae", "iaf")
USES = {"dae": ("noise", "noise_level"), "sparse": ("rho", "sparsity_weight"), "ksparse": ("k", "k_warmup_epochs"),
        "contractive": ("contraction",), "iaf": ("iaf_steps", "made_hidden"), "vae beta_vae iaf": ("beta", "iw_samples", "iw_examples"),
        "vqvae vqvae2": ("n_codes", "code_dim", "commitment", "ema", "ema_decay", "restart_every", "prior_epochs"),
        "vqvae2": ("n_codes_bottom", "top_reconstruction", "decoder")}  # models -> their own flags
ARCHITECTURE = ("model", "dataset", "hidden", "latent", "activation", "likelihood", "dtype", "n_codes",
                "code_dim", "iaf_steps", "made_hidden", "ema")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=[*MODELS, "vqvae2"], default="ae", help="which autoencoder to train")
    p.add_argument("--dataset", choices=["mnist", "shapes"], help="default: shapes (generated 32x32 "
                   "dSprites-like images, minivae/shapes.py) for beta_vae, else mnist")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX .gz files (else the cache, "
                   "downloading when online, else the bundled digits)")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training images")
    p.add_argument("--max-seconds", type=flags.finite_float, default=0.0, help="stop training after this many "
                   "seconds (0: no limit), e.g. to compare two models at equal time")
    p.add_argument("--max-cpu-seconds", type=flags.finite_float, default=0.0, help="stop training after this many "
                   "seconds of this process's CPU time (0: no limit): equal compute even on a shared machine, "
                   "where wall time depends on the load")
    p.add_argument("--batch-size", type=int, default=128, help="images per Adam step")
    p.add_argument("--lr", type=flags.finite_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--latent", type=int, help=f"code size (vqvae: code vectors L); default {LATENT}")
    p.add_argument("--hidden", type=int, nargs="*", default=[400], help="hidden layer sizes")
    p.add_argument("--activation", choices=["relu", "tanh", "softplus"], default="relu", help="hidden units' nonlinearity")
    p.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli",
                   help="bernoulli: BCE reconstruction; gaussian: L2 (unit variance)")
    g = p.add_argument_group("model hyperparameters")
    g.add_argument("--noise", choices=["masking", "gaussian"], default="masking", help="dae corruption")
    g.add_argument("--noise-level", type=flags.finite_float, default=0.3, help="dae: drop fraction, or noise std")
    g.add_argument("--rho", type=flags.finite_float, default=0.1, help="sparse: target mean activation")
    g.add_argument("--sparsity-weight", type=flags.finite_float, default=3.0, help="sparse: beta of the KL penalty")
    g.add_argument("--k", type=int, default=25, help="ksparse: code units kept per example")
    g.add_argument("--k-warmup-epochs", type=flags.finite_float, default=1.0, help="ksparse: epochs to go from dense to k")
    g.add_argument("--contraction", type=flags.finite_float, default=0.1, help="contractive: lambda")
    g.add_argument("--beta", type=flags.finite_float, help="KL weight (default 1 for vae and iaf, 4 for beta_vae)")
    g.add_argument("--n-codes", type=int, help="vqvae: codebook size K (default 64); vqvae2: K of the top level (512)")
    g.add_argument("--n-codes-bottom", type=int, default=16, help="vqvae2: K of the bottom level")
    g.add_argument("--top-reconstruction", type=flags.finite_float, default=0.0, help="vqvae2: weight of the "
                   "top decoder's squared error on the patch features (0: none, the paper's loss)")
    g.add_argument("--decoder", choices=["patch", "dense"], default="patch", help="vqvae2: each patch from "
                   "its bottom code and the top (patch), or one MLP over all codes (dense)")
    g.add_argument("--code-dim", type=int, default=16, help="vqvae: code vector size D")
    g.add_argument("--commitment", type=flags.finite_float, default=0.25, help="vqvae: commitment weight")
    g.add_argument("--ema", action="store_true", help="vqvae: EMA codebook update instead of its loss")
    g.add_argument("--ema-decay", type=flags.finite_float, default=0.99, help="vqvae --ema: decay of the moving averages")
    g.add_argument("--restart-every", type=int, default=50, help="vqvae: every N steps (at least 4 times "
                   "an epoch), move the codes unused since the last restart onto encoder outputs (0: never; "
                   "the codebook still starts on them)")
    g.add_argument("--prior-epochs", type=int, help="vqvae: epochs of the GRU prior (default 10; vqvae2: 2)")
    g.add_argument("--quick", action="store_true", help=f"vqvae2: a short run ({vqvae2_run.QUICK_HELP})")
    g.add_argument("--iaf-steps", type=int, default=2, help="iaf: number of flow steps T")
    g.add_argument("--made-hidden", type=int, default=80, help="iaf: MADE hidden units")
    g.add_argument("--iw-samples", type=int, default=0, help="K of the importance-weighted test NLL "
                   "(vae, beta_vae, iaf; 0: skip)")
    g.add_argument("--iw-examples", type=int, default=1000, help="test images for the IW NLL (0: all)")
    flags.add_run_flags(p, out=None)
    args = p.parse_args(argv)
    flags.warn_ignored(p, args, {name: f"with --model {args.model}" for models, names in USES.items()
                                 if args.model not in models.split() for name in names})
    args.dataset = args.dataset or ("shapes" if args.model == "beta_vae" else "mnist")
    args.latent = LATENT[args.model] if args.latent is None else args.latent  # --latent 0 is refused below
    vqvae2_run.fill_code_defaults(args)
    args.beta = args.beta if args.beta is not None else (4.0 if args.model == "beta_vae" else 1.0)
    args.out = args.out or f"runs/{args.model}"
    flags.check_flags(p, args, at_least_1=("epochs", "batch_size", "latent", "hidden", "k", "n_codes",
                                           "code_dim", "made_hidden", "n_codes_bottom"), positive=("lr",),
                      at_least_0=("beta", "top_reconstruction", "sparsity_weight", "contraction", "commitment", "prior_epochs",
                                  "iaf_steps", "iw_samples", "iw_examples", "limit", "max_seconds", "max_cpu_seconds",
                                  "k_warmup_epochs", "noise_level", "restart_every"), in_0_1=("ema_decay",))
    return args


def load_data(args, dtype):
    """x_train, x_test (N, pixels) in [0, 1], test labels (digits, or the shapes' factors (N, 5)), and provenance."""
    if args.dataset == "shapes":  # the test part is the fixed scoring set of known factors
        x_train, _, x_test, v_test = shapes.make_shapes(seed=args.seed, dtype=dtype)
        info = {"dataset": "shapes", "n_train": len(x_train), "n_test": len(x_test), "fallback": False}
    else:  # MNIST, with the offline fallback said in one line (the loader vqvae2 shares)
        x_train, _, x_test, v_test, info = vqvae2_run.load_data(args, dtype)
    info["pixels"] = x_train.shape[1]  # for the normalised beta, beta * latent / pixels
    return x_train[:args.limit or len(x_train)], x_test, v_test, info


def build_model(args, rng, dtype, n_in=784):
    """The model named by --model for images of n_in pixels, with its hyperparameters from the flags."""
    common = dict(n_in=n_in, hidden=tuple(args.hidden), activation=args.activation, rng=rng, dtype=dtype)
    ae = dict(common, latent=args.latent, likelihood=args.likelihood)
    if args.model == "ae":
        return autoencoders.Autoencoder(**ae)
    if args.model == "dae":
        return autoencoders.DenoisingAutoencoder(**ae, corruption=args.noise, noise_level=args.noise_level)
    if args.model == "sparse":
        return autoencoders.SparseAutoencoder(**ae, rho=args.rho, sparsity_weight=args.sparsity_weight)
    if args.model == "ksparse":
        return autoencoders.KSparseAutoencoder(**ae, k=args.k, k_warmup=0)  # k_warmup set in run()
    if args.model == "contractive":
        return autoencoders.ContractiveAutoencoder(**ae, contraction=args.contraction)
    if args.model in ("vae", "beta_vae"):
        return MLPVAE(**ae)
    if args.model == "vqvae":
        return vqvae.VQVAE(**common, n_latents=args.latent, code_dim=args.code_dim, n_codes=args.n_codes,
                           likelihood=args.likelihood, commitment=args.commitment, ema=args.ema)
    return iaf.IAFVAE(**common, latent=args.latent, n_steps=args.iaf_steps, made_hidden=(args.made_hidden,))


def loss(model, x, rng, args, step=None):
    """(objective, stats) of a batch: each model's loss with its noise drawn here, from rng."""
    if isinstance(model, MLPVAE):
        return model.loss(x, rng.standard_normal((len(x), model.latent)).astype(x.dtype), args.beta)
    if isinstance(model, iaf.IAFVAE):
        return model.loss(x, model.noise(x, rng), args.beta)
    if isinstance(model, autoencoders.KSparseAutoencoder):
        return model.loss(x, step=step)
    return model.loss(x, model.noise(x, rng))


def evaluate(model, x, rng, args, batch_size=1000):
    """Held-out stats averaged over x: test_rec (nats per image), test_neg_elbo (VAEs), and more.

    Deterministic autoencoders are scored on the clean input (no corruption); the VAEs with one
    z ~ q(z|x) per image, so test_rec + KL is the held-out -ELBO. Active units: for the VAEs,
    dimensions whose posterior mean varies over x by at least 0.01 (Burda et al.); for the codes
    of the autoencoders, whose scales differ (a sigmoid unit's variance is at most 0.25), units
    whose variance is at least 1% of the average unit's: a unit that barely moves carries nothing.
    """
    totals = {}
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            _, stats = loss(model, xb, rng, args) if args.model in GENERATIVE else model.loss(xb, None)
            for key in ("rec", "neg_elbo", "kl", "perplexity"):
                if key in stats:
                    totals[key] = totals.get(key, 0.0) + stats[key] * len(xb)
    result = {f"test_{k}": v / len(x) for k, v in totals.items()}
    with no_grad():
        if isinstance(model, vqvae.VQVAE):
            result["code_usage"] = vqvae.code_usage(model.codes(x), model.n_codes)
            result["code_perplexity"] = result["code_usage"]["perplexity"]
            return result
        if args.model in GENERATIVE:  # the posterior means
            code = diagnostics.encode_all(model, x)[0]
            threshold = 0.01
        else:
            code = np.concatenate([model.encode(Tensor(x[i:i + batch_size])).data for i in range(0, len(x), batch_size)])
            threshold = 0.01 * code.var(0).mean()
    result["active_units"] = diagnostics.active_units(code, threshold)[0]
    result["code"] = code
    return result


def iw_nll(model, x, args):
    """Importance-weighted test NLL (nats per image) with --iw-samples samples per image."""
    rng, x = np.random.default_rng([args.seed, 2]), x[:args.iw_examples or len(x)]
    if isinstance(model, iaf.IAFVAE):
        return -float(np.mean(iaf.iw_log_likelihood(model, x, args.iw_samples, rng)))
    return -float(np.mean(diagnostics.iw_log_likelihood(model, x, args.iw_samples, rng)))


def train_prior(model, x_train, args, dtype):
    """Fit the GRU prior to the codes of the training images; returns (prior, history of NLLs)."""
    rng, codes = np.random.default_rng([args.seed, 5]), model.codes(x_train)
    prior = vqvae.CodePrior(model.n_codes, model.n_latents, rng=rng, dtype=dtype)
    optimizer, history = Adam(prior.parameters(), lr=args.lr), []
    for epoch in range(args.prior_epochs):
        total = 0.0
        for idx in data.batches(len(codes), args.batch_size, rng):
            objective, stats = prior.loss(codes[idx])
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            total += stats["nll"] * len(idx)
        history.append(total / len(codes))
        print(f"prior epoch {epoch + 1:3d}/{args.prior_epochs}  code NLL {history[-1]:.2f} nats "
              f"(uniform codes: {model.n_latents * np.log(model.n_codes):.2f})", flush=True)
    return prior, history


def out_of_time(args, seconds, cpu_seconds):
    """Whether training has used up --max-seconds of wall time or --max-cpu-seconds of CPU time."""
    return 0 < args.max_seconds < seconds or 0 < args.max_cpu_seconds < cpu_seconds


def train_model(args, argv=None):
    """Train as the flags say (argv: the command line, for the resume command); returns (metrics, model, x_test)."""
    if args.model == "vqvae2":  # two stages and their measurements, in their own loop
        return vqvae2_run.train_model(args, argv, __file__)
    reuse_freed_memory()  # large temporaries without page faults (see its docstring)
    run = Run(args, argv, __file__)  # the output folder, the last checkpoint, the clean stop
    with run.stop_cleanly():  # Ctrl-C, SIGTERM, a full disk: say where, keep the last checkpoint, print how to resume
        dtype = np.dtype(args.dtype)
        x_train, x_test, v_test, data_info = load_data(args, dtype)
        steps_per_epoch = -(-len(x_train) // args.batch_size)
        warn_if_one_batch(args.batch_size, len(x_train), "images")
        rng = np.random.default_rng(args.seed)
        model = build_model(args, rng, dtype, x_train.shape[1])
        if args.model == "ksparse":
            model.k_warmup = int(args.k_warmup_epochs * steps_per_epoch)
        ema = vqvae.EMACodebook(model.codebook, args.ema_decay) if args.model == "vqvae" and args.ema else None
        params = [p for p in model.parameters() if ema is None or p is not model.codebook.E]
        optimizer = Adam(params, lr=args.lr)
        config = flags.run_config(args)
        history, step, start_epoch, seconds, cpu_seconds = [], 0, 0, 0.0, 0.0
        usage = np.zeros(getattr(model, "n_codes", 1), int)  # vqvae: how often each code was chosen lately
        if args.resume:
            state = resume(args.resume, args, ARCHITECTURE, model, optimizer, rng, ema=ema)
            history, step, start_epoch, usage = state["history"], state["step"], state["epoch"], state["usage"]
            seconds = sum(r["seconds"] for r in history)
            cpu_seconds = sum(r.get("train_cpu_seconds", 0.0) for r in history)
        elif args.model == "vqvae":  # start every code on an encoder output, where it will be used
            with no_grad():
                z_e = model.encode(Tensor(x_train[:args.batch_size])).data
            vqvae.restart_dead_codes(model.codebook, np.zeros_like(usage), z_e, rng, ema)

        for epoch in range(start_epoch, args.epochs):
            t0, c0, totals, n_seen, restarted = time.perf_counter(), time.process_time(), {}, 0, 0
            bar = run.progress(data.batches(len(x_train), args.batch_size, rng), steps_per_epoch, epoch, step)
            for idx in bar:
                x = x_train[idx]  # (B, pixels)
                objective, stats = loss(model, x, rng, args, step)
                stop_if_not_finite(stats, step, run.last_checkpoint)  # before the update
                optimizer.zero_grad()
                objective.backward()
                optimizer.step()
                if args.model == "vqvae":
                    usage += np.bincount(stats["codes"].ravel(), minlength=len(usage))
                    if ema is not None:
                        ema.step(stats["z_e"], stats["codes"])
                    if vqvae.restart_due(step, args.restart_every, steps_per_epoch):
                        restarted += vqvae.restart_dead_codes(model.codebook, usage, stats["z_e"], rng, ema)
                        usage[:] = 0
                step += 1
                for key in ("objective", "rec", "kl", "neg_elbo"):
                    if key in stats:
                        totals[key] = totals.get(key, 0.0) + stats[key] * len(idx)
                n_seen += len(idx)
                bar.set_postfix(objective=f"{totals['objective'] / n_seen:.2f}")
                if out_of_time(args, seconds + time.perf_counter() - t0, cpu_seconds + time.process_time() - c0):
                    break
            seconds, epoch_cpu = seconds + time.perf_counter() - t0, time.process_time() - c0
            cpu_seconds += epoch_cpu
            test = evaluate(model, x_test, np.random.default_rng([args.seed, epoch, 1]), args)
            record = {"epoch": epoch + 1, "steps": step, **{f"train_{k}": v / n_seen for k, v in totals.items()},
                      **{k: v for k, v in test.items() if k != "code"}, "seconds": time.perf_counter() - t0,
                      "train_cpu_seconds": epoch_cpu}
            if args.model == "vqvae":
                record.update(dead_codes_restarted=restarted)
            history.append(record)
            elbo = f"  test -ELBO {record['test_neg_elbo']:7.2f}" if "test_neg_elbo" in record else ""
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train objective {record['train_objective']:8.2f}  "
                  f"test rec {record['test_rec']:7.2f}{elbo}  {record['seconds']:5.1f} s", flush=True)
            run.save(model, optimizer, rng, config=config, step=step, epoch=epoch + 1,
                     history=history, usage=usage, ema=None if ema is None else ema.state_dict())
            if out_of_time(args, seconds, cpu_seconds):
                limits = [f"--{name.replace('_', '-')} {getattr(args, name):g}"
                          for name in ("max_seconds", "max_cpu_seconds") if getattr(args, name)]
                print(f"stopping: {' and '.join(limits)} reached after {step} steps")
                break

        test = evaluate(model, x_test, np.random.default_rng([args.seed, 3]), args)
        metrics = {"config": config, "data": data_info, "epochs": history, "train_seconds": seconds,
                   "train_cpu_seconds": cpu_seconds,
                   **{k: v for k, v in test.items() if k != "code"}}
        prior = None
        if args.model == "vqvae":
            usage = metrics["code_usage"]
            print(f"test codes used per position: {usage['codes_used_per_position']} of {model.n_codes}; "
                  f"{usage['codes_used']} in all; {usage['distinct_sequences']} distinct code sequences")
            prior, metrics["prior_nll"] = train_prior(model, x_train, args, dtype)
            save_checkpoint(run.path("prior.npz"), params=prior.state_dict())  # for sampling it later
            with no_grad():
                sampled = prior.sample(1000, np.random.default_rng([args.seed, 6]))
                metrics["prior_sample_nll"] = -float(np.mean(prior.log_prob(sampled).data))
                metrics["prior_test_nll"] = -float(np.mean(prior.log_prob(model.codes(x_test)).data))
            metrics["uniform_code_nll"] = model.n_latents * float(np.log(model.n_codes))
        if args.iw_samples and args.model in ("vae", "beta_vae", "iaf"):
            metrics["test_iw_nll"] = iw_nll(model, x_test, args)
            print(f"importance-weighted test NLL (K={args.iw_samples}): {metrics['test_iw_nll']:.2f} nats")
        if args.dataset == "shapes" and "code" in test:  # scored on the held-out images, whose factors are known
            mig, gaps, _ = shapes.mutual_information_gap(test["code"], v_test)  # histogram of the means
            mu, logvar = diagnostics.encode_all(model, x_test)
            mig_q, gaps_q, _ = shapes.posterior_mig(mu, logvar, v_test, np.random.default_rng([args.seed, 7]))
            metrics.update(mig=mig, mig_per_factor=dict(zip(shapes.FACTORS, gaps.tolist())), mig_posterior=mig_q,
                           mig_posterior_per_factor=dict(zip(shapes.FACTORS, gaps_q.tolist())),
                           kl_per_dim=shapes.kl_per_dimension(mu, logvar).tolist())
            print(f"MIG, histogram of posterior means: {mig:.3f}  per factor: {metrics['mig_per_factor']}")
            print(f"MIG, from the posteriors q(z|x): {mig_q:.3f}  per factor: {metrics['mig_posterior_per_factor']}")
        write_json(run.path("metrics.json"), metrics)
        if not args.no_plots:
            autoencoder_figures.make_figures(args, run.path, model, x_test, test, prior)
        print(f"wrote {args.out}/metrics.json, checkpoint.npz" + ("" if args.no_plots else " and figures"))
    return metrics, model, x_test


def main(argv=None):
    return train_model(parse_args(argv), argv)[0]


if __name__ == "__main__":
    main()
