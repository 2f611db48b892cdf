"""What the two training scripts share; their training loops stay in scripts/, visible top to bottom.

A script's main() reads, in order: parse the flags (add_kl_flags, add_run_flags, check_flags),
prepare the output folder (output_folder), build the model, continue a checkpoint (resume), then
loop over epochs: batches in a progress bar (progress), the NaN stop (stop_if_not_finite) before
each update, and a checkpoint (save_state) after each epoch.
"""
import ctypes
import ctypes.util
import os
import sys

from . import schedules
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .elbo import FREE_BITS_MODES, NonFiniteLossError, check_finite

NOT_CONFIG = ("resume", "no_progress")  # flags that change how a run is watched, not what it computes


# ------------------------------------------------------------------ flags
def add_kl_flags(parser):
    """The KL term's weight and floor: --beta, --beta-schedule, --beta-params, --free-bits, --free-bits-mode."""
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight (the schedule's final value)")
    parser.add_argument("--beta-schedule", choices=sorted(schedules.SCHEDULES), default="constant",
                        help="KL annealing as a function of the global step")
    parser.add_argument("--beta-params", default="", help="schedule parameters as k=v,k=v (steps count "
                        "minibatches; total_steps defaults to the whole run). Schedules: "
                        + schedules._usage().replace("%", "%%"))
    parser.add_argument("--free-bits", type=float, default=0.0,
                        help="free bits lambda, nats per dimension")
    parser.add_argument("--free-bits-mode", choices=FREE_BITS_MODES, default="batch_dim")


def add_run_flags(parser, out):
    """--seed, --dtype, --out (default `out`), --resume, --no-progress, --no-plots on a parser or group."""
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--resume", help="checkpoint to continue from (same architecture and data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def check_flags(parser, args, at_least_1=(), positive=(), at_least_0=(), in_0_1=()):
    """End the script through parser.error, naming the flag, if a value is out of its range.

    Each argument lists attribute names ("batch_size" is checked and reported as --batch-size);
    a list-valued flag (--hidden 400 200) is checked element by element.
    """
    tests = [(at_least_1, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0, "> 0"),
             (at_least_0, lambda v: v >= 0, ">= 0"), (in_0_1, lambda v: 0 <= v <= 1, "in [0, 1]")]
    for names, ok, rule in tests:
        for name in names:
            value = getattr(args, name)
            if not all(ok(v) for v in (value if isinstance(value, list) else [value])):
                parser.error(f"--{name.replace('_', '-')} must be {rule} (got {value})")


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


# ------------------------------------------------------------------ output and progress
def output_folder(path):
    """Create the folder `path` (with its parents) and return out(name) -> path/name.

    A file already at `path` ends the script with a clear message instead of a traceback.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"--out: {path} is a file, not a folder")
    os.makedirs(path, exist_ok=True)
    return lambda name: os.path.join(path, name)


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
    if not enabled or not sys.stderr.isatty():
        return PlainProgress(iterable)
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainProgress(iterable)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


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


def resume(path, args, architecture, model, optimizer, rng, same=None, **restore):
    """Load the checkpoint at `path` into model, optimizer and rng; return its whole state dict.

    The run continues exactly where the checkpoint left off, so the checkpoint must come from
    the same model: every flag named in `architecture` must equal the saved one, and every
    entry of `same` (e.g. {"vocab": vocab.to_dict()}) the saved entry. `restore` maps checkpoint
    keys to objects with load_state_dict (None: not used in this run), e.g. mdr=MDR(...); a key
    the checkpoint lacks is an error. Any problem ends the script with "--resume: <reason>".
    """
    try:
        state = load_checkpoint(path)
        saved, given = state["config"], vars(args)
        changed = [k for k in architecture if saved.get(k) != given.get(k)]
        if changed:
            raise CheckpointError(f"{path} was trained with a different " + ", ".join(
                f"{k} ({saved.get(k)} there, {given.get(k)} here)" for k in changed))
        for key, value in (same or {}).items():
            if state.get(key) != value:
                raise CheckpointError(f"{path} was trained with a different {key} (other data?)")
        model.load_state_dict(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        for key, obj in restore.items():
            if obj is not None:
                if state.get(key) is None:
                    raise CheckpointError(f"{path} has no --{key.replace('_', '-')} state to resume")
                obj.load_state_dict(state[key])
    except (CheckpointError, KeyError, ValueError) as err:
        raise SystemExit(f"--resume: {err}") from None
    print(f"resumed from {path} after epoch {state['epoch']} (step {state['step']})")
    return state


def stop_if_not_finite(stats, step, checkpoint):
    """End the run if a loss term is NaN or infinite, naming the step, the term and the last good checkpoint.

    Called before the update, so the parameters (and the checkpoint of the last finished epoch)
    never see the bad step.
    """
    try:
        check_finite(stats, step)
    except NonFiniteLossError as err:
        raise SystemExit(f"{err} Last good checkpoint: {checkpoint}") from None


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
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))
