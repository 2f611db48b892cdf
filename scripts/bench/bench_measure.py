"""How the benchmark measures: the machine it runs on, the steps it times, and a GEMM-only bound.

scripts/bench/benchmark.py imports this file; it is not a script of its own. The GEMM-only bound
lists every matrix product of a training step's forward and backward pass as (m, k, n,
transposed operand) and runs them with np.matmul in float32 into preallocated arrays, so no
framework doing the same maths with NumPy's BLAS can take less time than this.
"""
import importlib.metadata
import os
import platform
import resource
import time

import numpy as np


def machine_info(threads):
    """CPU, BLAS, package versions and the load average before the run, as a JSON-ready dict."""
    versions = {"python": platform.python_version()}
    for name in ("numpy", "autograd", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the layout of numpy's build information changes between versions
        blas = "unknown"
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"threads": threads, "blas": blas, "versions": versions, "cpu": cpu, "cpu_count": os.cpu_count(),
            "load_average_before": load_average()}


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def busy(machine):
    """True if, before the run, other work left fewer idle CPUs than the benchmark's threads.

    (The load average after the run counts the benchmark's own processes.)
    """
    load = machine.get("load_average_before")
    return bool(load) and load[0] > machine["cpu_count"] - machine["threads"] + 0.5


def mlp_gemms(B, mlp):
    """(m, k, n, transposed) products of one mlp step: 4 forward, 4 weight and 3 input gradients."""
    n_in, hidden, d = mlp["n_in"], mlp["hidden"], mlp["latent"]
    layers = [(n_in, hidden), (hidden, 2 * d), (d, hidden), (hidden, n_in)]
    forward = [(B, a, b, "") for a, b in layers]
    weights = [(a, B, b, "A") for a, b in layers]                  # x.T @ g
    inputs = [(B, b, a, "B") for a, b in layers[1:]]                # g @ W.T (not for the data)
    return forward + weights + inputs


def gru_gemms(B, T, V, gru, n_tokens):
    """The products of one gru step with encoder length T: what the maths needs, nothing recomputed.

    The vocabulary layer's products have one row per real target (n_tokens), as minivae's model.
    """
    E, H, d = gru["embed"], gru["hidden"], gru["latent"]
    out = []
    for steps in (T, T + 1):                                        # encoder, decoder
        n = B * steps
        out += [(n, E, 3 * H, "")] + [(B, H, 3 * H, "")] * steps     # input projection, recurrence
        out += [(B, 3 * H, H, "B")] * steps                          # backward through time
        out += [(H, n, 3 * H, "A"), (E, n, 3 * H, "A"), (n, 3 * H, E, "B")]  # dW_h, dW_x, d embedding
    for a, b in ((H, 2 * d), (d, H)):                               # to_latent, to_state
        out += [(B, a, b, ""), (a, B, b, "A"), (B, b, a, "B")]
    n = n_tokens
    out += [(n, H, V, ""), (H, n, V, "A"), (n, V, H, "B")]          # to_vocab
    return out


def peak_rss_mb():
    """The largest resident memory this process has used so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step, batches, check_steps, name):
    """Wall and CPU seconds of each step(batch), and the float32 losses of the first check_steps."""
    times, cpu_times, losses = [], [], []
    for i, batch in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(batch)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if i < check_steps:
            if np.asarray(loss).dtype != np.float32:
                raise TypeError(f"{name} computed a {np.asarray(loss).dtype} loss, not float32")
            losses.append(float(loss))
    return times, cpu_times, losses


def gemm_steps(workload, job, config):
    """A step function and its batches: each batch the operands of one job step's matrix products.

    Every operand is a view of one of three preallocated arrays (random A and B, the output C),
    so steps whose token counts all differ need no more memory than their largest product.
    """
    if workload == "mlp":
        shapes = [mlp_gemms(len(idx), config) for idx, _ in job["steps"]]
    else:
        shapes = [gru_gemms(len(b["lengths"]), b["enc_in"].shape[1], job["n_vocab"], config, int(b["mask"].sum()))
                  for b in job["steps"]]
    size = max(max(m * k, k * n, m * n) for step_shapes in shapes for m, k, n, _ in step_shapes)
    rng = np.random.default_rng(0)
    a_pool, b_pool = (rng.standard_normal(size).astype(np.float32) for _ in range(2))
    c_pool = np.empty(size, np.float32)

    def operands(m, k, n, transposed):
        a = a_pool[:m * k].reshape((k, m) if transposed == "A" else (m, k))
        b = b_pool[:k * n].reshape((n, k) if transposed == "B" else (k, n))
        return a.T if transposed == "A" else a, b.T if transposed == "B" else b, c_pool[:m * n].reshape(m, n)

    def step(products):
        for a, b, c in products:
            np.matmul(a, b, out=c)
    return step, [[operands(*s) for s in step_shapes] for step_shapes in shapes]
