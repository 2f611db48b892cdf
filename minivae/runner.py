"""A grid of independent training runs, on this machine's cores or on a Dask cluster.

A study script (scripts/collapse_study.py, compare_autoencoders.py, beta_sweep.py) describes each
run as a Spec: a name, the training script, that script's flags and the run's output folder. A
Grid trains them and hands back each finished run's metrics.json; the study writes its table:

    runner.check_before_start(specs, script.parse_args)  # flags the script would refuse: refused now
    with runner.Grid(args.jobs, args.dask) as grid:      # --jobs N, or --dask ADDRESS
        metrics = grid.run(specs)                        # {name: metrics} of the finished runs
        ...the study's table, marked partial when grid.partial...
        grid.finish(command)                             # exit 130 / 143 after a stop, 1 after a failure

Each run is its script started as a child process (minivae/workers.py) in its own process group,
with stdout and stderr appended to <out>/train.log and one BLAS thread, so that N runs use N cores
instead of fighting over them.
- A folder holding metrics.json is a finished run: it is read, not trained again.
- A folder holding checkpoint.npz but no metrics.json is a stopped run: it continues with --resume.
- Ctrl-C or SIGTERM to the study stops every running child with SIGTERM (also after Ctrl-C: a child
  past its training loop ends quietly on SIGTERM, where Ctrl-C would print a traceback); each
  stops cleanly and keeps its last checkpoint, and one still running STOP_SECONDS later is killed
  with its process group. The study then exits 130 after Ctrl-C, 143 after SIGTERM. A run whose
  study is killed outright (kill -9, a closed terminal) stops itself the same way within a second.
- A run that fails is reported with its command and the last line of its log; the others go on.
On Dask (optional: pip install -e ".[cluster]") each run is one task: the worker starts the script
(sent with the task, beside its sibling scripts) in a temporary folder, then returns every file of
the run folder (metrics.json, train.log, figures, checkpoint.npz), which is written into the
local folder; stopped runs return theirs too. Workers need minivae installed and any data paths
the flags name; nothing else has to be shared.
"""
import json
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from .fileio import atomic_writer, write_json
from .workers import STOP_SECONDS, last_line, run_inputs, run_remotely, script_sources, start, stop

POLL_SECONDS = 0.2
NEEDS_EXTRA = '--dask needs dask.distributed, an optional extra: pip install -e ".[cluster]"'


@dataclass
class Spec:
    """One run: `name` labels its row; `script` (a path) is started with `argv` + ["--out", out]."""
    name: str
    script: str
    argv: list
    out: str

    def done(self):
        """Whether the run has finished: its folder holds metrics.json."""
        return os.path.isfile(os.path.join(self.out, "metrics.json"))

    def resumes(self):
        """Whether the run was stopped earlier: a checkpoint but no metrics.json."""
        return not self.done() and os.path.isfile(os.path.join(self.out, "checkpoint.npz"))

    def command(self, out=None):
        """The script's flags with --out `out` (default: the run's folder), plus --resume if it was stopped."""
        out = out or self.out
        return [*self.argv, "--out", out] + (["--resume", os.path.join(out, "checkpoint.npz")] * self.resumes())

    def shell(self):
        """This run as a shell command line."""
        return shlex.join(["python", _shown(self.script), *self.command()])


def add_flags(parser):
    """--jobs N and --dask ADDRESS."""
    parser.add_argument("--jobs", type=int, help="runs trained at once on this machine, one process each "
                        "(default: the number of cores, at most the number of runs)")
    parser.add_argument("--dask", metavar="ADDRESS", help="send the runs to this Dask scheduler, e.g. "
                        "tcp://10.0.0.5:8786 (needs the extra: pip install -e \".[cluster]\")")


def check_flags(parser, args):
    """One clear line, exit 2, for --jobs < 1, --jobs with --dask, or --dask without dask installed."""
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1 (got {args.jobs})")
    if args.jobs is not None and args.dask:
        parser.error("--jobs and --dask exclude each other: the Dask workers decide how many runs train at once")
    if args.dask:
        try:
            import distributed  # noqa: F401
        except ImportError:
            parser.error(NEEDS_EXTRA)


