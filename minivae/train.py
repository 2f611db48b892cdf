"""What the two training scripts share; their training loops stay in scripts/, visible top to bottom.

A script's main() reads, in order: parse the flags (add_kl_flags, add_run_flags, check_flags:
every flag, the --resume checkpoint and the --out folder are checked before any data is read),
open the run (Run: the output folder, its stale temporary files removed), build the model,
continue a checkpoint (resume), then loop over epochs inside `with run.stop_cleanly():`
(Ctrl-C and SIGTERM end the run with a resume command): batches in a progress bar
(run.progress), the NaN stop (stop_if_not_finite) before each update, and a checkpoint
(run.save) after each epoch. docs/runs.md says what a user can rely on.
"""
import argparse
import contextlib
import ctypes
import ctypes.util
import math
import numbers
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading

import numpy as np

from . import schedules
from .checkpoint import CheckpointError, check_fields, check_model_state, load_checkpoint, save_checkpoint
from .elbo import FREE_BITS_MODES, NonFiniteLossError, check_finite
from .fileio import remove_stale_temp_files
from .optim import NonFiniteGradientError

NOT_CONFIG = ("resume", "no_progress", "overwrite")  # flags that change how a run is watched, not what it computes
RESULTS = ("checkpoint.npz", "metrics.json")  # a folder holding either holds a run's results
OUTPUTS = (".npz", ".json", ".png", ".txt")  # what a run writes: stale temporary files of these are ours
SAVED = {"params": dict, "optimizer": dict, "rng": dict, "config": dict, "step": int, "epoch": int,
         "history": list}  # what every checkpoint of save_state holds, and its type


# ------------------------------------------------------------------ flags
def finite_float(text):
    """argparse type: a float that is neither NaN nor infinite (float() accepts "nan" and "inf")."""
    try:
        if math.isfinite(value := float(text)):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")


def add_kl_flags(parser):
    """The KL term's weight and floor: --beta, --beta-schedule, --beta-params, --free-bits, --free-bits-mode."""
    parser.add_argument("--beta", type=finite_float, default=1.0, help="KL weight (the schedule's final value)")
    parser.add_argument("--beta-schedule", choices=sorted(schedules.SCHEDULES), default="constant",
                        help="KL annealing as a function of the global step")
    parser.add_argument("--beta-params", default="", help="schedule parameters as k=v,k=v (steps count "
                        "minibatches; total_steps defaults to the whole run). Schedules: "
                        + schedules._usage().replace("%", "%%"))
    parser.add_argument("--free-bits", type=finite_float, default=0.0,
                        help="free bits lambda, nats per dimension")
    parser.add_argument("--free-bits-mode", choices=FREE_BITS_MODES, default="batch_dim")


