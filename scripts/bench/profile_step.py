"""Where a training step's time goes: forward, backward, graph bookkeeping and Adam, minivae beside NumPy.

    python scripts/bench/profile_step.py
    python scripts/bench/profile_step.py --threads 1 --workloads gru_large --steps 20 --out runs/profile.json

For each of the benchmark's workloads (scripts/bench/benchmark.py: same models, batches and
weights) it trains minivae's model and the hand-written NumPy one (scripts/bench/bench_numpy.py)
for --steps steps after --warmup, and splits each step's wall time:
  forward      minivae: the NumPy work inside the primitives' forward functions;
               hand-written: the lines before its backward pass
  backward     minivae: the NumPy work inside the VJPs; hand-written: the lines after
  bookkeeping  minivae only: the rest of forward and backward, i.e. what the engine adds
               (binding, wrapping, recording nodes, the topological order, unbroadcasting,
               summing fan-out) plus the Python of the model's own code between ops
  Adam         the optimiser step (the same form in both programs: --adam)
Each part is the median over the timed steps of this process's CPU time (time.process_time: other
processes on a busy machine disturb it far less than wall time), in milliseconds; the parts add
up to the step. Timing every primitive call adds two clock reads per call, which the forward and
backward columns absorb. --threads sets OpenBLAS's thread count in this one process; with more
than one, CPU time counts every thread's.
"""
import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its siblings, run from anywhere
import bench_numpy  # noqa: E402
import bench_workloads  # noqa: E402
from bench_workloads import CONFIGS, MLP  # noqa: E402
from minivae.engine import PRIMITIVES  # noqa: E402
from minivae.fast import blas_threads  # noqa: E402
from minivae.fileio import write_json  # noqa: E402

