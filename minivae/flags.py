"""The command-line flags the training scripts share, and their checks.

A script's parse_args adds its own flags, then add_kl_flags and add_run_flags, and ends with
check_flags: every flag, the --resume checkpoint and the --out folder are checked before any
data is read, and a mistake ends the script with one line naming the flag (exit code 2).
"""
import argparse
import math
import os
import tempfile

from . import schedules
from .checkpoint import CheckpointError, check_fields, load_checkpoint, model_kind
from .elbo import FREE_BITS_MODES

NOT_CONFIG = ("resume", "no_progress", "overwrite")  # flags that change how a run is watched, not what it computes
RESULTS = ("checkpoint.npz", "metrics.json")  # a folder holding either holds a run's results
SAVED = {"params": dict, "optimizer": dict, "rng": dict, "config": dict, "step": int, "epoch": int,
         "history": list}  # what every training checkpoint holds (run.save_state), and its type


def finite_float(text):
    """argparse type: a float that is neither NaN nor infinite (float() accepts "nan" and "inf")."""
    problem = f"expected a finite number, got {text!r}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(problem)
    return value


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
    entry of SAVED) and the --out folder (see out_problem) are checked, so that no mistake
    surfaces after the data is read.
    """
    at_least_0 = list(at_least_0)
    if hasattr(args, "seed"):  # add_run_flags' --seed
        at_least_0.insert(0, "seed")
    rules = [(at_least_1, lambda v: v >= 1, ">= 1"),
             (positive, lambda v: v > 0, "> 0"),
             (at_least_0, lambda v: v >= 0, ">= 0"),
             (in_0_1, lambda v: 0 <= v <= 1, "in [0, 1]")]
    for names, ok, rule in rules:
        for name in names:
            value = getattr(args, name)
            values = value if isinstance(value, list) else [value]
            if not all(ok(v) for v in values):
                parser.error(f"--{name.replace('_', '-')} must be {rule} (got {value})")
    problem = beta_params_problem(args)
    if problem is None and hasattr(args, "out"):  # add_run_flags' --resume and --out
        problem = resume_problem(args) or out_problem(args)  # out_problem needs a --resume file that exists
    if problem:
        parser.error(problem)


def warn_ignored(parser, args, unused):
    """Print a WARNING for each flag of `unused` ({name: when it is ignored}) set away from its default.

    A flag this run does not read (--k without --model ksparse, --sfb-rate without
    --soft-free-bits) is said to be ignored, rather than silently having no effect.
    """
    for name, when in unused.items():
        if getattr(args, name) != parser.get_default(name):
            print(f"WARNING: --{name.replace('_', '-')} has no effect {when}; it is ignored")


def beta_params_problem(args):
    """What is wrong with --beta-params (syntax, a non-finite or fractional count, a bad value), or None."""
    schedule = getattr(args, "beta_schedule", "constant")  # a script may have no KL flags
    params = getattr(args, "beta_params", "")
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
    """What is wrong with the --resume checkpoint that can be seen without the model, or None.

    Readable, every entry of SAVED with its type, and written for the same kind of model as this
    run's (the config's "model": another script's checkpoint is refused here, before any data).
    """
    if not getattr(args, "resume", None):
        return None
    try:
        state = load_checkpoint(args.resume)
        check_fields(state, SAVED, args.resume)
    except CheckpointError as err:
        return f"--resume: {err}"
    kind, ours = model_kind(state), getattr(args, "model", None)  # a script sets args.model to its kind
    if ours is not None and kind != ours:
        return (f"--resume: {args.resume} is a checkpoint of model {kind!r}, and this run trains model {ours!r}: "
                "resume a checkpoint written by the same script (and --model)")
    return None


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
    if not held or getattr(args, "overwrite", False):
        return None
    resume = getattr(args, "resume", None)
    if resume and os.path.samefile(os.path.dirname(os.path.abspath(resume)), existing):
        return None  # this run continues the folder's own checkpoint
    ckpt = os.path.join(path, "checkpoint.npz")
    keep = f"continue it with --resume {ckpt}, or " if "checkpoint.npz" in held else ""
    return f"--out {path} holds another run ({', '.join(held)}): {keep}replace it with --overwrite"


def beta_schedule(args, total_steps):
    """beta(t) from --beta-schedule, --beta-params and --beta (scaling the schedule's 0..1 range).

    A bad schedule name or parameter ends the script with the flag at fault named.
    """
    try:
        fn = schedules.from_flags(args.beta_schedule, args.beta_params, total_steps)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return lambda t: args.beta * fn(t)


def beta_step(args, step, done, total_steps):
    """The step at which the training loop reads the β schedule: `step`, except under --time-budget.

    With a time budget the run's length is its minutes, not its --epochs (often a large cap), so
    a schedule spread over the whole run (cyclical ones whose --beta-params set no total_steps)
    is read at the fraction `done` of it (elapsed / budget) and completes when the budget ends.
    Schedules counted in steps (logistic, linear, ...) stay on the step.
    """
    spread = args.beta_schedule in ("cyclical", "cyclical_zero_linear") and "total_steps" not in args.beta_params
    if getattr(args, "time_budget", 0) and spread:
        return min(int(done * total_steps), total_steps - 1)
    return step


def run_config(args):
    """The flags as a dict for metrics.json and the checkpoint, without those in NOT_CONFIG."""
    return {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
