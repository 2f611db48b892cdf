"""Time minivae against hand-written NumPy, HIPS autograd and PyTorch on three VAE training workloads.

    python scripts/bench/benchmark.py --out runs/benchmark.json
    python scripts/bench/benchmark.py --quick --threads 1 --frameworks minivae numpy torch

The targets: minivae's time on mlp and gru at most 1.05 times that of `numpy`, the same models
written by hand in plain NumPy (scripts/bench/bench_numpy.py): gradients derived on paper, no graph,
no array the maths does not need, minivae's Adam (fast.FusedAdam, or optim.Adam with --adam textbook). That program is the floor for an autodiff
engine on NumPy, so minivae's time minus its time is the engine's overhead; its Adam time is
reported apart, so the floor without the optimiser is printed too. On gru_large, minivae's
training tokens per second at least PyTorch's (a time ratio <= 1.0). HIPS autograd
(scripts/bench/bench_autograd.py) and PyTorch (scripts/bench/bench_torch.py, when installed) run the same
models; a GEMM-only lower bound (scripts/bench/bench_measure.py) times just the matrix products one
training step needs, in NumPy float32, on the same shapes.

Workloads, identical in every framework: the same initial weights (minivae's, copied into the
others), data order, noise (eps and word-dropout masks are drawn once and passed in), batch
size, float32 arithmetic and thread count.
  mlp  The MNIST VAE recipe: 784-400-20 ReLU, Bernoulli ("BCE") likelihood + analytic KL,
       Adam 1e-3 (each framework's usual Adam), batch 128, over the 60,000 Fashion-MNIST
       training images: from --data-dir, else from minivae's data cache ($MINIVAE_DATA/
       fashion-mnist, else ~/.cache/minivae/fashion-mnist; downloaded into it when online),
       else (offline, nothing cached, or --synthetic) a synthetic set of the same size.
       Reported as seconds per epoch.
  gru  A sentence VAE: shared embedding (vocab 2,000, size 64) -> GRU encoder (128) -> mu,
       logvar (16) -> z -> h0 = tanh(Dense(z)) -> GRU decoder (128) -> vocabulary logits ->
       masked cross-entropy + KL; batch 32, word dropout 0.25, length-bucketed batches of the
       toy corpus (minivae.text.load_toy_data). Reported as training tokens per second, where
       tokens are the decoder's targets (the words and <eos>: what perplexity counts).
  gru_large  The same model at the Sentence-VAE paper's size: vocabulary 10,000, embedding
       300, GRU 256, latent 16, batch 32, word dropout 0.5, on the toy language with 10 topics
       and sentences of 4-40 tokens (or --corpus FILE); batches length-bucketed (--bucket 50),
       or random with --bucket 0. PyTorch runs nn.GRU over packed sequences here; HIPS
       autograd runs 15 steps only. The vocabulary layer dominates: minivae computes its loss
       with fused.softmax_cross_entropy.
Every framework runs each workload in a fresh Python process whose BLAS thread variables are
set before NumPy is imported (and torch.set_num_threads), so its peak memory is that process's
ru_maxrss. The first --check-steps losses of every framework are compared (they must agree to
float32 accuracy: the programs compute the same function).

Timings leave out the first --warmup steps and are scaled to a full epoch (mlp) or reported
per token (gru, gru_large); --quick times fewer steps and says so. The machine's load average is
printed: other busy processes (on a 2-core machine, even one) make every number here slower
and noisier, multithreaded BLAS most of all.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np  # a worker's BLAS threads are set in its environment, before it starts

import bench_autograd
import bench_measure
import bench_numpy
import bench_torch
import bench_workloads
from bench_workloads import CONFIGS, GRU_LARGE, MLP
from minivae import data
from minivae.fileio import write_json
from minivae.allocator import reuse_freed_memory

FRAMEWORKS = ("minivae", "numpy", "autograd", "torch")
TITLES = {"minivae": "minivae", "numpy": "NumPy by hand", "autograd": "HIPS autograd", "torch": "PyTorch"}
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
WORKLOADS = ("mlp", "gru", "gru_large")
AUTOGRAD_LARGE_STEPS = 15  # HIPS autograd's steps on gru_large at most (each takes seconds)
# (name, workload, framework, ratio): minivae's time over the framework's must stay <= ratio.
TARGETS = [("mlp time vs hand-written NumPy", "mlp", "numpy", 1.05),
           ("gru time vs hand-written NumPy", "gru", "numpy", 1.05),
           ("gru_large time vs PyTorch", "gru_large", "torch", 1.0)]
SETTINGS = ("quick", "mlp_steps", "gru_steps", "gru_large_steps", "warmup", "check_steps", "rtol", "mlp_examples",
            "sentences", "corpus", "bucket", "seed", "torch_gru", "adam", "cross_entropy")  # recorded in the JSON and passed to every worker


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads of every framework (default 2)")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                   help="which to run (minivae always does); one not installed is reported as null")
    p.add_argument("--data-dir", metavar="path/to/fashion-mnist", help="folder with the Fashion-MNIST "
                   "IDX files (default: minivae's data cache, downloading when online; offline with "
                   "nothing cached, the mlp workload uses synthetic images)")
    p.add_argument("--synthetic", action="store_true", help="synthetic images even if Fashion-MNIST is there")
    p.add_argument("--mlp-examples", type=int, default=60000, help="training images per epoch")
    p.add_argument("--sentences", type=int, default=20000, help="toy corpus size (90%% train)")
    p.add_argument("--corpus", metavar="FILE", help="gru_large trains on this text file (one sentence a "
                   "line; its 10,000 most frequent words) instead of the toy corpus")
    p.add_argument("--bucket", type=int, default=GRU_LARGE["bucket"], help="gru_large's batches: sorted by "
                   "length within pools of this many batches (default 50, as gru's); 0: random batches")
    p.add_argument("--quick", action="store_true", help="time 100 mlp, 30 gru and 15 gru_large steps, extrapolated")
    p.add_argument("--mlp-steps", type=int, help="mlp steps to run (default: one epoch; 100 with --quick)")
    p.add_argument("--gru-steps", type=int, help="gru steps to run (default 300; 30 with --quick)")
    p.add_argument("--gru-large-steps", type=int, help="gru_large steps to run (default 100; 15 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--check-steps", type=int, default=10, help="first steps whose losses are compared")
    p.add_argument("--rtol", type=float, default=2e-3, help="largest relative loss difference that agrees")
    p.add_argument("--torch-gru", choices=["padded", "packed"], default="padded", help="gru: nn.GRU on the "
                   "padded batch (faster, same function) or through pack_padded_sequence (always, on gru_large)")
    p.add_argument("--adam", choices=bench_workloads.ADAMS, default="fused", help="minivae's and the hand-written "
                   "models' optimiser: fast.FusedAdam (threads as --threads) or the textbook optim.Adam")
    p.add_argument("--cross-entropy", choices=["fused", "composed"], default="fused", help="minivae's text loss: "
                   "fused.softmax_cross_entropy or its composed form (logsumexp minus the picked logit)")
    p.add_argument("--default-malloc", action="store_true", help="skip minivae.allocator.reuse_freed_memory(), "
                   "which every worker calls first by default, as the training scripts do")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the batches and the initial weights")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one job in this process
    args = p.parse_args(argv)
    if args.worker:
        return args
    n_epoch = -(-args.mlp_examples // MLP["batch_size"])
    defaults = {"mlp_steps": min(100, n_epoch) if args.quick else n_epoch, "gru_steps": 30 if args.quick else 300,
                "gru_large_steps": 15 if args.quick else 100}
    for name, default in defaults.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    steps = ("mlp_steps", "gru_steps", "gru_large_steps")
    for name in ("threads", "mlp_examples", "sentences", *steps, "check_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.warmup >= min(getattr(args, name) for name in steps):
        p.error("--warmup must be >= 0 and smaller than --mlp-steps, --gru-steps and --gru-large-steps")
    if args.check_steps > min(getattr(args, name) for name in steps):
        p.error("--check-steps cannot exceed --mlp-steps, --gru-steps or --gru-large-steps")
    if args.bucket < 0:
        p.error("--bucket must be >= 0 (0: random batches)")
    if args.corpus and not os.path.isfile(args.corpus):
        p.error(f"--corpus {args.corpus} is not a file (a UTF-8 text file, one sentence per line)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        p.error(f"--data-dir {args.data_dir} is not a folder (leave it out to use minivae's data cache)")
    if "minivae" not in args.frameworks:
        args.frameworks.insert(0, "minivae")
    return args


def find_images(args):
    """The folder the workers read Fashion-MNIST from, or None for synthetic images (said in one line)."""
    if args.synthetic:
        return None
    try:  # read (and, without --data-dir, download) once here, so no timed worker waits for it
        data.load_dataset("fashion-mnist", "train", data_dir=args.data_dir, download=args.data_dir is None)
    except (data.DataUnavailable, data.DataError) as err:
        if args.data_dir or isinstance(err, data.DataError):  # a folder the user named, or a damaged file
            raise SystemExit(f"data: {err}") from None
        print(f"Fashion-MNIST unavailable ({err.reason}): the mlp workload times synthetic images", flush=True)
        return None
    return args.data_dir or data.cache_dir("fashion-mnist")


# ============================================================================ worker processes
TRAIN = {"minivae": bench_workloads.train_minivae, "numpy": bench_numpy.train, "autograd": bench_autograd.train,
         "torch": bench_torch.train}


def run_job(job):
    """Run one (workload, framework) in this process; return its timings, losses and memory."""
    workload, config = job["workload"], CONFIGS[job["workload"]]
    if workload == "mlp":
        job["x"], job["steps"], source = bench_workloads.mlp_workload(job)
    else:
        job["n_vocab"], job["steps"], source = bench_workloads.text_workload(job)
    job["lr"] = config["lr"]
    result = {"data": source}
    if job["reuse_freed_memory"]:  # every framework alike: the allocator is the process's, not minivae's
        result["reuse_freed_memory"] = reuse_freed_memory()
    if job["framework"] == "gemm":
        step, batches = bench_measure.gemm_steps(workload, job, config)
    else:
        model = (bench_workloads.minivae_mlp(job["seed"]) if workload == "mlp" else
                 bench_workloads.minivae_sentence_vae(job["n_vocab"], job["seed"], config, job))
        step, batches = TRAIN[job["framework"]](workload, job, model), job["steps"]
        del model  # the others train copies of its weights
    result["setup_rss_mb"] = bench_measure.peak_rss_mb()
    check_steps = 0 if job["framework"] == "gemm" else job["check_steps"]
    times, cpu_times, losses = bench_measure.time_steps(step, batches, check_steps, job["framework"])
    result["peak_rss_mb"] = bench_measure.peak_rss_mb()
    timed = slice(job["warmup"], None)
    result.update(seconds=sum(times[timed]), cpu_seconds=sum(cpu_times[timed]), timed_steps=len(times[timed]),
                  losses=losses)
    if job["framework"] == "numpy":  # how much of it is the optimiser (the same Adam as minivae's)
        result["optimizer_seconds"] = sum(step.adam_seconds[timed])
    if workload != "mlp":
        result["tokens"] = int(sum(b["mask"].sum() for b in job["steps"][timed]))
    return result


def spawn(job, threads):
    """Run a job in a fresh interpreter whose BLAS thread variables are set before NumPy loads.

    The worker imports the same minivae as this process (the checkout a test runs in, say).
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(data.__file__)))
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, **{name: str(threads) for name in THREAD_VARIABLES})
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {job['workload']}/{job['framework']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loss_agreement(losses, rtol):
    """Per framework: the largest relative difference of its losses from minivae's, step by step."""
    ref = losses["minivae"]
    out = {}
    for name, values in losses.items():
        if name == "minivae" or values is None:
            continue
        if len(values) != len(ref) or not ref:
            raise ValueError(f"{name} reported {len(values)} losses, minivae {len(ref)}")
        diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, values))
        out[name] = {"max_rel_diff": diff, "steps": len(ref), "agree": bool(diff <= rtol)}
    return out