WORKLOADS = ("mlp", "gru", "gru_large")
PARTS = ("forward", "backward", "bookkeeping", "adam")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="which to profile")
    p.add_argument("--steps", type=int, default=40, help="timed steps per workload and program")
    p.add_argument("--warmup", type=int, default=3, help="steps run first and not timed")
    p.add_argument("--threads", type=int, default=2, help="OpenBLAS threads (and FusedAdam's)")
    p.add_argument("--adam", choices=bench_workloads.ADAMS, default="fused", help="the optimiser of both programs")
    p.add_argument("--cross-entropy", choices=["fused", "composed"], default="fused",
                   help="minivae's text loss: fused.softmax_cross_entropy or its composed form")
    p.add_argument("--gru", choices=["fused", "unrolled"], default="fused",
                   help="minivae's GRUs: fused.gru_sequence or layers.GRUCell unrolled step by step")
    p.add_argument("--sentences", type=int, default=20000, help="toy corpus size (90%% train)")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder for mlp (default: synthetic images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the batches and the weights")
    p.add_argument("--out", help="also write the table as JSON to this file")
    args = p.parse_args(argv)
    if min(args.steps, args.threads, args.sentences) < 1 or args.warmup < 0:
        p.error("--steps, --threads and --sentences must be >= 1 and --warmup >= 0")
    return args


class KernelClock:
    """Seconds spent inside every primitive's forward function and VJP while installed."""

    def __init__(self):
        self.seconds = {"forward": 0.0, "backward": 0.0}

    def _timed(self, fn, part):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.process_time() - t0
        return timed

    def install(self):
        self.originals = {name: op.forward for name, op in PRIMITIVES.items()}
        for op in PRIMITIVES.values():
            op.forward, op.vjp = self._timed(op.forward, "forward"), self._timed(op.vjp, "backward")

    def remove(self):
        for name, op in PRIMITIVES.items():
            op.forward = self.originals[name]
            del op.vjp  # the class's method again


def make_job(args, workload):
    job = {"workload": workload, "n_steps": args.warmup + args.steps, "seed": args.seed, "threads": args.threads,
           "adam": args.adam, "lr": CONFIGS[workload]["lr"], "sentences": args.sentences, "data_dir": args.data_dir,
           "mlp_examples": max(MLP["batch_size"] * (args.warmup + args.steps), 1024), "corpus": None,
           "bucket": CONFIGS[workload].get("bucket", 0), "cross_entropy": args.cross_entropy, "gru": args.gru}
    if workload == "mlp":
        job["x"], job["steps"], _ = bench_workloads.mlp_workload(job)
    else:
        job["n_vocab"], job["steps"], _ = bench_workloads.text_workload(job)
    return job


def model_of(job):
    if job["workload"] == "mlp":
        return bench_workloads.minivae_mlp(job["seed"])
    return bench_workloads.minivae_sentence_vae(job["n_vocab"], job["seed"], CONFIGS[job["workload"]], job)


def profile_minivae(job, warmup):
    """Per timed step: {part: seconds} of minivae's engine training the workload's model."""
    model = model_of(job)
    if job["workload"] == "mlp":
        x = job["x"]
        loss = lambda step: model.loss(x[step[0]], step[1])[0]  # noqa: E731
    else:
        loss = model.loss
    optimizer = bench_workloads.make_adam(model.parameters(), job)
    clock, rows = KernelClock(), []
    for i, batch in enumerate(job["steps"]):
        clock.seconds = {"forward": 0.0, "backward": 0.0}
        t0 = time.process_time()
        objective = loss(batch)
        optimizer.zero_grad()
        objective.backward()
        t1 = time.process_time()
        optimizer.step()
        t2 = time.process_time()
        if i == 0:
            clock.install()  # after one untimed step, so that the first call of everything is not timed
        if i >= warmup:
            rows.append({**clock.seconds, "bookkeeping": t1 - t0 - sum(clock.seconds.values()), "adam": t2 - t1})
    clock.remove()
    return rows


def profile_numpy(job, warmup):
    """Per timed step: {part: seconds} of the hand-written NumPy program on the same workload."""
    model = model_of(job)
    step = bench_numpy.train(job["workload"], job, model)
    rows = []
    for i, batch in enumerate(job["steps"]):
        bench_numpy.BACKWARD_STARTS.clear()
        t0 = time.process_time()
        step(batch)
        t2 = time.process_time()
        adam = step.adam_seconds[-1]
        if i >= warmup:
            forward = bench_numpy.BACKWARD_STARTS[0] - t0
            rows.append({"forward": forward, "backward": t2 - t0 - adam - forward, "bookkeeping": 0.0, "adam": adam})
    return rows


def main(argv=None):
    args = parse_args(argv)
    bench_numpy.CLOCK = time.process_time
    table = {}
    with blas_threads(args.threads):
        for workload in args.workloads:
            job = make_job(args, workload)
            for program, profile in (("minivae", profile_minivae), ("numpy", profile_numpy)):
                rows = profile(job, args.warmup)
                medians = {part: float(np.median([r[part] for r in rows])) * 1e3 for part in PARTS}
                table[f"{workload} {program}"] = {**medians, "step": sum(medians.values())}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"median CPU ms per step over {args.steps} steps, {args.threads} threads, Adam: {args.adam}, cross-entropy: "
          f"{args.cross_entropy}, GRU: {args.gru}, load average {load:.2f}")
    print(f"{'workload':<20}{'forward':>9}{'backward':>10}{'bookkeeping':>13}{'Adam':>8}{'step':>8}")
    for name, r in table.items():
        print(f"{name:<20}" + "".join(f"{r[k]:>{w}.2f}" for k, w in
                                      (("forward", 9), ("backward", 10), ("bookkeeping", 13), ("adam", 8), ("step", 8))))
    if args.out:
        write_json(args.out, {"steps": args.steps, "threads": args.threads, "adam": args.adam, "load": load,
                              "cross_entropy": args.cross_entropy, "gru": args.gru, "ms_per_step": table})
    return table


if __name__ == "__main__":
    main()
