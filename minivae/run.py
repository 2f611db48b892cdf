"""One training run: its output folder, progress, checkpoints and stops.

A script's main() opens the run (Run: the --out folder, locked to this run, its stale temporary
files removed), then does everything else inside `with run.stop_cleanly():` (Ctrl-C, SIGTERM
and a full disk end the run with a resume command; the lock is released at the end): it reads
the data, builds the model, continues a checkpoint (resume), loops over epochs with batches in a
progress bar (run.progress), the NaN stop (stop_if_not_finite) before each update, and a
checkpoint (run.save) after each epoch. docs/runs.md says what a user can rely on.
"""
import atexit
import contextlib
import errno
import numbers
import os
import shlex
import shutil
import signal
import sys
import threading

import numpy as np

from .checkpoint import (CheckpointError, check_fields, check_model_state, fill_defaults, load_checkpoint,
                         model_kind, save_checkpoint)
from .elbo import NonFiniteLossError, check_finite
from .fileio import LockHeld, release_lock, remove_stale_temp_files, take_lock
from .flags import SAVED, run_config
from .optim import NonFiniteGradientError

OUTPUTS = (".npz", ".json", ".png", ".txt")  # what a run writes: stale temporary files of these are ours
LOCK = "run.lock"  # the file in --out that keeps it to one run at a time (fileio.take_lock)
DISK_FULL = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)  # a write that failed for want of room


# ------------------------------------------------------------------ the run: folder, progress, stops
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean stop handles both."""


_saving = {"now": False, "stop": False}  # SIGTERM during a checkpoint's write waits for the write to end


GRID_PARENT = "MINIVAE_GRID_PARENT"  # set by a grid of runs (minivae/workers.py) to the grid's PID


def _stop_when_orphaned(parent, done):
    """A grid's run whose grid has died (kill -9, a closed terminal) sends itself SIGTERM: it stops
    cleanly, keeps its checkpoint, and does not train on with no one to collect it."""
    while not done.wait(1.0):
        if os.getppid() != parent:  # the parent ended: this process was handed to another
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _raise_terminated(signum, frame):
    if _saving["now"]:
        _saving["stop"] = True  # Run.save raises it once the checkpoint is complete
        return
    raise Terminated()


class Run:
    """One training run: its output folder, where it is (epoch, step), and its last complete checkpoint.

    Creating it makes the --out folder and removes the temporary files a killed save left there.
    `last_checkpoint` is the newest complete checkpoint this run may continue from: the --resume
    file until the run saves its own, None before that.
    """

    def __init__(self, args, argv=None, script=None):
        self.made = _missing_folders(args.out)  # what close() removes again if the run leaves it empty
        os.makedirs(args.out, exist_ok=True)  # flags.out_problem has checked that it can be made
        self.args = args
        self.lock = os.path.join(args.out, LOCK)
        if argv is None:  # the command line of this process
            self.argv, self.script = sys.argv[1:], sys.argv[0]
        else:
            self.argv, self.script = list(argv), sys.argv[0] if script is None else script
        try:  # before anything else in the folder: another run's files are not ours to touch
            note = take_lock(self.lock, command=self.command())
        except LockHeld as err:
            self._remove_made()
            owner = err.owner
            raise SystemExit(f"--out {args.out} is in use by another run (PID {owner.get('pid')} on "
                             f"{owner.get('host')}): wait for it to end, or choose another --out. If no such run "
                             f"exists, delete {self.lock}") from None
        atexit.register(self.close)  # a script that never enters stop_cleanly still lets go at exit
        if note:
            print(f"note: {note}")
        removed = remove_stale_temp_files(args.out, lambda name: name.endswith(OUTPUTS))
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by an interrupted save: {', '.join(removed)}")
        self.last_checkpoint = args.resume
        self.checkpoint = self.path("checkpoint.npz")
        self.epoch, self.step = 0, 0
        self.saved = None  # (epoch, step) of this run's last save

    def close(self):
        """Remove the folder's lock, and the folders this run made if they hold nothing (a failed start).

        stop_cleanly calls it when its block ends, however it ends; calling it again does nothing.
        """
        atexit.unregister(self.close)
        release_lock(self.lock)
        self._remove_made()

    def _remove_made(self):
        for folder in self.made:  # deepest first
            with contextlib.suppress(OSError):  # not empty, or already gone
                os.rmdir(folder)

    def path(self, name):
        """The path of output file `name` in the --out folder."""
        return os.path.join(self.args.out, name)

    def progress(self, iterable, total, epoch, step):
        """progress() over epoch `epoch` (from 0)'s batches, starting at global step `step`, counting steps."""
        self.epoch, self.step = epoch + 1, step
        return _Counted(progress(iterable, total, f"epoch {epoch + 1}", not self.args.no_progress), self)

    def save(self, model, optimizer, rng, **state):
        """save_state to <out>/checkpoint.npz, which becomes the last complete checkpoint."""
        _saving["now"] = True
        try:
            save_state(self.checkpoint, model, optimizer, rng, **state)
        finally:
            _saving["now"] = False
        self.last_checkpoint = self.checkpoint
        self.saved = (state["epoch"], state["step"])
        if _saving["stop"]:  # SIGTERM came during the write: stop now, with this checkpoint kept
            _saving["stop"] = False
            raise Terminated()

    def command(self, resume=None):
        """This run's command line, quoted for a POSIX shell; with `resume`, its --resume set to that file."""
        argv = list(self.argv)
        if resume:
            argv = _without_resume(argv) + ["--resume", resume]
        python = sys.executable
        if os.path.realpath(shutil.which("python") or "") == os.path.realpath(sys.executable):
            python = "python"  # `python` on the PATH is this interpreter: the shorter command
        return shlex.join([python, self.script, *argv])

    @contextlib.contextmanager
    def stop_cleanly(self):
        """Turn Ctrl-C (exit code 130), SIGTERM (143) and a full disk (1) inside the block into a clean stop.

        The stop says where it happened, keeps the last complete checkpoint (a half-finished
        epoch is not saved: its state is not one a run can continue from exactly) and prints the
        command that resumes from it. A script runs everything after Run() inside this block,
        reading the data included; when the block ends, however it ends, close() lets go of the
        folder (and removes it if this run made it and wrote nothing there).
        """
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:  # signal handlers can be set only there
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        done = threading.Event()  # set when the block ends: the orphan watch below stops then
        if main_thread and os.environ.get(GRID_PARENT) == str(os.getppid()):  # a grid started this run
            threading.Thread(target=_stop_when_orphaned, args=(os.getppid(), done), daemon=True).start()
        try:
            yield
        except NonFiniteGradientError as err:  # a finite loss whose gradient is not: the NaN stop
            raise SystemExit(f"step {self.step}: {err}. Training stopped. {_kept(self.last_checkpoint)}") from None
        except KeyboardInterrupt as err:
            if isinstance(err, Terminated):
                name, code = "SIGTERM", 143
            else:
                name, code = "Ctrl-C (SIGINT)", 130
            if self.epoch:
                where = f"in epoch {self.epoch} at step {self.step}"
            else:
                where = "before training began (reading the data or building the model)"
            self._report_stop(f"stopped by {name} {where}.")
            raise SystemExit(code) from None
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            self._report_stop(f"could not write {err.filename or 'a file in ' + self.args.out}: {err.strerror} "
                              f"(errno {errno.errorcode[err.errno]}: the disk is full, or a file-size limit such "
                              f"as ulimit -f is reached). Training stopped.")
            raise SystemExit(1) from None
        finally:
            done.set()
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            self.close()

    def _report_stop(self, first_line):
        """Print `first_line`, then which checkpoint is kept and the command that resumes from it (stderr)."""
        print(f"\n{first_line}", file=sys.stderr)
        if self.last_checkpoint is None:
            print(f"There is no checkpoint: no epoch had been saved. Start again with:\n{self.command()}",
                  file=sys.stderr)
            return
        if self.saved is None:
            where = "the one this run resumed from"
        else:
            where = "end of epoch %d, step %d" % self.saved
        print(f"Kept the last complete checkpoint {self.last_checkpoint} ({where}); steps after it are "
              f"not saved. Resume with:\n{self.command(self.last_checkpoint)}", file=sys.stderr)


