"""Posterior collapse, measured: the plain sentence VAE against every remedy, on the toy corpus.

Runs scripts/train_text_vae.py once per method (and per seed), with the same data, seeds, model
and budget, and tabulates the test-set results:
    DIR/collapse.json   {"rows": [one dict per method], "budget", "methods", ...}
    DIR/collapse.md     the table in Markdown
    DIR/collapse.png    KL, active units, mutual information, probes on z and NLL per method
    DIR/<method>/       each run's metrics.json, train.log, samples, reconstructions, checkpoint
where DIR is --out, or OUT/seed<S> for each seed when --seed names several. minivae.runner
trains the runs: --jobs at a time in child processes (default: one per core), or on a Dask
cluster with --dask ADDRESS (docs/runs.md). Ctrl-C or SIGTERM stops every run, each keeping its
last checkpoint, writes the finished rows marked PARTIAL and exits 130 / 143; the same command
then reads the finished runs and resumes the stopped ones.

    python scripts/collapse_study.py --out runs/collapse
    python scripts/collapse_study.py --out runs/collapse-quick3 --quick --seed 1 2 3

The model is train_text_vae's default (embedding 64, GRU 128, latent 16, vocabulary 2,000,
batch 32, Adam 1e-3) with its default remedy, the bag-of-words loss, turned off (--bow 0) for
every method but "bow": an autoregressive GRU decoder strong enough that the plain VAE
collapses (KL ~0, no active unit). Default budget: the script's defaults, 20,000 toy sentences
(18,000 for training) for 20 epochs, long enough for the annealing runs to recover from beta
reaching 1; every method gets the same budget. --quick trains a smaller model (embedding 32, GRU
64, vocabulary 1,000) with more and larger steps (batch 16, Adam 5e-3) on 12,000 short toy
sentences (4 to 12 tokens, 10 topics) for 8 epochs: a few minutes on 2 cores, in which the plain
VAE collapses while the remedies take hold (docs/collapse.md has its table over three seeds).
train_text_vae.py is imported as a sibling script (Python puts this script's folder on
sys.path), to check every run's flags before any run starts; minivae must be installed
(`pip install -e .`). Any flag this script does not know is passed to every run (e.g. `--hidden
64 --latent 8`); do not pass remedy flags that way.

Columns, all on the test split: NLL and KL in nats per sentence, PPL per token from -ELBO,
active units (Var_x E[z_j|x] >= 0.01), mutual information I(x; z) (He et al.) +- its standard
error, factor_accuracy
= how often a linear probe reads the TOPIC (6 values) from the posterior mean, factor_accuracy_z
the same from one sample z ~ q(z|x) (what the decoder sees), next to the chance rate (majority
class). Each row's "probes" holds the same for sentiment, tense and sentence length (quartile
bins), and best_z_probe names the label whose probe on z lies most binomial standard errors
above chance (more than 3: z carries it; see probe_z_score). A z may carry what saves the
decoder most nats, e.g. where the sentence ends, rather than the topic. The probe standardises
its features, so it reads the means even when they barely vary: even a collapsed encoder's
means name the topic well above chance, while its samples of z do not. recon_accuracy =
fraction of test sentences whose greedy decoding from their posterior mean is exact; levenshtein
= mean word edit distance of that decoding. verdict: "collapsed" if KL < 0.5 nat and no active
unit, "uses z" if KL > 1 nat and at least one active unit, else "weak". seconds is each run's
wall time (of its last start, when it was resumed).
"""
import argparse
import os

import train_text_vae  # the sibling script: its flags are checked here before any run starts
from minivae import runner
from minivae.fileio import atomic_writer, write_json

