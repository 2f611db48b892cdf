"""Train every model of the autoencoder family on the same data, seed and budget, and tabulate them.

Each model is one run of scripts/train_autoencoder.py (its outputs land in OUT/<model>/), and a
VAE (beta = 1) and a beta-VAE trained on the generated shapes (OUT/shapes-vae/, shapes-beta_vae/)
are scored by the mutual information gap; minivae.runner trains these runs --jobs at a time, or on
a Dask cluster (--dask ADDRESS). The IAF VAE then gets the plain VAE's training time rather than
its epochs, so their importance-weighted NLLs compare at equal time. Writes OUT/comparison.json,
comparison.md, comparison.png (every model's reconstructions of the same test digits, from the
runs' checkpoints) and disentanglement.json. Ctrl-C or SIGTERM stops every run (each keeps its
last checkpoint) and writes what has finished, marked partial; the same command continues.

    python scripts/compare_autoencoders.py --out runs/compare-quick --quick
    python scripts/compare_autoencoders.py --data-dir path/to/mnist --epochs 5 --out runs/compare
"""
import argparse
import os
import sys

import numpy as np

import train_autoencoder
from minivae import runner
from minivae.checkpoint import load_checkpoint
from minivae.engine import no_grad
from minivae.fileio import atomic_writer, write_json
from minivae.flags import check_flags
from minivae.run import plot_module

QUICK = ["--limit", "2000", "--epochs", "2", "--hidden", "200", "--prior-epochs", "3"]
COLUMNS = [("test_rec", "test rec (nats)"), ("test_neg_elbo", "test -ELBO"), ("test_iw_nll", "test IW NLL"),
           ("active_units", "active units"), ("code_perplexity", "code perplexity"), ("seconds", "seconds")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help=f"a small budget for development: {' '.join(QUICK)}")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX .gz files")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (ignored with --quick)")
    p.add_argument("--seed", type=int, default=1, help="seed of every model's run")
    p.add_argument("--iw-samples", type=int, default=100, help="K of the importance-weighted NLL")
    p.add_argument("--iw-examples", type=int, default=1000, help="test images for the IW NLL")
    p.add_argument("--shapes-epochs", type=int, default=100, help="epochs of each model on the shapes "
                   "(at most 10 with --quick)")
    p.add_argument("--shapes-beta", type=float, default=4.0, help="beta of the beta-VAE on the shapes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier comparison in --out "
                   "(without it, the runs that finished there are kept and the others trained)")
    runner.add_flags(p)
    args = p.parse_args(argv)
    check_flags(p, args, at_least_1=("epochs", "iw_samples", "shapes_epochs"),
                at_least_0=("iw_examples", "shapes_beta"))
    runner.check_flags(p, args)
    return args


def model_flags(args, model):
    """The train_autoencoder.py command line of one model: shared data, seed and budget."""
    flags = ["--model", model, "--seed", str(args.seed)]
    if model in ("vae", "beta_vae", "iaf"):  # the models with a likelihood bound to score
        flags += ["--iw-samples", str(args.iw_samples), "--iw-examples", str(args.iw_examples)]
    flags += QUICK if args.quick else ["--epochs", str(args.epochs)]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    flags += ["--no-download"] * args.no_download + ["--no-progress"] * args.no_progress
    return flags + (["--dataset", "mnist"] if model == "beta_vae" else [])


def table(rows):
    """The rows as a Markdown table; None shows as a dash."""
    cell = lambda v: "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    lines += [f"| {r['model']} | " + " | ".join(cell(r[key]) for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def shapes_flags(args, model, beta):
    """The train_autoencoder.py command line of one run on the shapes (scored by the MIG)."""
    return ["--model", model, "--dataset", "shapes", "--beta", str(beta), "--seed", str(args.seed),
            "--epochs", str(min(args.shapes_epochs, 10) if args.quick else args.shapes_epochs),
            "--batch-size", "64", "--latent", "10"] + ["--no-progress"] * args.no_progress


def spec(args, name, flags):
    """The run `name` of this comparison, in OUT/<name>."""
    return runner.Spec(name, train_autoencoder.__file__, flags, os.path.join(args.out, name))


