"""Train every model of the autoencoder family on the same data, seed and budget, and tabulate them.

Each model is trained by scripts/train_autoencoder.py (its outputs land in OUT/<model>/); the IAF
VAE gets the plain VAE's training time rather than its epochs, so their importance-weighted NLLs
compare at equal time. Then a VAE (beta = 1) and a beta-VAE are trained on the generated shapes and
scored by the mutual information gap. Writes OUT/comparison.json, comparison.md, comparison.png
(every model's reconstructions of the same test digits) and disentanglement.json.

    python scripts/compare_autoencoders.py --out runs/compare-quick --quick
    python scripts/compare_autoencoders.py --data-dir path/to/mnist --epochs 5 --out runs/compare
"""
import argparse
import os


import train_autoencoder
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
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier comparison in --out")
    args = p.parse_args(argv)
    check_flags(p, args, at_least_1=("epochs", "iw_samples", "shapes_epochs"),
                at_least_0=("iw_examples", "shapes_beta"))
    return args


def model_flags(args, model):
    """The train_autoencoder.py command line of one model: shared data, seed and budget."""
    flags = ["--model", model, "--seed", str(args.seed), "--out", os.path.join(args.out, model),
             "--iw-samples", str(args.iw_samples), "--iw-examples", str(args.iw_examples)]
    flags += QUICK if args.quick else ["--epochs", str(args.epochs)]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    flags += ["--no-download"] * args.no_download + ["--no-progress"] * args.no_progress
    flags += ["--overwrite"] * args.overwrite
    return flags + (["--dataset", "mnist"] if model == "beta_vae" else [])


def table(rows):
    """The rows as a Markdown table; None shows as a dash."""
    cell = lambda v: "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    lines += [f"| {r['model']} | " + " | ".join(cell(r[key]) for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)  # check_flags has checked that it can be made
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    rows, recon, vae_seconds = [], [], None
    for model in train_autoencoder.MODELS:
        flags = model_flags(args, model)
        if model == "iaf":  # equal training time with the plain VAE, as many epochs as fit
            flags += ["--max-seconds", f"{vae_seconds:.3f}", "--epochs", "1000"]
        print(f"== {model}: train_autoencoder.py {' '.join(flags)}", flush=True)
        metrics, trained, x_test = train_autoencoder.train_model(train_autoencoder.parse_args(flags), flags)
        if model == "vae":
            vae_seconds = metrics["train_seconds"]
        rows.append({"model": model, "test_rec": metrics["test_rec"],
                     "test_neg_elbo": metrics.get("test_neg_elbo"), "test_iw_nll": metrics.get("test_iw_nll"),
                     "active_units": metrics.get("active_units"),
                     "code_perplexity": metrics.get("code_perplexity"), "seconds": metrics["train_seconds"]})
        recon.append(trained.reconstruct(x_test[:10]))
    config = {"quick": args.quick, "budget": " ".join(QUICK) if args.quick else f"--epochs {args.epochs}",
              "seed": args.seed, "data": metrics["data"], "iw_samples": args.iw_samples,
              "iw_examples": args.iw_examples, "iaf": "trained for the plain VAE's training seconds"}
    result = {"config": config, "rows": rows}
    write_json(out("comparison.json"), result)
    with atomic_writer(out("comparison.md"), "w") as f:
        f.write(table(rows) + "\n")
    print(table(rows))

    shapes_rows = []
    for model, beta in (("vae", 1.0), ("beta_vae", args.shapes_beta)):
        flags = ["--model", model, "--dataset", "shapes", "--beta", str(beta), "--seed", str(args.seed),
                 "--epochs", str(min(args.shapes_epochs, 10) if args.quick else args.shapes_epochs),
                 "--batch-size", "64", "--latent", "10",
                 "--out", os.path.join(args.out, f"shapes-{model}")] + ["--no-progress"] * args.no_progress
        flags += ["--overwrite"] * args.overwrite
        print(f"== shapes, beta = {beta:g}: train_autoencoder.py {' '.join(flags)}", flush=True)
        metrics = train_autoencoder.main(flags)
        shapes_rows.append({"beta": beta, "mig": metrics["mig"], "mig_per_factor": metrics["mig_per_factor"],
                            "test_neg_elbo": metrics["test_neg_elbo"], "active_units": metrics["active_units"]})
        print(f"beta = {beta:g}: MIG {metrics['mig']:.3f}, test -ELBO {metrics['test_neg_elbo']:.2f}")
    write_json(out("disentanglement.json"), {"config": {"epochs": int(flags[flags.index("--epochs") + 1]),
                                                        "seed": args.seed},
                                             "rows": shapes_rows})
    plot = plot_module()
    if plot is not None:
        plot.interpolation_grid([x_test[:10], *recon], out("comparison.png"),
                                row_labels=["input", *train_autoencoder.MODELS],
                                title="the same test digits, reconstructed by each model")
    return result


if __name__ == "__main__":
    main()