# Every run starts from the plain VAE: train_text_vae's default remedy (the bag-of-words loss) is
# turned off here, and each method's flags come after these, so the "bow" method turns it back on.
PLAIN = ["--bow", "0"]
# Each method is a set of train_text_vae flags, with the hyperparameters of its paper.
METHODS = {
    # The plain ELBO with beta = 1: the baseline that collapses.
    "vanilla": [],
    # KL annealing, monotonic: beta rises linearly 0 -> 1 over the first half of the run, then
    # stays 1; Fu et al.'s monotonic baseline, i.e. their cyclical schedule with one cycle.
    "monotonic": ["--beta-schedule", "cyclical", "--beta-params", "n_cycles=1,ratio=0.5"],
    # Cyclical annealing, Fu et al. 2019 (arXiv:1903.10145): M = 4 cycles over the run, each
    # rising linearly for R = 0.5 of the cycle, then beta = 1 for the rest.
    "cyclical": ["--beta-schedule", "cyclical", "--beta-params", "n_cycles=4,ratio=0.5"],
    # Free bits, Kingma et al. 2016 (arXiv:1606.04934): lambda = 0.25 nats per dimension, on the
    # batch-mean KL of each dimension (4 nats per sentence for d = 16).
    "free_bits": ["--free-bits", "0.25"],
    # Soft free bits (Chen et al. 2017; Pelsmaeker & Aziz 2020's code): the KL weight adapts by
    # 1% per step towards a KL of 5 nats per sentence, starting at 0.1 and capped at 1.
    "soft_free_bits": ["--soft-free-bits", "5"],
    # Minimum desired rate, Pelsmaeker & Aziz 2020 (arXiv:1904.08194): KL >= 5 nats per sentence
    # by a Lagrange multiplier; its ascent step is 0.001 per nat of violation (their code moves
    # the multiplier by RMSprop at the learning rate 1e-3, i.e. ~0.001 per step).
    "mdr": ["--mdr", "5", "--mdr-lr", "0.001"],
    # BN-VAE, Zhu et al. 2020 (arXiv:2004.12585): batch norm on mu with fixed scale gamma = 0.5,
    # so E[KL] >= (d/2) * gamma^2 = 2 nats per sentence for d = 16.
    "bn_vae": ["--bn-vae", "0.5"],
    # Su's tau variant of BN-VAE, tau = 0.5 (his default): E[KL] >= (d/2) log 2 = 5.5 nats for d = 16.
    "bn_vae_tau": ["--bn-vae-tau", "0.5"],
    # Word dropout, Bowman et al. 2016 (arXiv:1511.06349): half of the decoder's input words
    # become <unk> (their experiments span keep rates from 1 down to 0).
    "word_dropout": ["--word-dropout", "0.5"],
    # Contiguous (span) dropout: spans start at each word with probability 0.25 and cover
    # Poisson(3) words, which drops about half of the toy corpus's input words, as word dropout
    # does; the difference is that whole phrases go missing.
    "contiguous_dropout": ["--contiguous-dropout", "0.25", "--span-lambda", "3"],
    # The inputless decoder of Bowman et al. 2016: word dropout 1, every input word is <unk>.
    "historyless": ["--historyless"],
    # Bag-of-words loss, Zhao et al. 2017 (arXiv:1703.10960): z must also predict the sentence's
    # words in any order, weight 1 (their setting), through an MLP with 128 tanh units.
    "bow": ["--bow", "1.0"],
}

# --quick: a smaller, faster model trained with more, larger Adam steps (16 sentences, lr 5e-3)
# on 12,000 short sentences (4 to 12 tokens) of a 10-topic toy corpus for 8 epochs (5,400
# steps), so that the remedies take hold in minutes. On short sentences the plain VAE's means
# stop varying (no active unit) and the annealing runs keep more KL than on 5 to 25 tokens; ten
# topics give z more to carry (log 10 = 2.3 nats against log 6 = 1.8). The method flags stay
# those of the full study. Its flags come before any passed-through flag, which therefore
# overrides them.
QUICK = {"toy_sentences": 12000, "epochs": 8, "flags": ["--toy-length", "4", "12", "--toy-topics", "10",
                                                        "--hidden", "64", "--embedding", "32", "--max-vocab", "1000",
                                                        "--batch-size", "16", "--lr", "0.005"]}