def _missing_folders(path):
    """The folders os.makedirs(path) would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _without_resume(argv):
    """argv without its --resume FILE (or --resume=FILE)."""
    kept = []
    words = iter(argv)
    for word in words:
        if word == "--resume":
            next(words, None)  # its FILE
        elif not word.startswith("--resume="):
            kept.append(word)
    return kept


class _Counted:
    """A progress bar whose iteration also advances run.step by one per finished batch."""

    def __init__(self, bar, run):
        self.bar, self.run = bar, run

    def __iter__(self):
        for item in self.bar:
            yield item
            self.run.step += 1

    def set_postfix(self, **values):
        self.bar.set_postfix(**values)


class PlainProgress:
    """What progress() returns without a bar: the batches themselves, and a set_postfix that does nothing."""

    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **values):
        pass


def progress(iterable, total, desc, enabled=True):
    """A tqdm bar over `iterable` if enabled, tqdm is installed and stderr is a terminal; else plain.

    Either way the result iterates over `iterable` and has set_postfix(name=value, ...), so the
    training loop reads the same with and without tqdm (a log file gets no bar redraws).
    """
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not (enabled and sys.stderr.isatty()):
        return PlainProgress(iterable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def warn_if_one_batch(batch_size, n, what):
    """Print a WARNING if --batch-size exceeds the `n` training examples: every step then sees all of them."""
    if batch_size > n:
        print(f"WARNING: --batch-size {batch_size} is larger than the {n} training {what}: each epoch is one "
              f"batch of all {n}, one step per epoch")


def plot_module():
    """minivae.plot, or None (with a note) when matplotlib is missing, so a run still ends well."""
    try:
        from . import plot
    except ImportError as err:
        print(f"skipping figures: {err}")
        return None
    return plot


# ------------------------------------------------------------------ checkpoints and the NaN stop
def save_state(path, model, optimizer, rng, **state):
    """Checkpoint what resume() restores: parameters, optimiser state, RNG state, plus `state`."""
    save_checkpoint(path, params=model.state_dict(), optimizer=optimizer.state_dict(),
                    rng=rng.bit_generator.state, **state)


def _check_fits(state, path, args, architecture, model, optimizer, rng, same, needs, restore):
    """Raise CheckpointError unless the checkpoint `state` read from `path` fits this run (see resume)."""
    check_fields(state, {**SAVED, **{key: numbers.Real for key in needs}}, path)
    filled = fill_defaults(state["config"], model_kind(state))  # entries older configs lack
    saved, given = state["config"], vars(args)
    unknown = [k for k in architecture if k not in saved]
    if unknown:
        raise CheckpointError(f"{path} was not written by this script (its config has no {', '.join(unknown)})")
    changed = [k for k in architecture if saved[k] != given.get(k)]
    if changed:
        raise CheckpointError(f"{path} was trained with a different " + ", ".join(
            f"{k} ({saved.get(k)} there, {given.get(k)} here)" for k in changed))
    for key, value in (same or {}).items():
        if state.get(key) != value:
            raise CheckpointError(f"{path} was trained with a different {key} (other data?)")
    check_model_state(state, path, model, rng)
    for key, obj in restore.items():
        if obj is not None and not isinstance(state.get(key), dict):
            raise CheckpointError(f"{path} has no --{key.replace('_', '-')} state to resume")
    return filled


def resume(path, args, architecture, model, optimizer, rng, same=None, needs=(), **restore):
    """Load the checkpoint at `path` into model, optimizer and rng; return its whole state dict.

    The run continues where the checkpoint left off, so the checkpoint must come from the same
    model: every flag named in `architecture` must equal the saved one, and every entry of
    `same` (e.g. {"vocab": vocab.to_dict()}) the saved entry. The whole file is checked before
    anything is loaded: the entries of flags.SAVED and the numbers named in `needs` with their
    types, every parameter's name, shape and dtype against the model, the optimiser state against
    the parameters, the RNG. `restore` maps checkpoint keys to objects with load_state_dict (None:
    not used in this run), e.g. mdr=MDR(...). Any problem ends the script with "--resume: <reason>".

    What is restored is the state of training: parameters, the optimiser's moments and step
    counts, the RNG, the controllers' state. Hyperparameters come from the command line: the
    optimiser keeps the lr (and any other hyperparameter) it was built with, and every flag
    that differs from the saved config is printed, one line each, saved -> now.
    """
    try:
        state = load_checkpoint(path)
        filled = _check_fits(state, path, args, architecture, model, optimizer, rng, same, needs, restore)
        model.load_state_dict(state["params"])
        built = {k: v for k, v in optimizer.state_dict().items() if not isinstance(v, np.ndarray)}
        try:  # moments and step counts from the file, hyperparameters as built from the flags
            optimizer.load_state_dict({**state["optimizer"], **built})
            rng.bit_generator.state = state["rng"]
            for key, obj in restore.items():
                if obj is not None:
                    obj.load_state_dict(state[key])
        except (ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{path}: its optimiser, RNG or controller state does not fit this run "
                                  f"({type(err).__name__}: {err})") from None
    except CheckpointError as err:
        raise SystemExit(f"--resume: {err}") from None
    print(f"resumed from {path} after epoch {state['epoch']} (step {state['step']})")
    if filled:
        print("  its config is older than the flags " + ", ".join(f"--{k.replace('_', '-')}" for k in filled)
              + "; taken as the runs of that time had them: " + ", ".join(f"{k}={v}" for k, v in filled.items()))
    saved, now = state["config"], run_config(args)
    for key, value in now.items():
        if key not in architecture and saved.get(key, value) != value:
            print(f"  --{key.replace('_', '-')}: {saved[key]} (saved) -> {value} (now)")
    return state


def stop_if_not_finite(stats, step, checkpoint):
    """End the run if a loss term is NaN or infinite, naming the step, the term and the last good checkpoint.

    Called before the update, so the parameters (and the checkpoint of the last finished epoch)
    never see the bad step. `checkpoint` is Run.last_checkpoint: None if this run has none yet
    (a file left in the folder by another run is not this run's and is not named).
    """
    try:
        check_finite(stats, step)
    except NonFiniteLossError as err:
        raise SystemExit(f"{err} {_kept(checkpoint)}") from None


def _kept(checkpoint):
    """The sentence of a stop message that names the last good checkpoint, or says there is none."""
    if checkpoint:
        return f"Last good checkpoint: {checkpoint}"
    return "No checkpoint: the run stopped before its first epoch ended."
