"""Train every model of the autoencoder family on the same data, seed and budget, and tabulate them.

Each model is one run of scripts/train_autoencoder.py (its outputs land in OUT/<model>/; VQ-VAE-2
trains with its own short budget under --quick, since its run also fits priors and a flat
baseline), and a VAE (beta = 1) and a beta-VAE trained on the generated shapes (OUT/shapes-vae/,
shapes-beta_vae/) are scored by the mutual information gap; minivae.runner trains these runs
--jobs at a time, or on a Dask cluster (--dask ADDRESS). A second IAF VAE (OUT/iaf_equal_time/) then gets the plain VAE's
training CPU time rather than its epochs, so the IAF compares with the VAE at equal epochs and at
equal compute (CPU seconds, not wall seconds, which depend on what else the machine runs). A
digit classifier trained on the MNIST training images (scripts/digit_classifier.py, cached in
OUT/classifier.npz) scores every model by the fraction of test reconstructions that show the
input's digit, and the VQ-VAE's prior samples by their classes; the VQ-VAE's code usage is given
per position and over all positions. Writes OUT/comparison.json, comparison.md,
comparison.png (every model's reconstructions of the same test digits, from the runs'
checkpoints) and disentanglement.json. Ctrl-C or SIGTERM stops every run (each keeps its last
checkpoint) and writes what has finished, marked partial; the same command continues.

    python scripts/compare_autoencoders.py --out runs/compare-quick --quick
    python scripts/compare_autoencoders.py --data-dir path/to/mnist --epochs 5 --out runs/compare
"""
import argparse
import os
import sys

import numpy as np

import digit_classifier
import train_autoencoder
import vqvae2_run
from minivae import load_model, runner, vqvae
from minivae.checkpoint import load_checkpoint
from minivae.engine import no_grad
from minivae.fileio import atomic_writer, write_json
from minivae.flags import check_flags
from minivae.run import plot_module

QUICK = ["--limit", "10000", "--epochs", "20"]
VQVAE2_QUICK = ["--quick"]  # VQ-VAE-2's own quick budget: its run also fits priors and a flat baseline
FIRST = (*train_autoencoder.MODELS, "vqvae2")  # the runs trained first, one per model
RUNS = (*FIRST, "iaf_equal_time")  # the rows: every model, then the IAF at the VAE's time
COLUMNS = [("test_rec", "test rec (nats)"), ("test_neg_elbo", "test -ELBO"), ("test_iw_nll", "test IW NLL"),
           ("active_units", "active units"), ("recognised", "digits recognised"),
           ("codes_per_position", "codes per position"), ("seconds", "seconds"), ("cpu_seconds", "CPU seconds")]


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
    if model == "vqvae2":
        flags += VQVAE2_QUICK if args.quick else ["--epochs", str(args.epochs)]
    else:
        flags += QUICK if args.quick else ["--epochs", str(args.epochs)]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    flags += ["--no-download"] * args.no_download + ["--no-progress"] * args.no_progress
    return flags + (["--dataset", "mnist"] if model == "beta_vae" else [])


