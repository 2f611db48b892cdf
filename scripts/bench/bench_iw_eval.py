"""Time the importance-weighted test NLL of a trained MNIST VAE, several ways side by side in one run.

The same images, the same samples (one seed), one after another on this machine:
  fast      what train_mnist_vae.py --iw-samples runs: fast.iw_log_likelihood, float32, chunks of
            samples on every core and the Bernoulli term in products
  threads   the same with the model's own Bernoulli term (what the products buy: fast vs threads)
  products  the same on one thread (what the threads buy: fast vs products)
  textbook  diagnostics.iw_log_likelihood in float32: one thread, the model's own log-likelihood
  float64   the reference: the model cast to float64, textbook evaluation
It prints each one's seconds, that time scaled to the whole test set, its NLL and its distance to
the float64 value, and the ratios. The float32 paths must agree with float64 to 0.01 nat.

    python scripts/bench/bench_iw_eval.py runs/mnist-dynamic/checkpoint.npz --data-dir path/to/mnist
    python scripts/bench/bench_iw_eval.py runs/mnist-dynamic/checkpoint.npz --data-dir path/to/mnist \\
        --images 10000 --paths fast
    python scripts/bench/bench_iw_eval.py runs/mnist-dynamic/checkpoint.npz --paths fast threads products textbook
"""
import argparse
import json
import os
import time
import warnings

import numpy as np

from minivae import data, diagnostics, fast
from minivae.checkpoint import CheckpointError
from minivae.saved import load_model

PATHS = ("fast", "threads", "products", "textbook", "float64")
DEFAULT_PATHS = ("fast", "textbook", "float64")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.npz of scripts/train_mnist_vae.py (a Bernoulli decoder)")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (else the cache or the bundled test set)")
    p.add_argument("--images", type=int, default=500, help="test images to evaluate (10,000: all)")
    p.add_argument("--samples", type=int, default=5000, help="K, importance samples per image")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(DEFAULT_PATHS), help="which evaluations to time")
    p.add_argument("--seed", type=int, default=1, help="binarisation and sampling seed")
    p.add_argument("--out", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.images < 1 or args.samples < 1:
        p.error(f"--images and --samples must be >= 1 (got {args.images}, {args.samples})")
    return args


EVALUATIONS = {"fast": fast.iw_log_likelihood,
               "threads": lambda *a: fast.iw_log_likelihood(*a, bernoulli_in_products=False),
               "products": lambda *a: fast.iw_log_likelihood(*a, threads=1),
               "textbook": diagnostics.iw_log_likelihood, "float64": diagnostics.iw_log_likelihood}


def as_float64(model, config):
    """The same model with float64 parameters: the reference evaluation."""
    from minivae.models import make_model
    twin = make_model({**config, "dtype": "float64"})
    twin.load_state_dict({name: p.data.astype(np.float64) for name, p in model.named_parameters()})
    return twin


def main(argv=None):
    args = parse_args(argv)
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as err:
        raise SystemExit(str(err)) from None
    config = model.config
    if getattr(model, "likelihood", None) != "bernoulli" or config.get("conditional"):
        raise SystemExit(f"{args.checkpoint}: needs an unconditional Bernoulli MNIST VAE of train_mnist_vae.py")
    try:
        with warnings.catch_warnings():  # the fallback warning: the line below says which data it is
            warnings.simplefilter("ignore", UserWarning)
            _, _, x_test, _, info = data.load_train_test(config["dataset"], data_dir=args.data_dir, download=False)
    except (data.DataError, data.DataUnavailable) as err:
        raise SystemExit(f"data: {err}") from None
    x = data.binarize(x_test, "static", np.random.default_rng([args.seed, 7]))[:args.images]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(x)} test images ({'bundled' if info['fallback'] else 'full'} {config['dataset']}), "
          f"K = {args.samples}, load average {load:.2f}")
    results = {}
    for path in args.paths:
        evaluated = as_float64(model, config) if path == "float64" else model
        images = x.astype(np.float64) if path == "float64" else x
        t0 = time.perf_counter()
        log_px = EVALUATIONS[path](evaluated, images, args.samples, np.random.default_rng(args.seed))
        seconds = time.perf_counter() - t0
        results[path] = {"seconds": seconds, "minutes_for_10000": seconds * 10000 / len(x) / 60,
                         "nll": -float(np.mean(log_px))}
    reference = results.get("float64", {}).get("nll")
    print(f"{'path':<10}{'seconds':>10}{'min / 10,000 images':>22}{'NLL (nats)':>13}{'vs float64':>12}")
    for path, r in results.items():
        diff = "" if reference is None else f"{r['nll'] - reference:+.4f}"
        print(f"{path:<10}{r['seconds']:>10.1f}{r['minutes_for_10000']:>22.2f}{r['nll']:>13.3f}{diff:>12}")
    if "fast" in results:
        for other in results.keys() - {"fast"}:
            print(f"{other} time / fast time: {results[other]['seconds'] / results['fast']['seconds']:.2f}")
    if args.out:
        from minivae.fileio import write_json
        write_json(args.out, {"images": len(x), "samples": args.samples, "load": load, "results": results})
    return results


if __name__ == "__main__":
    main()