def add_run_flags(parser, out):
    """--seed, --dtype, --out (default `out`), --resume, --overwrite, --no-progress, --no-plots."""
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--resume", help="checkpoint to continue from (same architecture and data; "
                        "the other flags may change, e.g. --lr or --epochs)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def check_flags(parser, args, at_least_1=(), positive=(), at_least_0=(), in_0_1=()):
    """End the script through parser.error (exit code 2), naming the flag, if a flag cannot work.

    Each argument lists attribute names ("batch_size" is checked and reported as --batch-size);
    a list-valued flag (--hidden 400 200) is checked element by element; --seed must be >= 0.
    Then --beta-params and (with add_run_flags' flags) the --resume checkpoint (readable, every
    entry of SAVED) and the --out folder (see out_problem) are checked, so that no mistake surfaces after the data is read.
    """
    tests = [(at_least_1, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0, "> 0"),
             ((*["seed"][:hasattr(args, "seed")], *at_least_0), lambda v: v >= 0, ">= 0"), (in_0_1, lambda v: 0 <= v <= 1, "in [0, 1]")]
    for names, ok, rule in tests:
        for name in names:
            value = getattr(args, name)
            if not all(ok(v) for v in (value if isinstance(value, list) else [value])):
                parser.error(f"--{name.replace('_', '-')} must be {rule} (got {value})")
    problem = beta_params_problem(args) or (hasattr(args, "out") and (resume_problem(args) or out_problem(args)))
    if problem:
        parser.error(problem)


def beta_params_problem(args):
    """What is wrong with --beta-params (syntax, a non-finite or fractional count, a bad value), or None."""
    schedule, params = getattr(args, "beta_schedule", "constant"), getattr(args, "beta_params", "")  # a script may have none
    for item in filter(None, params.split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        if key == "shape":
            continue
        try:
            number = float(value)
        except ValueError:
            return f"--beta-params: {item!r} is not key=number"
        if not math.isfinite(number):
            return f"--beta-params: {key}={value} must be a finite number"
        if key in ("total_steps", "n_cycles", "warmup_steps") and number != int(number):  # counts
            return f"--beta-params: {key}={value} must be a whole number"
    try:  # the schedule's own checks; total_steps is known only after the data is read
        schedules.from_flags(schedule, params, total_steps=10 ** 9)
    except ValueError as err:
        return str(err)
    return None


def resume_problem(args):
    """What is wrong with the --resume checkpoint that can be seen without the model, or None."""
    try:
        return getattr(args, "resume", None) and check_fields(load_checkpoint(args.resume), SAVED, args.resume)
    except CheckpointError as err:
        return f"--resume: {err}"


def out_problem(args):
    """Why --out cannot take this run's results, or None.

    It must be a folder, or a path where one can be made, that we can write in; and if it holds
    another run's results (RESULTS) they are kept unless this run resumes that folder's own
    checkpoint or was given --overwrite.
    """
    path = args.out
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--out {path} is a file, not a folder"
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"--out {path}: {existing} is a file, not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        return f"--out {path}: cannot write in {existing} ({err.strerror or err})"
    held = [name for name in RESULTS if os.path.isfile(os.path.join(path, name))]
    own = getattr(args, "resume", None) and os.path.samefile(os.path.dirname(os.path.abspath(args.resume)), existing)
    if held and not (own or getattr(args, "overwrite", False)):
        ckpt = os.path.join(path, "checkpoint.npz")
        keep = f"continue it with --resume {ckpt}, or " if "checkpoint.npz" in held else ""
        return f"--out {path} holds another run ({', '.join(held)}): {keep}replace it with --overwrite"
    return None


def beta_schedule(args, total_steps):
    """beta(t) from --beta-schedule, --beta-params and --beta (scaling the schedule's 0..1 range).

    A bad schedule name or parameter ends the script with the flag at fault named.
    """
    try:
        fn = schedules.from_flags(args.beta_schedule, args.beta_params, total_steps)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return lambda t: args.beta * fn(t)


def run_config(args):
    """The flags as a dict for metrics.json and the checkpoint, without those in NOT_CONFIG."""
    return {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}


# ------------------------------------------------------------------ the run: folder, progress, checkpoints, stops
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean stop handles both."""


def _raise_terminated(signum, frame):
    raise Terminated()


class Run:
    """One training run: its output folder, where it is (epoch, step), and its last complete checkpoint.

    Creating it makes the --out folder and removes the temporary files a killed save left there.
    `last_checkpoint` is the newest complete checkpoint this run may continue from: the --resume
    file until the run saves its own, None before that.
    """

    def __init__(self, args, argv=None, script=None):
        os.makedirs(args.out, exist_ok=True)  # out_problem has checked that it can be made
        removed = remove_stale_temp_files(args.out, lambda name: name.endswith(OUTPUTS))
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by an interrupted save: {', '.join(removed)}")
        self.args, self.last_checkpoint = args, args.resume
        self.checkpoint = self.path("checkpoint.npz")
        self.epoch, self.step, self.saved = 0, 0, None  # saved: (epoch, step) of this run's last save
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.script = sys.argv[0] if argv is None or script is None else script

    def path(self, name):
        """The path of output file `name`."""
        return os.path.join(self.args.out, name)

    def progress(self, iterable, total, epoch, step):
        """progress() over epoch `epoch` (from 0)'s batches, starting at global step `step`, counting steps."""
        self.epoch, self.step = epoch + 1, step
        return _Counted(progress(iterable, total, f"epoch {epoch + 1}", not self.args.no_progress), self)

    def save(self, model, optimizer, rng, **state):
        """save_state to <out>/checkpoint.npz, which becomes the last complete checkpoint."""
        save_state(self.checkpoint, model, optimizer, rng, **state)
        self.last_checkpoint, self.saved = self.checkpoint, (state["epoch"], state["step"])

    def command(self, resume=None):
        """This run's command line, quoted for a POSIX shell; with `resume`, its --resume set to that file."""
        argv = list(self.argv)
        for i in reversed(range(len(argv)) if resume else []):  # drop the old --resume FILE
            if argv[i].startswith("--resume=") or argv[i] == "--resume":
                del argv[i:i + (argv[i] == "--resume") + 1]
        python = "python" if os.path.realpath(shutil.which("python") or "") == os.path.realpath(sys.executable) \
            else sys.executable
        return shlex.join([python, self.script, *argv, *(["--resume", resume] if resume else [])])

    @contextlib.contextmanager
    def stop_cleanly(self):
        """Turn Ctrl-C (exit code 130) and SIGTERM (143) inside the block into a clean stop.

        The stop says where it happened, keeps the last complete checkpoint (a half-finished
        epoch is not saved: its state is not one a run can continue from exactly) and prints the
        command that resumes from it.
        """
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            yield
        except NonFiniteGradientError as err:  # a finite loss whose gradient is not: the NaN stop
            raise SystemExit(f"step {self.step}: {err}. Training stopped. {_kept(self.last_checkpoint)}") from None
        except KeyboardInterrupt as err:
            name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("Ctrl-C (SIGINT)", 130)
            print(f"\nstopped by {name} in epoch {self.epoch} at step {self.step}.", file=sys.stderr)
            if self.last_checkpoint is None:
                print(f"No epoch had finished: there is no checkpoint. Start again with:\n{self.command()}",
                      file=sys.stderr)
            else:
                where = ("the one this run resumed from" if self.saved is None
                         else "end of epoch %d, step %d" % self.saved)
                print(f"Kept the last complete checkpoint {self.last_checkpoint} ({where}); steps after it are "
                      f"not saved. Resume with:\n{self.command(self.last_checkpoint)}", file=sys.stderr)
            raise SystemExit(code) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


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


def plot_module():
    """minivae.plot, or None (with a note) when matplotlib is missing, so a run still ends well."""
    try:
        from . import plot
        return plot
    except ImportError as err:
        print(f"skipping figures: {err}")


# ------------------------------------------------------------------ checkpoints and the NaN stop
def save_state(path, model, optimizer, rng, **state):
    """Checkpoint what resume() restores: parameters, optimiser state, RNG state, plus `state`."""
    save_checkpoint(path, params=model.state_dict(), optimizer=optimizer.state_dict(),
                    rng=rng.bit_generator.state, **state)


def _check_fits(state, path, args, architecture, model, optimizer, rng, same, needs, restore):
    """Raise CheckpointError unless the checkpoint `state` read from `path` fits this run (see resume)."""
    check_fields(state, {**SAVED, **{key: numbers.Real for key in needs}}, path)
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


def resume(path, args, architecture, model, optimizer, rng, same=None, needs=(), **restore):
    """Load the checkpoint at `path` into model, optimizer and rng; return its whole state dict.

    The run continues where the checkpoint left off, so the checkpoint must come from the same
    model: every flag named in `architecture` must equal the saved one, and every entry of
    `same` (e.g. {"vocab": vocab.to_dict()}) the saved entry. The whole file is checked before
    anything is loaded: the entries of SAVED and the numbers named in `needs` with their types,
    every parameter's name, shape and dtype against the model, the optimiser state against the
    parameters, the RNG. `restore` maps checkpoint keys to objects with load_state_dict (None:
    not used in this run), e.g. mdr=MDR(...). Any problem ends the script with "--resume: <reason>".

    What is restored is the state of training: parameters, the optimiser's moments and step
    counts, the RNG, the controllers' state. Hyperparameters come from the command line: the
    optimiser keeps the lr (and any other hyperparameter) it was built with, and every flag
    that differs from the saved config is printed, one line each, saved -> now.
    """
    try:
        state = load_checkpoint(path)
        _check_fits(state, path, args, architecture, model, optimizer, rng, same, needs, restore)
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
    saved, now = state["config"], run_config(args)
    for key in (k for k in now if k not in architecture and saved.get(k, now[k]) != now[k]):
        print(f"  --{key.replace('_', '-')}: {saved[key]} (saved) -> {now[key]} (now)")
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
    return f"Last good checkpoint: {checkpoint}" if checkpoint else "No checkpoint: the run stopped before its first epoch ended."


# ------------------------------------------------------------------ process set-up
def reuse_freed_memory():
    """Ask the C allocator to keep freed memory for the next arrays; True if it could (glibc).

    Every op returns a new array, and a training step makes the same large ones again and
    again. glibc hands out blocks above its mmap threshold (at most 32 MB) straight from the
    kernel and gives a freed heap back once more than twice that threshold lies free at its top,
    so each step's big temporaries (the text VAE's (32, 22, 2000) logits are 5.6 MB) arrive as
    fresh pages: about 1,200 page faults and 2 ms of kernel time per step there. Keeping blocks
    up to 32 MB on the heap and trimming it only above 256 MB free removes them (~10% faster, the
    same numbers). A process-wide setting, so only the training scripts call it; on other C
    libraries (macOS, Windows, musl) it does nothing and returns False.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))