def cell(key, value):
    """One table cell: a dash for None, a percentage, the range of a per-position list, or a number."""
    if value is None:
        return "–"
    if key == "recognised":
        return f"{100 * value:.1f}%"
    if key == "codes_per_position":
        return f"{min(value)}–{max(value)}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(rows):
    """The rows as a Markdown table; None shows as a dash."""
    lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    lines += [f"| {r['model']} | " + " | ".join(cell(key, r[key]) for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def code_table(usage, n_codes):
    """The VQ-VAE's test code usage as a Markdown table: each position, then all positions pooled."""
    lines = [f"| codes at | codes used (of {n_codes}) | perplexity |", "| --- | ---: | ---: |"]
    lines += [f"| position {pos + 1} | {used} | {perp:.2f} |" for pos, (used, perp) in
              enumerate(zip(usage["codes_used_per_position"], usage["perplexity_per_position"]))]
    lines += [f"| all positions, pooled | {usage['codes_used']} | {usage['perplexity']:.2f} |",
              f"\n{usage['distinct_sequences']} distinct code sequences among the test images."]
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
    first = [spec(args, m, model_flags(args, m)) for m in FIRST]
    first += [spec(args, name, shapes_flags(args, *mb)) for name, mb in shapes.items()]
    if args.overwrite:  # earlier results are replaced: nothing is read or resumed from them
        for run in first + [spec(args, "iaf_equal_time", [])]:
            for name in ("metrics.json", "checkpoint.npz", "run.json", "prior.npz"):
                if os.path.isfile(os.path.join(run.out, name)):
                    os.remove(os.path.join(run.out, name))
        if os.path.isfile(out("classifier.npz")):
            os.remove(out("classifier.npz"))
    runner.check_before_start(first, train_autoencoder.parse_args)  # bad flags refused before any run
    with runner.Grid(args.jobs, args.dask) as grid:
        metrics = grid.run(first)
        if "vae" in metrics and grid.signal is None:  # equal training CPU time with the plain VAE
            metrics.update(grid.run([spec(args, "iaf_equal_time", model_flags(args, "iaf") + [
                "--max-cpu-seconds", f"{metrics['vae']['train_cpu_seconds']:.3f}", "--epochs", "1000"])]))
        names = [name for name in RUNS if name in metrics]
        scored = bool(names) and grid.signal is None  # a stopped study writes its partial table at once
        scores = score_with_classifier(args, names, out("comparison.png")) if scored else {"recognised": {}}
        rows = [{"model": m, "test_rec": metrics[m]["test_rec"], "test_neg_elbo": metrics[m].get("test_neg_elbo"),
                 "test_iw_nll": metrics[m].get("test_iw_nll"), "active_units": metrics[m].get("active_units"),
                 "recognised": scores["recognised"].get(m),
                 "codes_per_position": metrics[m].get("code_usage", {}).get("codes_used_per_position"),
                 "seconds": metrics[m]["train_seconds"], "cpu_seconds": metrics[m].get("train_cpu_seconds")}
                for m in names]
        missing = [m for m in RUNS if m not in metrics]
        config = {"quick": args.quick, "budget": " ".join(QUICK) if args.quick else f"--epochs {args.epochs}",
                  "seed": args.seed, "data": next((m["data"] for m in metrics.values() if "data" in m), None),
                  "iw_samples": args.iw_samples, "iw_examples": args.iw_examples,
                  "classifier_test_accuracy": scores.get("classifier_test_accuracy"),
                  "iaf": "the same budget as every model", "iaf_equal_time": "trained for the plain VAE's "
                  "training CPU seconds", "partial": bool(missing), "missing": missing}
        usage = metrics.get("vqvae", {}).get("code_usage")  # None: no VQ-VAE run, or one that predates it
        vq = None if usage is None else {"code_usage": usage, **scores.get("vqvae", {})}
        result = {"config": config, "rows": rows, "vqvae": vq}
        write_json(out("comparison.json"), result)
        note = f"PARTIAL: {len(rows)} of {len(RUNS)} runs; missing: {', '.join(missing)}\n\n"
        text = note * bool(missing) + table(rows) + "\n" + vq_text(vq, metrics)
        with atomic_writer(out("comparison.md"), "w") as f:
            f.write(text)
        print(text + (f"digit classifier: {100 * config['classifier_test_accuracy']:.1f}% of the real test "
                      "digits" if scored else ""))
        shapes_rows = [{"beta": shapes[name][1], "mig": metrics[name]["mig"],
                        "mig_per_factor": metrics[name]["mig_per_factor"],
                        "test_neg_elbo": metrics[name]["test_neg_elbo"], "active_units": metrics[name]["active_units"]}
                       for name in shapes if name in metrics]
        for row in shapes_rows:
            print(f"shapes, beta = {row['beta']:g}: MIG {row['mig']:.3f}, test -ELBO {row['test_neg_elbo']:.2f}")
        epochs = min(args.shapes_epochs, 10) if args.quick else args.shapes_epochs
        write_json(out("disentanglement.json"), {"config": {"epochs": epochs, "seed": args.seed},
                                                 "rows": shapes_rows, "partial": len(shapes_rows) < len(shapes)})
        again = [flag for flag in (sys.argv[1:] if argv is None else argv) if flag != "--overwrite"]
        grid.finish(runner.study_command(__file__, again))
    return result


def vq_text(vq, metrics):
    """The VQ-VAE's code usage per position and pooled, and what its prior samples look like to the classifier."""
    if vq is None:
        return ""
    text = "\nVQ-VAE, test codes:\n\n" + code_table(vq["code_usage"], metrics["vqvae"]["config"]["n_codes"]) + "\n"
    for key, what in (("prior_samples", "codes sampled from the GRU prior"), ("uniform_codes", "uniform random codes")):
        if key in vq:
            h = vq[key]
            text += (f"\n{what}, decoded and classified: class counts {' '.join(map(str, h['class_counts']))}, "
                     f"entropy {h['entropy_bits']:.2f} bits, mean confidence {h['mean_confidence']:.2f}")
    return text + "\n"


def trained_model(args, name):
    """The model of the finished run `name`, rebuilt from its checkpoint, and that run's flags."""
    run = os.path.join(args.out, name)
    flags = train_autoencoder.parse_args(model_flags(args, "iaf" if name == "iaf_equal_time" else name) + [
        "--out", run, "--resume", os.path.join(run, "checkpoint.npz")])
    if name == "vqvae2":  # built by its own module, from the checkpoint's config
        return load_model(flags.resume), flags
    model = train_autoencoder.build_model(flags, np.random.default_rng(0), np.dtype(flags.dtype))
    model.load_state_dict(load_checkpoint(flags.resume)["params"])
    return model, flags


def score_with_classifier(args, names, path, batch_size=1000):
    """What a digit classifier sees in each run's reconstructions of all test images (the fraction
    classified as the input's label) and in the VQ-VAE's samples; draws comparison.png, the first
    10 test digits and each run's reconstructions of them."""
    _, flags = trained_model(args, names[0])
    x_train, y_train, x_test, y_test, _ = vqvae2_run.load_data(flags, np.dtype(flags.dtype))  # every run's data
    clf, accuracy = digit_classifier.load_or_train(os.path.join(args.out, "classifier.npz"),
                                                   x_train, y_train, x_test, y_test)
    scores, shown = {"classifier_test_accuracy": accuracy, "recognised": {}}, []
    for name in names:
        model, _ = trained_model(args, name)
        with no_grad():
            recon = np.concatenate([model.reconstruct(x_test[i:i + batch_size])
                                    for i in range(0, len(x_test), batch_size)])
        scores["recognised"][name] = float(np.mean(digit_classifier.probabilities(clf, recon).argmax(1) == y_test))
        shown.append(recon[:10])
        if name == "vqvae" and os.path.isfile(os.path.join(args.out, name, "prior.npz")):
            scores["vqvae"] = vq_samples(args, model, clf)
    plot = plot_module()
    if plot is not None:
        plot.interpolation_grid([x_test[:10], *shown], path, row_labels=["input", *names],
                                title="the same test digits, reconstructed by each model")
    return scores


def vq_samples(args, model, clf, n=1000):
    """Class histograms of n codes sampled from the VQ-VAE's GRU prior and decoded, and of n uniform
    random codes decoded (the control: a classifier is sure of many shapes that are not digits)."""
    prior = vqvae.CodePrior(model.n_codes, model.n_latents, dtype=model.codebook.E.data.dtype)
    prior.load_state_dict(load_checkpoint(os.path.join(args.out, "vqvae", "prior.npz"))["params"])
    rng = np.random.default_rng([args.seed, 7])
    with no_grad():
        codes = {"prior_samples": prior.sample(n, rng),
                 "uniform_codes": rng.integers(0, model.n_codes, (n, model.n_latents))}
        images = {key: model.mean_image(model.decode_codes(idx)) for key, idx in codes.items()}
    return {key: digit_classifier.histogram(digit_classifier.probabilities(clf, x)) for key, x in images.items()}


if __name__ == "__main__":
    main()
