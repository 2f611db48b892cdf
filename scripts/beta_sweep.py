"""A beta sweep: the beta-VAE trained at several KL weights beta, each over several seeds, tabulated.

Each (beta, seed) is one run of scripts/train_autoencoder.py --model beta_vae --beta B --seed S,
in OUT/beta<B>-seed<S>/; minivae.runner trains them --jobs at a time on this machine, or on a
Dask cluster (--dask ADDRESS). Every run gets RUN_DEFAULTS (the generated dSprites-like shapes of
minivae/shapes.py, a 10-dimensional code, hidden layers of 512 and 256 units, 40 epochs), then any flag
this script does not know, which overrides them (see train_autoencoder.py --help). Each run
writes its traversals (OUT/beta<B>-seed<S>/traversals.png: one row per latent dimension, most KL
first) and its MIG on the held-out shapes. The sweep writes
    OUT/sweep.json   every run's numbers, and per beta their mean and standard deviation over seeds
    OUT/sweep.md     the table: one line per beta, mean +- standard deviation (n seeds), with the
                     normalised beta = beta * latent / pixels of Higgins et al. 2017
    OUT/sweep.png    MIG and reconstruction error against beta, every run a point: the trade-off
Ctrl-C or SIGTERM stops every run (each keeps its last checkpoint) and writes the partial table;
the same command continues, reading the finished runs instead of training them again.

    python scripts/beta_sweep.py --jobs 1 --out runs/beta-sweep
    python scripts/beta_sweep.py --betas 0.5 1 4 16 --seeds 1 2 3 4 5 --epochs 20 --out runs/beta-sweep-20
"""
import argparse
import os

import numpy as np

import autoencoder_figures
import train_autoencoder  # the sibling script: its flags are checked here before any run starts
from minivae import runner, shapes
from minivae.fileio import atomic_writer, write_json

# Every run's flags unless the command line gives others: the generated shapes, a code of 10
# dimensions, an MLP of two hidden layers (one layer of 256 units only tiles the positions), 40
# epochs (7,080 steps; at 15 the position codes are still folded): about three minutes of one core.
RUN_DEFAULTS = ["--dataset", "shapes", "--latent", "10", "--hidden", "512", "256", "--batch-size", "128", "--epochs", "40"]
# What the table shows of each run (the MIG needs the shapes' factors; the IW NLL needs --iw-samples).
# Two estimates of the MIG: I(z_j; v_k) from the posteriors q(z|x) (Chen et al. 2018's own, "q"), and
# from a histogram of the posterior means (Locatello et al. 2019's, "hist"); each with its gap per factor.
COLUMNS = (("beta_norm", "β·latent/pixels"), ("mig_posterior", "MIG (q)"), ("mig", "MIG (hist)"),
           *((f"mig_posterior_{f}", f"{f} (q)") for f in shapes.FACTORS), *((f"mig_{f}", f"{f} (hist)") for f in shapes.FACTORS),
           ("test_rec", "test rec"), ("test_kl", "test KL"), ("used_dims", "dims with KL > 0.1"),
           ("test_neg_elbo", "test −ELBO"), ("test_iw_nll", "test IW NLL"), ("train_cpu_seconds", "train CPU s"))
OWN = ("--model", "--beta", "--seed", "--out", "--resume")  # flags the sweep sets for every run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0], help="KL weights beta")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of each beta's runs")
    runner.add_flags(p)
    args, extra = p.parse_known_args(argv)
    args.no_plots = "--no-plots" in extra  # also kept in extra: the runs draw no figures either
    own = [flag for flag in extra if flag.split("=")[0] in OWN]
    if own:
        p.error(f"{', '.join(own)}: the sweep sets these for each run; give betas and seeds as --betas and --seeds")
    for name, values in (("--betas", args.betas), ("--seeds", args.seeds)):
        if len(set(values)) < len(values):
            p.error(f"{name} lists a value twice: {values}")
    if min(args.betas) < 0 or min(args.seeds) < 0:
        p.error(f"--betas and --seeds must be >= 0 (got {args.betas}, {args.seeds})")
    runner.check_flags(p, args)
    args.extra = extra
    return args