FULL = {"toy_sentences": 20000, "epochs": 20, "flags": []}
COLLAPSED_KL, USED_KL = train_text_vae.COLLAPSED_KL, 1.0   # nats per sentence: the verdict thresholds
BEATS_CHANCE = 3.0                 # standard errors above chance for a probe on z to count


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help=f"small budget: {QUICK['toy_sentences']} sentences, "
                   f"{QUICK['epochs']} epochs (unless --toy-sentences/--epochs say otherwise), "
                   f"{' '.join(QUICK['flags'])}")
    # "%(default).0s" prints nothing; it tells the help formatter not to add "(default: None)"
    p.add_argument("--epochs", type=int, help=f"epochs per run (default {FULL['epochs']}, "
                   f"{QUICK['epochs']} with --quick)%(default).0s")
    p.add_argument("--toy-sentences", type=int, help=f"toy corpus size (default {FULL['toy_sentences']}, "
                   f"{QUICK['toy_sentences']} with --quick)%(default).0s")
    p.add_argument("--seed", type=int, nargs="+", default=[1], help="model/noise seed, the same for every "
                   "method; several seeds train every method once per seed, each seed in OUT/seed<S>/")
    p.add_argument("--data-seed", type=int, help="toy corpus and split seed (default: seed - 1)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset, in this order")
    runner.add_flags(p)
    args, extra = p.parse_known_args(argv)
    budget = QUICK if args.quick else FULL
    args.epochs = budget["epochs"] if args.epochs is None else args.epochs
    args.toy_sentences = budget["toy_sentences"] if args.toy_sentences is None else args.toy_sentences
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    if len(set(args.seed)) < len(args.seed):
        p.error(f"--seed lists a seed twice: {args.seed}")
    runner.check_flags(p, args)
    args.extra = budget["flags"] + extra
    return args


def data_seed(args, seed):
    """The toy corpus's seed for model seed `seed`: --data-seed, else seed - 1 (seed 1: corpus 0)."""
    return seed - 1 if args.data_seed is None else args.data_seed


def seed_folder(args, seed):
    """Where one seed's runs and table go: --out itself for a single seed, else OUT/seed<S>."""
    return args.out if len(args.seed) == 1 else os.path.join(args.out, f"seed{seed}")


def run_argv(args, method, seed=None):
    """train_text_vae flags of one run (all but --out): the shared budget, the passed-through flags, the method's."""
    seed = args.seed[0] if seed is None else seed
    common = ["--corpus", "toy", "--toy-sentences", str(args.toy_sentences), "--epochs", str(args.epochs),
              "--seed", str(seed), "--data-seed", str(data_seed(args, seed)), "--no-progress", "--no-plots"]
    return common + PLAIN + args.extra + METHODS[method]


def run_specs(args):
    """{(seed, method): runner.Spec}, the runs named "<method>" (one seed) or "seed<S>/<method>"."""
    prefix = lambda seed: "" if len(args.seed) == 1 else f"seed{seed}/"  # noqa: E731
    return {(seed, m): runner.Spec(prefix(seed) + m, train_text_vae.__file__, run_argv(args, m, seed),
                                   os.path.join(seed_folder(args, seed), m))
            for seed in args.seed for m in args.methods}


def table_row(method, metrics, seconds):
    """One row of the study from a run's metrics.json."""
    test = metrics["test"]
    probes = test.get("factor_accuracy") or {}
    topic = probes.get("topic", {"accuracy": None, "accuracy_z": None, "chance": None})
    kl, au = test["kl"], test["active_units"]
    verdict = ("collapsed" if kl < COLLAPSED_KL and au == 0 else
               "uses z" if kl > USED_KL and au >= 1 else "weak")
    best = max(probes, key=lambda name: probe_z_score(probes[name]), default=None)
    return {"method": method, "nll": test["nll"], "kl": kl, "active_units": au, "mi": test["mi"],
            "mi_se": test.get("mi_se"),
            "ppl": test["ppl"], "factor_accuracy": topic["accuracy"], "factor_accuracy_z": topic["accuracy_z"],
            "factor_chance": topic["chance"],
            "best_z_probe": best, "best_z_probe_score": None if best is None else probe_z_score(probes[best]),
            "recon_accuracy": test["recon_accuracy"], "levenshtein": test["levenshtein"],
            "seconds": seconds, "verdict": verdict, "probes": probes,
            "tokens_per_sec": metrics["tokens_per_sec"], "flags": " ".join(METHODS[method])}


def probe_z_score(probe):
    """How many binomial standard errors the probe on z lies above chance on its n test sentences.

    Under "z carries nothing about the label" the probe can do no better than guessing the
    majority class, so its number of hits is at most Binomial(n, chance); a score above
    BEATS_CHANCE (one-sided p < 0.002 each, four labels probed) says z carries the label.
    """
    p0 = probe["chance"]
    return (probe["accuracy_z"] - p0) / (p0 * (1 - p0) / probe["n"]) ** 0.5