def check_before_start(specs, parse_args):
    """Refuse a grid whose flags its training script would refuse, before any run starts: each run
    still to train has its command line parsed by `parse_args` (the script's own parser)."""
    for spec in specs:
        if not spec.done():
            parse_args(spec.command())


def study_command(script, argv=None):
    """The study's own command line, to print as the way to continue it."""
    return shlex.join(["python", _shown(script), *(sys.argv[1:] if argv is None else argv)])


def _shown(path):
    """A script's path as a command line shows it: relative to here if it lies below, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


class Grid:
    """Runs specs (run), remembers how each ended, and says how the grid ended (finish).

    As a context manager it turns Ctrl-C and SIGTERM into a stop request (the `signal` attribute)
    that the running grid passes on to its runs.
    """

    def __init__(self, jobs=None, dask=None, say=print):
        self.jobs, self.address, self.say = jobs, dask, say
        self.metrics, self.seconds, self.failed, self.stopped = {}, {}, {}, []
        self.signal, self.total, self._previous = None, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _request_stop(self, signum, frame):
        if self.signal is None:
            self.signal = signum
            self.say(f"\n{signal.Signals(signum).name}: stopping the runs (each keeps its last checkpoint)...",
                     file=sys.stderr, flush=True)

    @property
    def partial(self):
        """Whether some run of the grid has no results (stopped, failed or never started)."""
        return len(self.metrics) < self.total

    def run(self, specs):
        """Train the runs that have not finished; return {name: metrics} of every finished one."""
        self.total += len(specs)
        for spec in specs:
            if spec.done():
                self._collect(spec, None)
        todo = [spec for spec in specs if not spec.done()]
        if todo and self.signal is None:
            (self._run_on_dask if self.address else self._run_here)(todo)
        return {spec.name: self.metrics[spec.name] for spec in specs if spec.name in self.metrics}

    def _run_here(self, todo):
        jobs = min(self.jobs or len(os.sched_getaffinity(0)), len(todo))
        waiting, running = list(todo), {}  # running: name -> (spec, process, start time)
        try:
            while (waiting or running) and self.signal is None:
                while waiting and len(running) < jobs:
                    spec = waiting.pop(0)
                    self._announce(spec)
                    running[spec.name] = (spec, start([spec.script, *spec.command()], spec.out), time.perf_counter())
                time.sleep(POLL_SECONDS)
                for name, (spec, proc, t0) in list(running.items()):
                    if proc.poll() is not None:
                        del running[name]
                        self._ended(spec, proc.returncode, time.perf_counter() - t0)
        finally:  # a stop request, or an error in this process: no run outlives the grid
            stop([proc for _, proc, _ in running.values()], signal.SIGTERM)
            for spec, proc, t0 in running.values():
                self._ended(spec, proc.returncode, time.perf_counter() - t0)

    def _run_on_dask(self, todo):
        try:
            from distributed import Client, Event, wait
        except ImportError:
            raise SystemExit(NEEDS_EXTRA) from None
        try:
            client = Client(self.address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise SystemExit(f"--dask {self.address}: cannot reach the scheduler ({err})") from None
        with client:
            stop_name = f"minivae-stop-{uuid.uuid4().hex}"
            stop_event = Event(stop_name, client=client)
            waiting, pending = list(todo), {}  # pending: Dask future -> spec
            self.say(f"sending {len(todo)} runs to {self.address}, one per free worker thread", flush=True)
            try:
                while (waiting or pending) and self.signal is None:
                    # A run is sent only when a worker thread is free: Dask queues a task sent earlier
                    # behind a busy worker and does not move a task of unknown length to an idle one.
                    while waiting and len(pending) < max(sum(client.nthreads().values()), 1):
                        spec = waiting.pop(0)
                        self._announce(spec)
                        pending[client.submit(run_remotely, os.path.basename(spec.script), script_sources(spec.script),
                                              spec.argv, run_inputs(spec), stop_name,
                                              key=f"{spec.name}-{uuid.uuid4().hex[:8]}")] = spec
                    time.sleep(POLL_SECONDS)
                    for task in [task for task in pending if task.done()]:
                        self._landed(task, pending.pop(task))
            finally:  # stopped: the workers stop their runs with SIGTERM and send back what they kept
                if pending:
                    stop_event.set()
                    try:
                        wait(list(pending), timeout=STOP_SECONDS + 10)
                    except TimeoutError:  # a worker that does not answer: its run is not waited for
                        pass
                    for task, spec in pending.items():
                        if task.done():
                            self._landed(task, spec)
                        else:
                            task.cancel()

    def _landed(self, task, spec):
        """A Dask task ended: write the run's files into its local folder, then as _ended."""
        try:
            code, seconds, files = task.result()
        except Exception as err:  # the task itself failed on the worker (e.g. no minivae there)
            self.failed[spec.name] = f"{spec.shell()}\n    {type(err).__name__}: {err}"
            self.say(f"{spec.name} failed on its Dask worker: {type(err).__name__}: {err}", file=sys.stderr)
            return
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(spec.out, name)), exist_ok=True)
            with atomic_writer(os.path.join(spec.out, name), "wb") as f:
                f.write(data)
        self._ended(spec, code, seconds)

    def _announce(self, spec):
        self.say(f"start {spec.name}" + (" (resuming its checkpoint)" if spec.resumes() else ""), flush=True)

    def _ended(self, spec, code, seconds):
        """File a run that ended with exit code `code` as finished, stopped or failed, and say so.

        A run stopped after writing metrics.json (in its figures) has finished: a restart reads it too.
        """
        if spec.done() and (code == 0 or self.signal is not None):
            write_json(os.path.join(spec.out, "run.json"), {"argv": spec.argv, "seconds": seconds})
            self._collect(spec, seconds)
            self.say(f"[{len(self.metrics)}/{self.total}] {spec.name} finished in {seconds:.0f} s", flush=True)
        elif self.signal is not None:
            self.stopped += [spec] * (code is not None)  # None: a Dask task that never started its run
        else:
            self.failed[spec.name] = f"{spec.shell()}\n    {last_line(os.path.join(spec.out, 'train.log'))}"
            self.say(f"{spec.name} failed (exit code {code}): {self.failed[spec.name]}", file=sys.stderr, flush=True)

    def _collect(self, spec, seconds):
        with open(os.path.join(spec.out, "metrics.json"), encoding="utf-8") as f:
            self.metrics[spec.name] = json.load(f)
        if seconds is None:  # a run finished earlier: its flags and wall time are in its run.json, if it has one
            try:
                with open(os.path.join(spec.out, "run.json"), encoding="utf-8") as f:
                    record = json.load(f)
                seconds = record["seconds"]
            except (OSError, ValueError, KeyError):
                record = {"argv": spec.argv}
            if record.get("argv") != spec.argv:  # never a table of runs trained with other flags
                raise SystemExit(f"{spec.out} holds a run of other flags ({shlex.join(record['argv'])}): give the "
                                 "study another --out, or delete that folder to train the run again")
            self.say(f"kept {spec.name}: {spec.out} holds its results (delete that folder to train it again)")
        self.seconds[spec.name] = seconds

    def finish(self, command):
        """Say how the grid ended and how to continue it: exit 130 (Ctrl-C) or 143 (SIGTERM) after a
        stop, 1 if a run failed; return normally when every run finished."""
        done = f"{len(self.metrics)} of {self.total} runs finished"
        if self.signal is not None:
            name = "Ctrl-C (SIGINT)" if self.signal == signal.SIGINT else "SIGTERM"
            kept = [spec.name for spec in self.stopped if spec.resumes()]
            fresh = [spec.name for spec in self.stopped if not spec.resumes()]
            stopped = (f"; stopped, keeping their last checkpoints: {', '.join(kept)}" * bool(kept)
                       + f"; stopped before their first checkpoint: {', '.join(fresh)}" * bool(fresh))
            self.say(f"stopped by {name}: {done}{stopped}. The table is partial. Continue with the same "
                     f"command (finished runs are read, not trained again; stopped runs resume from their "
                     f"checkpoints):\n{command}", file=sys.stderr)
            raise SystemExit(128 + self.signal)
        if self.failed:
            lines = "\n".join(f"  {name}: {message}" for name, message in self.failed.items())
            self.say(f"{done}; {len(self.failed)} failed, the table is partial:\n{lines}\nFix the cause, then "
                     f"run the same command again to train only what is missing:\n{command}", file=sys.stderr)
            raise SystemExit(1)


