"""The processes of a grid of runs (minivae/runner.py): starting a training script as a child
process, stopping it, and the same on a Dask worker.

A child gets one BLAS thread (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS are 1 in
its environment unless already set; NumPy reads them when the child first imports it), this
minivae first on its import path, and the PID of the process that started it, so that a run whose
grid is killed outright (kill -9, a closed terminal) stops itself and keeps its checkpoint
(minivae/run.py). It runs in its own process group, so that stopping it stops whatever it started,
with stdout and stderr appended to <out>/train.log.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .run import GRID_PARENT

BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STOP_SECONDS = 20.0  # how long a stopped run may take to save and exit before it is killed
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])  # the folder holding this minivae/


def child_environment():
    """This environment, plus one BLAS thread, this minivae first on the import path and this process's PID."""
    env = dict(os.environ)
    for name in BLAS_THREADS:
        env.setdefault(name, "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    env[GRID_PARENT] = str(os.getpid())  # the run stops itself if this process dies (run.stop_cleanly)
    return env


def start(argv, out):
    """Start `python argv...` in its own process group, its output appended to <out>/train.log."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.log"), "a", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_environment(), start_new_session=True)


def stop(processes, signum):
    """Send `signum` to each process's group; kill the groups that are still there STOP_SECONDS later."""
    for proc in processes:
        _signal_group(proc, signum)
    deadline = time.monotonic() + STOP_SECONDS
    for proc in processes:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:  # the group has already ended
        pass


def last_line(path):
    """The last non-blank line of a log: where a failed run says what went wrong."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return next((line.strip() for line in reversed(lines) if line.strip()), "(empty log)")


def script_sources(script):
    """The script and its siblings ({file name: text}): scripts import each other."""
    return {p.name: p.read_text(encoding="utf-8") for p in Path(script).resolve().parent.glob("*.py")}


def run_inputs(spec):
    """What a stopped run continues from: its checkpoint and its log so far."""
    files = ("checkpoint.npz", "train.log") if spec.resumes() else ()
    return {name: Path(spec.out, name).read_bytes() for name in files if os.path.isfile(os.path.join(spec.out, name))}


def run_remotely(script, sources, argv, inputs, stop_name):
    """On a Dask worker: one run in a temporary folder; returns (exit code, seconds, {file: bytes}),
    exit code None if the study was stopped before the run started.

    The Dask event `stop_name`, set by the study on Ctrl-C or SIGTERM, makes it stop its run with
    SIGTERM; the run's files come back either way.
    """
    from distributed import Event
    stop_event = Event(stop_name)
    if stop_event.is_set():  # the study was stopped before this run's turn came
        return None, 0.0, {}
    with tempfile.TemporaryDirectory(prefix="minivae-run-") as tmp:
        for name, text in sources.items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        out = os.path.join(tmp, "run")
        os.makedirs(out)
        for name, data in inputs.items():
            Path(out, name).write_bytes(data)
        resume = ["--resume", os.path.join(out, "checkpoint.npz")] if "checkpoint.npz" in inputs else []
        t0 = time.perf_counter()
        proc = start([os.path.join(tmp, script), *argv, "--out", out, *resume], out)
        while proc.poll() is None:
            if stop_event.wait(1.0):
                stop([proc], signal.SIGTERM)
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}
        return proc.returncode, time.perf_counter() - t0, files