def main(argv=None):
    args = parse_args(argv)
    runs = run_specs(args)
    runner.check_before_start(runs.values(), train_text_vae.parse_args)  # bad flags refused before any run
    print(f"collapse study: {len(runs)} runs of {args.epochs} epochs on {args.toy_sentences} toy sentences; "
          f"logs in {args.out}/.../<method>/train.log", flush=True)
    with runner.Grid(args.jobs, args.dask) as grid:
        metrics = grid.run(list(runs.values()))
        rows = []
        for seed in args.seed:
            names = {m: runs[seed, m].name for m in args.methods if runs[seed, m].name in metrics}
            seed_rows = [table_row(m, metrics[name], grid.seconds[name]) for m, name in names.items()]
            write_study(args, seed, seed_rows, {m: runs[seed, m].command() for m in args.methods})
            rows += seed_rows
        grid.finish(runner.study_command(__file__, argv))
    return rows


def write_study(args, seed, rows, train_argv):
    """collapse.json, collapse.md and collapse.png of one seed's runs; marked partial if some are missing."""
    folder = seed_folder(args, seed)
    partial = len(rows) < len(args.methods)
    missing = [m for m in args.methods if m not in {r["method"] for r in rows}]
    note = f"PARTIAL: {len(rows)} of {len(args.methods)} methods; missing: {', '.join(missing)}. " if partial else ""
    table = markdown_table(rows)
    write_json(os.path.join(folder, "collapse.json"), {
        "partial": partial, "missing": missing,
        "rows": rows,
        "budget": {"toy_sentences": args.toy_sentences, "epochs": args.epochs, "quick": args.quick,
                   "seed": seed, "data_seed": data_seed(args, seed), "extra_flags": args.extra},
        "methods": {m: METHODS[m] for m in args.methods},
        "train_argv": train_argv,
        "notes": {"factor_accuracy": "accuracy of a linear probe (multinomial logistic regression on "
                                     "standardised posterior means) predicting the TOPIC of test sentences; "
                                     "factor_accuracy_z: the same probe on one sample z ~ q(z|x) per "
                                     "sentence; factor_chance is the majority-class rate",
                  "probes": "per label (topic, sentiment, tense, length in quartile bins): accuracy on the "
                            "mean, accuracy_z on a sample of z, chance, n test sentences",
                  "best_z_probe": "the label whose probe on z lies most binomial standard errors "
                                  f"(best_z_probe_score) above chance; above {BEATS_CHANCE:g}: z carries it",
                  "units": "nll, kl: nats per sentence; ppl: per token from -ELBO; mi: nats; seconds: wall "
                           "time of the run's last start (training, evaluation, outputs)",
                  "verdict": f"collapsed: KL < {COLLAPSED_KL} and 0 active units; uses z: KL > {USED_KL} "
                             "and >= 1 active unit; else weak"}})
    with atomic_writer(os.path.join(folder, "collapse.md"), "w") as f:
        f.write(f"# Posterior collapse on the toy corpus\n\n{note}{args.toy_sentences} sentences, {args.epochs} "
                f"epochs per run, seed {seed}; test split. NLL and KL in nats per sentence.\n\n{table}\n")
        probes = probe_table(rows)
        if probes:
            f.write(f"\n## Linear probes, test split\n\nAccuracy reading each label from the posterior mean / "
                    f"from one sample of z; * marks a probe on z more than {BEATS_CHANCE:g} binomial standard "
                    f"errors above chance.\n\n{probes}\n")
    if rows:
        figure(rows, os.path.join(folder, "collapse.png"), f"{args.toy_sentences} toy sentences, {args.epochs} "
               f"epoch{'s' * (args.epochs != 1)} per method (test split)")
    for row in rows:
        print(summary_line(row))
    print(f"\n{table}\n\n{note}{len(rows)} runs; wrote {folder}/collapse.json, collapse.md"
          + ", collapse.png" * bool(rows), flush=True)


def summary_line(row):
    return (f"{row['method']:>18}: KL {row['kl']:6.2f}  AU {row['active_units']:2d}  MI {_mi(row)}  "
            f"NLL {row['nll']:6.2f}  topic probe mu {_percent(row['factor_accuracy'])} "
            f"z {_percent(row['factor_accuracy_z'])}  best z probe {_best_probe(row)}  "
            f"{row['verdict']}  ({_seconds(row['seconds'])} s)")