# ============================================================================ the run and its report
def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))))
        return None
    report = {"machine": bench_measure.machine_info(args.threads),
              "settings": {**{name: getattr(args, name) for name in SETTINGS},
                           "reuse_freed_memory": not args.default_malloc, **CONFIGS}}
    print(f"threads {args.threads}, {report['machine']['blas']}, load average "
          f"{report['machine']['load_average_before']}", flush=True)
    data_dir = find_images(args)
    steps_per_epoch = -(-args.mlp_examples // MLP["batch_size"])
    for workload in WORKLOADS:
        n_steps = getattr(args, f"{workload}_steps")
        job = {**{name: getattr(args, name) for name in SETTINGS}, "workload": workload, "n_steps": n_steps,
               "threads": args.threads, "data_dir": data_dir, "reuse_freed_memory": not args.default_malloc}
        section = {name: None for name in FRAMEWORKS}  # null: not requested or not installed
        for framework in [*args.frameworks, "gemm"]:
            if framework in ("autograd", "torch") and importlib.util.find_spec(framework) is None:
                print(f"{workload:9s} {framework:9s} not installed: skipped", flush=True)
                continue
            n = n_steps
            if (workload, framework) == ("gru_large", "autograd"):  # ~7x minivae's time per step
                n = min(n_steps, max(AUTOGRAD_LARGE_STEPS, args.check_steps, args.warmup + 1))
                print(f"{workload:9s} {framework:9s} runs {n} steps only: far too slow for more", flush=True)
            r = spawn({**job, "framework": framework, "n_steps": n}, args.threads)
            per_step = r["seconds"] / r["timed_steps"]
            if workload == "mlp":
                r["sec_per_epoch"] = per_step * steps_per_epoch
            else:
                r["tokens_per_sec"] = r["tokens"] / r["seconds"]
            section[framework] = r
            print(f"{workload:9s} {framework:9s} {per_step * 1e3:8.2f} ms/step over {r['timed_steps']} steps (CPU "
                  f"time {r['cpu_seconds'] / r['timed_steps'] * 1e3:.2f} ms/step), peak RSS {r['peak_rss_mb']:.0f} MB"
                  + (f", Adam {r['optimizer_seconds'] / r['timed_steps'] * 1e3:.2f} ms/step of it"
                     if "optimizer_seconds" in r else ""), flush=True)
        gemm = section.pop("gemm")
        key = "sec_per_epoch" if workload == "mlp" else "tokens_per_sec"
        section[f"gemm_bound_{key}"] = gemm[key]
        section["data"] = gemm["data"]
        section["loss_agreement"] = loss_agreement(
            {f: section[f]["losses"] if section[f] else None for f in args.frameworks}, args.rtol)
        report[workload] = section
    report["machine"]["load_average_after"] = bench_measure.load_average()
    report["machine"]["busy"] = bench_measure.busy(report["machine"])
    report["targets"] = targets(report)
    print_report(report, args, steps_per_epoch)
    if args.out:  # write_json creates the folder
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


def time_ratio(workload, minivae_value, other_value):
    """minivae's time over another's for the same work (below 1: minivae is faster)."""
    return minivae_value / other_value if workload == "mlp" else other_value / minivae_value


def targets(report):
    out = []
    for name, workload, other, want in TARGETS:
        if report[workload].get(other):
            key = "sec_per_epoch" if workload == "mlp" else "tokens_per_sec"
            ratio = time_ratio(workload, report[workload]["minivae"][key], report[workload][other][key])
            out.append({"name": name, "ratio": ratio, "target": f"<= {want}", "met": bool(ratio <= want)})
    return out


def print_report(report, args, steps_per_epoch):
    """The table of the three workloads, every framework side by side, then the targets and checks."""
    def row(label, cells):
        print(f"{label:24s}" + "".join(f"{c:>15s}" for c in cells))

    names = [f for f in FRAMEWORKS if f in args.frameworks]
    quick = " (--quick)" if args.quick else ""
    print(f"\nmlp s/epoch: the mean of {report['mlp']['minivae']['timed_steps']} timed steps (after "
          f"{args.warmup} warm-up steps) extrapolated to an epoch of {steps_per_epoch} steps{quick}")
    for workload in WORKLOADS[1:]:
        print(f"{workload} tokens/s: decoder targets (words and <eos>) of {report[workload]['minivae']['timed_steps']}"
              f" timed steps of {CONFIGS[workload]['batch_size']} sentences, over their time{quick}")
    for workload in WORKLOADS:
        print(f"{workload} data: {report[workload]['data']}")
    row("", [TITLES[n] for n in names] + ["GEMMs only"])
    for workload in WORKLOADS:
        key, unit, fmt = ("sec_per_epoch", "s/epoch", "{:.2f}") if workload == "mlp" else (
            "tokens_per_sec", "tokens/s", "{:,.0f}")
        results, mine = [report[workload][n] for n in names], report[workload]["minivae"][key]
        values = [r[key] if r else None for r in results] + [report[workload][f"gemm_bound_{key}"]]
        row(f"{workload} {unit}", [fmt.format(v) if v else "-" for v in values])
        row("  minivae time / theirs", [f"{time_ratio(workload, mine, v):.2f}" if v else "-" for v in values])
        row("  peak RSS MB", [f"{r['peak_rss_mb']:.0f}" if r else "-" for r in results])
    for t in report["targets"]:
        print(f"target {t['name']}: minivae time / theirs = {t['ratio']:.3f} (want {t['target']}): "
              f"{'met' if t['met'] else 'NOT met'}")
    for workload in WORKLOADS:
        key, unit = ("sec_per_epoch", "s/epoch") if workload == "mlp" else ("tokens_per_sec", "tokens/s")
        r = report[workload]["numpy"]
        if r:  # the hand-written floor with its optimiser taken out: what the rest of a step costs
            rest = (r["seconds"] - r["optimizer_seconds"]) / r["seconds"]
            value = f"{r[key] * rest:.2f}" if workload == "mlp" else f"{r[key] / rest:,.0f}"
            print(f"{workload} hand-written NumPy without its Adam: {value} {unit}")
    for workload in WORKLOADS:
        for n, a in report[workload]["loss_agreement"].items():
            print(f"{workload} losses, first {a['steps']} steps: minivae vs {n} max relative difference "
                  f"{a['max_rel_diff']:.2e} ({'agree' if a['agree'] else 'DISAGREE'} at rtol {args.rtol})")
    m = report["machine"]
    print(f"load average before {m['load_average_before']}, after {m['load_average_after']}")
    if m["busy"]:
        print(f"WARNING: other processes were keeping this machine busy (load average "
              f"{m['load_average_before'][0]:.1f} on {m['cpu_count']} CPUs, {m['threads']} wanted): the times "
              "above are inflated and noisy; compare CPU times (in the JSON) or rerun on an idle machine")


if __name__ == "__main__":
    main()