def main(argv=None):
    args = parse_args(argv)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    shapes = {f"shapes-{m}": (m, beta) for m, beta in (("vae", 1.0), ("beta_vae", args.shapes_beta))}
    first = [spec(args, m, model_flags(args, m)) for m in train_autoencoder.MODELS if m != "iaf"]
    first += [spec(args, name, shapes_flags(args, *mb)) for name, mb in shapes.items()]
    if args.overwrite:  # earlier results are replaced: nothing is read or resumed from them
        for run in first + [spec(args, "iaf", [])]:
            for name in ("metrics.json", "checkpoint.npz", "run.json"):
                if os.path.isfile(os.path.join(run.out, name)):
                    os.remove(os.path.join(run.out, name))
    for run in first:  # every run's flags are checked before any run starts
        if not run.done():
            train_autoencoder.parse_args(run.command())
    with runner.Grid(args.jobs, args.dask) as grid:
        metrics = grid.run(first)
        if "vae" in metrics and grid.signal is None:  # equal training time with the plain VAE
            metrics.update(grid.run([spec(args, "iaf", model_flags(args, "iaf") + [
                "--max-seconds", f"{metrics['vae']['train_seconds']:.3f}", "--epochs", "1000"])]))
        rows = [{"model": m, "test_rec": metrics[m]["test_rec"], "test_neg_elbo": metrics[m].get("test_neg_elbo"),
                 "test_iw_nll": metrics[m].get("test_iw_nll"), "active_units": metrics[m].get("active_units"),
                 "code_perplexity": metrics[m].get("code_perplexity"), "seconds": metrics[m]["train_seconds"]}
                for m in train_autoencoder.MODELS if m in metrics]
        missing = [m for m in train_autoencoder.MODELS if m not in metrics]
        config = {"quick": args.quick, "budget": " ".join(QUICK) if args.quick else f"--epochs {args.epochs}",
                  "seed": args.seed, "data": next((m["data"] for m in metrics.values() if "data" in m), None),
                  "iw_samples": args.iw_samples, "iw_examples": args.iw_examples,
                  "iaf": "trained for the plain VAE's training seconds", "partial": bool(missing), "missing": missing}
        result = {"config": config, "rows": rows}
        write_json(out("comparison.json"), result)
        note = f"PARTIAL: {len(rows)} of {len(train_autoencoder.MODELS)} models; missing: {', '.join(missing)}\n\n"
        with atomic_writer(out("comparison.md"), "w") as f:
            f.write(note * bool(missing) + table(rows) + "\n")
        print(table(rows))
        shapes_rows = [{"beta": shapes[name][1], "mig": metrics[name]["mig"],
                        "mig_per_factor": metrics[name]["mig_per_factor"],
                        "test_neg_elbo": metrics[name]["test_neg_elbo"], "active_units": metrics[name]["active_units"]}
                       for name in shapes if name in metrics]
        for row in shapes_rows:
            print(f"shapes, beta = {row['beta']:g}: MIG {row['mig']:.3f}, test -ELBO {row['test_neg_elbo']:.2f}")
        epochs = min(args.shapes_epochs, 10) if args.quick else args.shapes_epochs
        write_json(out("disentanglement.json"), {"config": {"epochs": epochs, "seed": args.seed},
                                                 "rows": shapes_rows, "partial": len(shapes_rows) < len(shapes)})
        reconstructions_figure(args, [row["model"] for row in rows], out("comparison.png"))
        again = [flag for flag in (sys.argv[1:] if argv is None else argv) if flag != "--overwrite"]
        grid.finish(runner.study_command(__file__, again))
    return result


def reconstructions_figure(args, models, path):
    """comparison.png: the first 10 test digits, then each model's reconstructions (from its checkpoint)."""
    plot = plot_module()
    if plot is None or not models:
        return
    recon, x_test = [], None
    for model in models:
        run = os.path.join(args.out, model)
        flags = train_autoencoder.parse_args(model_flags(args, model) + [
            "--out", run, "--resume", os.path.join(run, "checkpoint.npz")])
        if x_test is None:  # every model saw the same data
            x_test = train_autoencoder.load_data(flags, np.dtype(flags.dtype))[1][:10]
        trained = train_autoencoder.build_model(flags, np.random.default_rng(0), np.dtype(flags.dtype))
        trained.load_state_dict(load_checkpoint(flags.resume)["params"])
        with no_grad():
            recon.append(trained.reconstruct(x_test))
    plot.interpolation_grid([x_test, *recon], path, row_labels=["input", *models],
                            title="the same test digits, reconstructed by each model")


if __name__ == "__main__":
    main()