def _percent(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _mi(row):
    """'1.23±0.04': the mutual information with its standard error (runs before it was recorded: no error)."""
    return f"{row['mi']:.2f}" + ("" if row.get("mi_se") is None else f"±{row['mi_se']:.2f}")


def _seconds(v):
    return "n/a" if v is None else f"{v:.0f}"


def _best_probe(row):
    """'length 41.2% (27.0%, +9.6 se)': the label z names best, its accuracy on z, chance, score."""
    name = row["best_z_probe"]
    if name is None:
        return "n/a"
    probe = row["probes"][name]
    return (f"{name} {_percent(probe['accuracy_z'])} ({_percent(probe['chance'])}, "
            f"{row['best_z_probe_score']:+.1f} se)")


def markdown_table(rows):
    """The study as a Markdown table, one line per method."""
    head = ["method", "NLL", "KL", "AU", "MI", "PPL", "topic probe: mean / z (chance)",
            "best probe on z (chance, score)", "recon exact", "Levenshtein", "seconds", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["method"], f"{r['nll']:.2f}", f"{r['kl']:.2f}", str(r["active_units"]), _mi(r),
                 f"{r['ppl']:.2f}", f"{_percent(r['factor_accuracy'])} / {_percent(r['factor_accuracy_z'])} "
                 f"({_percent(r['factor_chance'])})", _best_probe(r),
                 _percent(r["recon_accuracy"]), f"{r['levenshtein']:.2f}", _seconds(r["seconds"]), r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_table(rows):
    """Every probe of every method, Markdown: accuracy on the mean / on z, chance in the header."""
    names = list(rows[0]["probes"]) if rows and rows[0]["probes"] else []
    if not names:
        return ""
    chance = [_percent(rows[0]["probes"][n]["chance"]) for n in names]
    head = ["method"] + [f"{n} (chance {c}): mean / z" for n, c in zip(names, chance)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([r["method"]] + [
            f"{_percent(r['probes'][n]['accuracy'])} / {_percent(r['probes'][n]['accuracy_z'])}"
            + (" *" if probe_z_score(r["probes"][n]) > BEATS_CHANCE else "") for n in names]) + " |")
    return "\n".join(lines)


def figure(rows, path, title):
    """collapse.png: one horizontal bar panel per quantity, methods top to bottom as in the table."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        print(f"skipping {path}: {err}")
        return
    panels = [("kl", "KL (nats / sentence)", "{:.2f}"), ("active_units", "active units", "{:d}"),
              ("mi", "MI I(x; z) (nats)", "{:.2f}"), ("factor_accuracy_z", "topic probe on z sample", "{:.0%}"),
              ("best_z_probe_score", "best probe on z: std. errors above chance", "{:.1f}"),
              ("nll", "NLL (nats / sentence)", "{:.1f}")]
    fig = Figure(figsize=(2.8 * len(panels), 1.2 + 0.32 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True)
    names = [r["method"] for r in rows]
    colours = {"collapsed": "tab:red", "weak": "tab:orange", "uses z": "tab:blue"}
    for ax, (key, label, fmt) in zip(axes, panels):
        values = [r[key] if r[key] is not None else 0 for r in rows]
        ax.barh(range(len(rows)), values, color=[colours[r["verdict"]] for r in rows])
        for y, (v, r) in enumerate(zip(values, rows)):
            text = fmt.format(v) + (f" {r['best_z_probe']}" if key == "best_z_probe_score" else "")
            ax.annotate(text, (max(v, 0), y), xytext=(2, 0), textcoords="offset points", va="center",
                        fontsize="x-small")
        ax.margins(x=0.2)
        if key.startswith("factor_accuracy"):
            ax.set_xlim(0, 1.15)
            if rows[0]["factor_chance"] is not None:
                ax.axvline(rows[0]["factor_chance"], color="black", linestyle="--", linewidth=1)
                ax.annotate("chance", (rows[0]["factor_chance"], len(rows) - 0.5), xytext=(2, 0),
                            textcoords="offset points", fontsize="small")
        if key == "kl":
            ax.axvline(USED_KL, color="grey", linestyle=":", linewidth=1)
        if key == "best_z_probe_score":
            ax.axvline(BEATS_CHANCE, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
    axes[0].set_yticks(range(len(rows)), names)
    axes[0].invert_yaxis()  # first method on top, as in the table
    fig.suptitle(f"{title}; red: collapsed, orange: weak, blue: uses z")
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


if __name__ == "__main__":
    main()