def run_specs(args):
    """{(beta, seed): runner.Spec}: the passed-through flags, then the run's model, beta and seed."""
    return {(beta, seed): runner.Spec(f"beta{beta:g}-seed{seed}", train_autoencoder.__file__,
                                      RUN_DEFAULTS + args.extra + ["--model", "beta_vae", "--beta", f"{beta:g}", "--seed", str(seed),
                                                    "--no-progress"],
                                      os.path.join(args.out, f"beta{beta:g}-seed{seed}"))
            for beta in args.betas for seed in args.seeds}


def run_values(metrics):
    """The numbers of one run's metrics.json that the table shows, by COLUMNS key."""
    config, values = metrics["config"], dict(metrics)
    values["beta_norm"] = config["beta"] * config["latent"] / metrics["data"]["pixels"]  # Higgins et al. 2017
    for estimator in ("mig", "mig_posterior"):
        for factor, gap in metrics.get(f"{estimator}_per_factor", {}).items():
            values[f"{estimator}_{factor}"] = gap
    if "kl_per_dim" in metrics:
        values["used_dims"] = int(np.sum(np.asarray(metrics["kl_per_dim"]) > 0.1))
    return values


def summarise(args, runs, metrics):
    """Per beta: each column's mean and standard deviation over the seeds that finished."""
    rows = []
    for beta in args.betas:
        done = [run_values(metrics[runs[beta, seed].name]) for seed in args.seeds if runs[beta, seed].name in metrics]
        row = {"beta": beta, "seeds": len(done)}
        for key, _ in COLUMNS:
            values = [m[key] for m in done if m.get(key) is not None]
            if values and len(values) == len(done):
                row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                            else None, "values": values}
        rows.append(row)
    return rows


def table(rows):
    """One Markdown line per beta: mean +- standard deviation of each column every run reports."""
    keys = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    cell = lambda v: "–" if v is None else f"{v['mean']:.3g}" + ("" if v["std"] is None else f" ± {v['std']:.2g}")
    lines = ["| " + " | ".join(["β", "seeds"] + [title for _, title in keys]) + " |",
             "| ---: | ---: |" + " ---: |" * len(keys)]
    lines += ["| " + " | ".join([f"{row['beta']:g}", str(row["seeds"])] + [cell(row.get(key)) for key, _ in keys])
              + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    runs = run_specs(args)
    runner.check_before_start(runs.values(), train_autoencoder.parse_args)  # bad flags refused before any run
    print(f"beta sweep: {len(args.betas)} betas x {len(args.seeds)} seeds = {len(runs)} runs; "
          f"logs in {args.out}/beta<B>-seed<S>/train.log", flush=True)
    with runner.Grid(args.jobs, args.dask) as grid:
        metrics = grid.run(list(runs.values()))
        rows = summarise(args, runs, metrics)
        missing = [spec.name for spec in runs.values() if spec.name not in metrics]
        note = f"PARTIAL: {len(metrics)} of {len(runs)} runs; missing: {', '.join(missing)}\n\n" if missing else ""
        result = {"rows": rows, "partial": bool(missing), "missing": missing, "betas": args.betas,
                  "seeds": args.seeds, "run_flags": RUN_DEFAULTS + args.extra,
                  "runs": {spec.name: {"beta": beta, "seed": seed, "seconds": grid.seconds.get(spec.name),
                                       **{key: run_values(metrics[spec.name]).get(key) for key, _ in COLUMNS}}
                           for (beta, seed), spec in runs.items() if spec.name in metrics}}
        write_json(os.path.join(args.out, "sweep.json"), result)
        with atomic_writer(os.path.join(args.out, "sweep.md"), "w") as f:
            f.write(f"# beta sweep\n\n{note}train_autoencoder.py --model beta_vae {' '.join(RUN_DEFAULTS + args.extra)}; "
                    f"mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}.\n\n{table(rows)}\n")
        figure = ""
        if not args.no_plots and any("mig" in run for run in result["runs"].values()):
            figure = ", " + autoencoder_figures.sweep_figure(result["runs"], os.path.join(args.out, "sweep.png"))
        print(f"\n{note}{table(rows)}\n\nwrote {args.out}/sweep.json, sweep.md{figure}", flush=True)
        grid.finish(runner.study_command(__file__, argv))
    return result


if __name__ == "__main__":
    main()
