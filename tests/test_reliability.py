"""What a user of the training scripts can rely on when they make mistakes (docs/runs.md).

One test per promise: the command line wins on --resume; stale temporary files are removed and
a kill -9 during a save never leaves a broken checkpoint; a folder holding another run is not
overwritten silently; --out is checked at start-up; Ctrl-C and SIGTERM stop cleanly with a
resume command that works; every flag is validated before data is read; text corpora that are
not "one sentence per line", or held-out text the vocabulary does not know, are reported; an
explicit --data-dir must be complete; a checkpoint is validated as a whole when it is opened;
one run per folder (a lock, taken over when its run is gone); schedules follow --time-budget;
Ctrl-C while the data loads and a file-size limit while saving are clean stops; another script's
checkpoint is refused with the flags; ignored flags, oversized batches and held-out text that is
training text are warned about.
"""
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivae.checkpoint import load_checkpoint, save_checkpoint
from minivae.models import MLPVAE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the scripts import their sibling scripts (e.g. autoencoder_figures)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist, text_vae = _script("train_mnist_vae"), _script("train_text_vae")
# a child runs a script with runpy, which does not put its folder on sys.path as `python scripts/x.py` does
SCRIPT_PATH = os.pathsep.join([str(ROOT), str(ROOT / "scripts")])
TINY = ["--hidden", "16", "--latent", "2", "--batch-size", "500", "--no-progress", "--no-download", "--no-plots"]
TEXT = ["--toy-sentences", "200", "--max-vocab", "100", "--embedding", "8", "--hidden", "8", "--latent", "2",
        "--batch-size", "32", "--no-progress", "--no-plots", "--n-samples", "2", "--max-gen-len", "5"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "empty-cache"))


def _error_line(capsys, flag):
    """The one 'error:' line argparse printed (usage lines aside), which must name `flag`."""
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and flag in lines[0], lines
    return lines[0].split("error: ", 1)[1]


def _refused(main, argv, capsys, flag):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    return _error_line(capsys, flag)


# ------------------------------------------------------------------ 1. the command line wins on --resume
def test_resume_takes_lr_and_other_flags_from_the_command_line_and_says_what_changed(tmp_path, capsys):
    run = tmp_path / "run"
    mnist.main(TINY + ["--epochs", "1", "--out", str(run)])
    capsys.readouterr()
    mnist.main(TINY + ["--epochs", "2", "--lr", "0.0005", "--clip", "3", "--out", str(run),
                       "--resume", str(run / "checkpoint.npz")])
    printed = capsys.readouterr().out
    for line in ("  --epochs: 1 (saved) -> 2 (now)", "  --lr: 0.001 (saved) -> 0.0005 (now)",
                 "  --clip: 0.0 (saved) -> 3.0 (now)"):
        assert line in printed.splitlines(), printed
    state = load_checkpoint(run / "checkpoint.npz")
    assert state["optimizer"]["lr"] == 0.0005 and state["config"]["lr"] == 0.0005
    assert state["optimizer"]["steps"].max() == 32  # the step counts went on from the checkpoint's 16
    assert json.loads((run / "metrics.json").read_text())["config"]["lr"] == 0.0005


def test_text_resume_takes_lr_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    text_vae.main(TEXT + ["--epochs", "1", "--mdr", "2", "--out", str(run)])
    text_vae.main(TEXT + ["--epochs", "2", "--mdr", "2", "--mdr-lr", "0.05", "--lr", "0.002", "--out", str(run),
                          "--resume", str(run / "checkpoint.npz")])
    printed = capsys.readouterr().out.splitlines()
    assert "  --lr: 0.001 (saved) -> 0.002 (now)" in printed and "  --mdr-lr: 0.01 (saved) -> 0.05 (now)" in printed
    assert load_checkpoint(run / "checkpoint.npz")["optimizer"]["lr"] == 0.002


# ------------------------------------------------------------------ 2. stale temporary files
def test_stale_temporary_files_of_ours_are_removed_at_start_and_nothing_else(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ours = [".checkpoint.npz.k3x_9a0q.tmp", ".metrics.json.abcdefgh.tmp"]
    theirs = [".train.log.abcdefgh.tmp", "notes.tmp", ".checkpoint.npz.tmp", ".checkpoint.npz.ABCDEFGH.tmp"]
    for name in ours + theirs:
        (run / name).write_bytes(b"partial")
    mnist.main(TINY + ["--epochs", "1", "--out", str(run)])
    assert "removed 2 temporary file(s) left by an interrupted save" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == sorted(theirs)


CHILD = """
import os, runpy, signal, sys, time
import numpy as np
# A shell that starts a job in the background makes it ignore SIGINT, and Python then installs no
# KeyboardInterrupt handler; restore it, as an interactive terminal would have it.
signal.signal(signal.SIGINT, signal.default_int_handler)
import minivae.fileio
from minivae.fast import FusedAdam
mode, at, script, *argv = sys.argv[1:]
at, calls = int(at), {"n": 0}

def pause():
    print("PAUSED", flush=True)
    time.sleep(60)

def hook(real, is_ours):
    def wrapped(*args, **kwargs):
        calls["n"] += is_ours(args)
        if mode == "before" and calls["n"] == at and is_ours(args):
            pause()
        result = real(*args, **kwargs)
        if mode in ("step", "written", "replaced") and calls["n"] == at and is_ours(args):
            pause()
        return result
    return wrapped

if mode == "step":
    FusedAdam.step = hook(FusedAdam.step, lambda args: True)
elif mode in ("before", "written"):
    np.savez = hook(np.savez, lambda args: True)
else:
    minivae.fileio.os.replace = hook(os.replace, lambda args: str(args[1]).endswith("checkpoint.npz"))
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def _start_paused(mode, at, argv, tmp_path):
    """The MNIST script in a child process, paused inside step or save number `at` (see CHILD)."""
    env = {**os.environ, "PYTHONPATH": SCRIPT_PATH, "MINIVAE_DATA": str(tmp_path / "empty-cache"),
           "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(at), "scripts/train_mnist_vae.py", *argv],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.strip() == "PAUSED":
            return child, env
    child.wait()
    raise AssertionError(f"the child never paused: {child.stderr.read()}")


@pytest.mark.parametrize("stage, save", [("before", 1), ("written", 1), ("before", 2), ("written", 2),
                                         ("replaced", 2)])
def test_kill_9_during_a_save_leaves_a_loadable_checkpoint_or_none_and_the_next_start_cleans_up(
        stage, save, tmp_path, capsys):
    run = tmp_path / "run"
    child, _ = _start_paused(stage, save, TINY + ["--epochs", "2", "--out", str(run)], tmp_path)
    child.kill()  # SIGKILL: no handler, no finally block runs
    child.wait(timeout=30)
    child.stdout.close()
    child.stderr.close()
    expected = {("before", 1): None, ("written", 1): None, ("replaced", 2): 2}.get((stage, save), 1)
    if expected is None:
        assert not (run / "checkpoint.npz").exists()
    else:
        assert load_checkpoint(run / "checkpoint.npz")["epoch"] == expected
    temp_files = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(temp_files) == (stage != "replaced") and all(n.startswith(".checkpoint.npz.") for n in temp_files)
    resume = ["--resume", str(run / "checkpoint.npz")] if expected else []
    mnist.main(TINY + ["--epochs", "2", "--out", str(run)] + resume)  # the next start in that folder
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 2


# ------------------------------------------------------------------ 3. another run's results are kept
def test_a_folder_holding_another_run_is_not_overwritten_without_being_asked(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    mnist.main(TINY + ["--epochs", "1", "--out", str(run)])
    before = (run / "checkpoint.npz").read_bytes()
    message = _refused(mnist.main, TINY + ["--epochs", "1", "--out", str(run)], capsys, "--out")
    assert message == (f"--out {run} holds another run (checkpoint.npz, metrics.json): continue it with "
                       f"--resume {run / 'checkpoint.npz'}, or replace it with --overwrite")
    assert (run / "checkpoint.npz").read_bytes() == before
    other = tmp_path / "other"  # resuming ANOTHER folder's checkpoint into this one is no permission either
    other.mkdir()
    (other / "checkpoint.npz").write_bytes(before)
    _refused(mnist.main, TINY + ["--epochs", "2", "--out", str(run), "--resume", str(other / "checkpoint.npz")],
             capsys, "--out")
    # --overwrite replaces it; a NaN at step 0 then names no checkpoint: the one there is not this run's
    real_loss = MLPVAE.loss
    monkeypatch.setattr(MLPVAE, "loss", lambda *a, **k: (real_loss(*a, **k)[0], {"kl": float("nan")}))
    with pytest.raises(SystemExit) as err:
        mnist.main(TINY + ["--epochs", "1", "--out", str(run), "--overwrite"])
    assert str(err.value).endswith(" No checkpoint: the run stopped before its first epoch ended.")
    assert str(err.value).startswith("step 0: the kl term is nan") and str(run) not in str(err.value)


# ------------------------------------------------------------------ 4. --out is checked at start-up
@pytest.mark.parametrize("where, expected", [("file", "is a file, not a folder"),
                                             ("file/sub", "is a file, not a folder"),
                                             ("/proc/minivae-run", "cannot write in /proc")])
def test_an_unusable_out_folder_is_one_line_at_start_up(where, expected, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(mnist, "load_data", lambda *a: pytest.fail("data was read"))
    out = where if where.startswith("/") else str(tmp_path / where)
    assert expected in _refused(mnist.main, TINY + ["--out", out], capsys, "--out")


# ------------------------------------------------------------------ 5. Ctrl-C and SIGTERM
@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupt_stops_cleanly_keeps_the_checkpoint_and_prints_a_resume_command_that_works(
        sig, code, name, tmp_path):
    run = tmp_path / "run"
    argv = TINY + ["--epochs", "2", "--out", str(run)]
    child, env = _start_paused("step", 20, argv, tmp_path)  # step 20 of 32: in epoch 2 (16 steps each)
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    lines = err.strip().splitlines()
    assert lines[-3] == f"stopped by {name} in epoch 2 at step 19."
    assert lines[-2] == (f"Kept the last complete checkpoint {run / 'checkpoint.npz'} (end of epoch 1, step 16); "
                         "steps after it are not saved. Resume with:")
    command = shlex.split(lines[-1])
    assert command[1:] == ["scripts/train_mnist_vae.py", *argv, "--resume", str(run / "checkpoint.npz")]
    assert "Traceback" not in err and load_checkpoint(run / "checkpoint.npz")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 2 and (run / "metrics.json").exists()


# ------------------------------------------------------------------ 6. every flag validated up front
MNIST_BAD = [
    ("--dataset", "cifar"), ("--epochs", "0"), ("--epochs", "2.5"), ("--batch-size", "0"), ("--lr", "nan"),
    ("--lr", "inf"), ("--lr", "0"), ("--lr", "-1"), ("--clip", "nan"), ("--clip", "-1"), ("--latent", "0"),
    ("--hidden", "0"), ("--activation", "gelu"), ("--likelihood", "poisson"), ("--binarize", "yes"),
    ("--beta", "nan"), ("--beta", "-1"), ("--beta-schedule", "sawtooth"), ("--beta-params", "x0"),
    ("--free-bits", "nan"), ("--free-bits", "-0.1"), ("--free-bits-mode", "per_unit"), ("--iw-samples", "-1"),
    ("--iw-examples", "-1"), ("--seed", "-1"), ("--dtype", "float16")]
TEXT_BAD = [
    ("--toy-sentences", "0"), ("--data-seed", "-1"), ("--max-vocab", "3"), ("--max-len", "-1"), ("--embedding", "0"),
    ("--hidden", "0"), ("--latent", "0"), ("--embedding-dropout", "1"), ("--embedding-dropout", "nan"),
    ("--epochs", "0"), ("--batch-size", "0"), ("--lr", "nan"), ("--clip", "inf"), ("--bucket", "-1"),
    ("--beta", "inf"), ("--free-bits", "nan"), ("--ha-bits", "nan"), ("--soft-free-bits", "-1"),
    ("--sfb-rate", "-0.01"), ("--sfb-rate", "0"), ("--mdr", "-1"), ("--mdr-lr", "-0.01"), ("--bn-vae", "nan"),
    ("--bn-vae-tau", "1"), ("--word-dropout", "1.5"), ("--contiguous-dropout", "nan"), ("--span-lambda", "-1"),
    ("--bow", "-1"), ("--bow-hidden", "0"), ("--eval-batch-size", "0"), ("--n-samples", "0"),
    ("--max-gen-len", "0"), ("--seed", "-1"), ("--dtype", "half"), ("--free-bits-mode", "x")]
SCHEDULE_BAD = [("n_cycles=2.5", "must be a whole number"), ("ratio=nan", "must be a finite number"),
                ("ratio=2", "ratio must be"), ("n_cycles=inf", "must be a finite number"), ("speed=3", "unknown")]


@pytest.mark.parametrize("script, flag, value", [("mnist", *bad) for bad in MNIST_BAD]
                         + [("text", *bad) for bad in TEXT_BAD])
def test_every_invalid_flag_value_is_one_line_exit_2_and_creates_no_folder(script, flag, value, tmp_path, capsys):
    main = mnist.main if script == "mnist" else text_vae.main
    message = _refused(main, [flag, value, "--out", str(tmp_path / "run")], capsys, flag)
    assert value in message or flag in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["mnist", "text"])
@pytest.mark.parametrize("params, expected", SCHEDULE_BAD)
def test_bad_beta_params_are_refused_before_data_is_read(script, params, expected, tmp_path, capsys):
    main = mnist.main if script == "mnist" else text_vae.main
    message = _refused(main, ["--beta-schedule", "cyclical", "--beta-params", params, "--out", str(tmp_path / "r")],
                       capsys, "--beta-")
    assert expected in message and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 7. text corpora
def test_held_out_text_the_vocabulary_does_not_know_gets_a_warning(tmp_path, capsys):
    train_lines = [" ".join(f"w{(i * 7 + k) % 23}" for k in range(3 + i % 5)) for i in range(120)]
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(" ".join(f"v{i + k}" for k in range(4)) for i in range(20)) + "\n")
    text_vae.main(["--corpus", str(tmp_path / "train.txt"), "--valid-corpus", str(tmp_path / "valid.txt"),
                   "--epochs", "1", "--out", str(tmp_path / "out")] + TEXT[4:])
    printed = capsys.readouterr().out.splitlines()
    assert any(line.endswith("unknown words train 0.0%, valid 100.0%, test 0.0%") for line in printed), printed
    assert ("WARNING: 100.0% of the valid words are <unk>, 100.0% more than in train: is it the same kind of "
            "text? Its perplexity will look too good") in printed
    assert not any(line.startswith("WARNING") and "test" in line for line in printed)


@pytest.mark.parametrize("content, expected", [
    (b"one sentence\rtwo sentences\rthree\r", "line 1 holds a carriage return that ends no CR LF pair"),
    (b"fine\n" + b"word " * 20000 + b"\n", "line 2 is longer than 65,536 bytes"),
    (b"fine\n" + b"w " * 1500 + b"\n", "line 2 has 1,500 tokens, more than any sentence (1,000)"),
    (b"a b\n\x00\x01\x02binary\n", "line 2 holds a NUL byte (binary data, or UTF-16)"),
    ("a sentence\n".encode("utf-16"), "line 1 holds a NUL byte")])
def test_files_that_are_not_one_sentence_per_line_are_refused_clearly(content, expected, tmp_path):
    (tmp_path / "corpus.txt").write_bytes(content)
    with pytest.raises(SystemExit) as err:
        text_vae.main(["--corpus", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_crlf_files_still_read():
    from minivae.text import read_corpus
    path = ROOT / "tests" / "_crlf.txt"
    try:
        path.write_bytes(b"a b c\r\nd e\r\n")
        assert read_corpus(path)[0] == [["a", "b", "c"], ["d", "e"]]
    finally:
        path.unlink()


# ------------------------------------------------------------------ 8. --data-dir
def test_an_explicit_data_dir_must_be_complete_and_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mnist, "load_data", lambda *a: pytest.fail("data was read"))
    partial = tmp_path / "mnist"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte"):
        (partial / name).write_bytes(b"")
    message = _refused(mnist.main, TINY + ["--data-dir", str(partial), "--out", str(tmp_path / "r")], capsys,
                       "--data-dir")
    assert f"{str(partial)!r} lacks t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    (tmp_path / "afile").write_text("")
    message = _refused(mnist.main, TINY + ["--data-dir", str(tmp_path / "afile"), "--out", str(tmp_path / "r")],
                       capsys, "--data-dir")
    assert "is a file, not a folder" in message and not (tmp_path / "r").exists()


def test_the_library_falls_back_to_bundled_data_only_when_no_data_dir_was_given(tmp_path):
    from minivae import data
    (tmp_path / "mnist").mkdir()
    with pytest.raises(data.DataUnavailable, match="not found"):
        data.load_train_test("mnist", data_dir=tmp_path / "mnist", download=False)


# ------------------------------------------------------------------ 9. checkpoints validated when opened
def _tamper(path, change):
    state = load_checkpoint(path)
    change(state)
    save_checkpoint(path, **state)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("good")
    os.environ.setdefault("MINIVAE_DATA", str(run / "empty-cache"))
    mnist.main(TINY + ["--epochs", "1", "--out", str(run / "run")])
    return (run / "run" / "checkpoint.npz").read_bytes()


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


EARLY = [  # found when the flags are checked (exit code 2), before any data is read
    (lambda s: s.pop("history"), "has no 'history' entry"),
    (_set("history", {"a": 1}), "entry 'history' is a dict"),
    (_set("step", "16"), "entry 'step' is a str"),
    (_set("epoch", True), "entry 'epoch' is a bool"),
    (_set("optimizer", [1, 2]), "entry 'optimizer' is a list")]
LATE = [  # found when the model exists, still before any step
    (lambda s: s["params"].popitem(), "lacks"),
    (lambda s: s["params"].update({k: v[:1] for k, v in s["params"].items()}), "this model's is float32"),
    (lambda s: s["params"].update({k: v.astype(np.float64) for k, v in s["params"].items()}), "is float64"),
    (lambda s: s["optimizer"].update({"m.0": np.zeros(3)}), "optimiser, RNG or controller state does not fit"),
    (lambda s: s["optimizer"].pop("steps"), "optimiser, RNG or controller state does not fit"),
    (lambda s: s["rng"].update({"bit_generator": "MT19937"}), "RNG state is for 'MT19937'"),
    (lambda s: s["rng"].pop("state"), "optimiser, RNG or controller state does not fit"),
    (_set("history", []), "inconsistent: epoch 1, step 16, 0 epochs of history"),
    (lambda s: s["config"].pop("latent"), "was not written by this script (its config has no latent)")]


@pytest.mark.parametrize("change, expected", EARLY + LATE)
def test_a_damaged_checkpoint_is_refused_with_what_is_wrong(change, expected, good_checkpoint, tmp_path, capsys):
    path = tmp_path / "c.npz"
    path.write_bytes(good_checkpoint)
    _tamper(path, change)
    with pytest.raises(SystemExit) as err:
        mnist.main(TINY + ["--epochs", "2", "--out", str(tmp_path / "run"), "--resume", str(path)])
    message = str(err.value) if err.value.code != 2 else _error_line(capsys, "--resume")
    assert expected in message and message.startswith("--resume: ") and "pickle" not in message
    assert (err.value.code == 2) == any(expected == e for _, e in EARLY)
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_checkpoint_holding_python_objects_is_refused_saying_so(tmp_path, capsys):
    path = tmp_path / "c.npz"
    np.savez(path, __meta__=np.array([{"format": "minivae-checkpoint-1"}], dtype=object))
    message = _refused(mnist.main, TINY + ["--out", str(tmp_path / "run"), "--resume", str(path)], capsys, "--resume")
    assert message == (f"--resume: {path} is not a minivae checkpoint: it holds pickled Python objects, which "
                       "minivae never loads (unpickling can run code)")


# ------------------------------------------------------------------ 10. one run per folder
HOLD = """
import importlib, runpy, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive terminal has it (see CHILD)
target, script, *argv = sys.argv[1:]
module_name, name = target.split(":")
module, calls = importlib.import_module(module_name), []
real = getattr(module, name)

def held(*args, **kwargs):
    print("PAUSED", flush=True)
    time.sleep(60)
    return real(*args, **kwargs)

setattr(module, name, held)
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def _child(code, args, tmp_path, wait_for="PAUSED"):
    """A script in a child process (code: HOLD or FSIZE), returned once it printed `wait_for` (None: at once)."""
    env = {**os.environ, "PYTHONPATH": SCRIPT_PATH, "MINIVAE_DATA": str(tmp_path / "empty-cache"),
           "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait_for is None:
        return child
    for line in child.stdout:
        if line.strip() == wait_for:
            return child
    child.wait()
    raise AssertionError(f"the child never printed {wait_for}: {child.stderr.read()}")


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_first(tmp_path):
    import socket
    run = tmp_path / "run"
    first = _child(HOLD, ["minivae.data:_bundled_fallback", "scripts/train_mnist_vae.py", *TINY, "--out", run], tmp_path)
    second = _child(HOLD, ["minivae.data:_bundled_fallback", "scripts/train_mnist_vae.py", *TINY, "--out", run],
                    tmp_path, wait_for=None)  # a real second process; it never gets as far as the data
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1 and "PAUSED" not in out
    assert err.strip().splitlines() == [
        f"--out {run} is in use by another run (PID {first.pid} on {socket.gethostname()}): wait for it to end, "
        f"or choose another --out. If no such run exists, delete {run / 'run.lock'}"]
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 143 and not run.exists()  # the lock went with the run, and the empty folder too


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys):
    import socket
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID names no process now
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    mnist.main(TINY + ["--epochs", "1", "--out", str(run)])
    assert (f"note: took over the lock {run / 'run.lock'} of a run that ended without removing it (PID {gone.pid} "
            f"on {socket.gethostname()} no longer runs)") in capsys.readouterr().out
    assert not (run / "run.lock").exists() and (run / "checkpoint.npz").exists()


# ------------------------------------------------------------------ 11. schedules follow --time-budget
def test_a_cyclical_beta_schedule_and_the_lr_follow_the_time_budget_not_the_epoch_cap(tmp_path):
    history = mnist.main(TINY + ["--epochs", "100000", "--time-budget", "0.03", "--beta-schedule", "cyclical",
                                 "--beta-params", "n_cycles=1,ratio=0.5", "--lr-schedule", "cosine",
                                 "--out", str(tmp_path / "run")])
    assert history[-1]["beta"] == 1.0  # the second half of its one cycle: beta 1, reached within the budget
    assert history[-1]["lr"] < 0.5e-3  # cosine decay over the budget, most of the way to 0


def test_a_budget_that_ends_inside_an_epoch_says_so_and_so_does_the_resume(tmp_path, capsys):
    run = tmp_path / "run"
    history = mnist.main(TINY + ["--epochs", "2", "--time-budget", "0.00001", "--out", str(run)])
    note = ("epoch 1 ended early, after 1 of its 16 batches (time budget); it counts as finished, and --resume "
            "continues with epoch 2, skipping the rest of epoch 1")
    assert history[-1]["batches"] == 1 and note in capsys.readouterr().out.splitlines()
    mnist.main(TINY + ["--epochs", "2", "--out", str(run), "--resume", str(run / "checkpoint.npz")])
    assert f"note: in the checkpoint, {note}" in capsys.readouterr().out.splitlines()


# ------------------------------------------------------------------ 12. Ctrl-C while the data loads
@pytest.mark.parametrize("script, target, argv", [
    ("train_mnist_vae", "minivae.data:_bundled_fallback", TINY),  # the bundled MNIST, read when offline
    ("train_text_vae", "minivae.text:toy_corpus", TEXT)])  # the toy corpus being generated
def test_ctrl_c_while_the_data_loads_is_a_clean_stop_that_leaves_no_folder(script, target, argv, tmp_path):
    out = tmp_path / "new" / "run"
    child = _child(HOLD, [target, f"scripts/{script}.py", *argv, "--out", out], tmp_path)
    assert (out / "run.lock").exists()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert child.returncode == 130 and "Traceback" not in err, err
    assert lines[-3:-1] == ["stopped by Ctrl-C (SIGINT) before training began (reading the data or building the model).",
                            "There is no checkpoint: no epoch had been saved. Start again with:"]
    assert shlex.split(lines[-1])[1:] == [f"scripts/{script}.py", *argv, "--out", str(out)]
    assert not (tmp_path / "new").exists()  # the folders this run made, and nothing else, are gone


def test_a_failed_start_removes_the_folder_it_made(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a sentence\nanother\x00 one\n")
    with pytest.raises(SystemExit, match="NUL"):
        text_vae.main(TEXT[2:] + ["--corpus", str(corpus), "--out", str(tmp_path / "new" / "run")])
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ 13. a full disk while saving
FSIZE = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # CPython ignores it already; said here to be sure
from minivae.run import Run
real = Run.save

def save(self, *args, **kwargs):
    real(self, *args, **kwargs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # from the first checkpoint on: files of <= 4 kB

Run.save = save
script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


def test_a_file_size_limit_while_saving_is_one_stop_message_that_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    argv = TINY + ["--epochs", "2", "--out", str(run)]
    child = _child(FSIZE, ["scripts/train_mnist_vae.py", *argv], tmp_path, wait_for=None)
    _, err = child.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert child.returncode == 1 and "Traceback" not in err, err
    assert lines[-3] == (f"could not write {run / 'checkpoint.npz'}: File too large (errno EFBIG: the disk is full, "
                         "or a file-size limit such as ulimit -f is reached). Training stopped.")
    assert lines[-2] == (f"Kept the last complete checkpoint {run / 'checkpoint.npz'} (end of epoch 1, step 16); "
                         "steps after it are not saved. Resume with:")
    assert shlex.split(lines[-1])[1:] == ["scripts/train_mnist_vae.py", *argv, "--resume", str(run / "checkpoint.npz")]
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz"]  # no temporary file, no lock


# ------------------------------------------------------------------ 14. another script's checkpoint
AE = ["--model", "ae", "--hidden", "16", "--latent", "2", "--batch-size", "500", "--limit", "500", "--no-progress",
      "--no-download", "--no-plots"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, good_checkpoint):
    folder = tmp_path_factory.mktemp("kinds")
    (folder / "mnist.npz").write_bytes(good_checkpoint)
    text_vae.main(TEXT + ["--epochs", "1", "--out", str(folder / "text")])
    _script("train_autoencoder").main(AE + ["--epochs", "1", "--out", str(folder / "ae")])
    return {"mnist": folder / "mnist.npz", "text": folder / "text" / "checkpoint.npz",
            "autoencoder": folder / "ae" / "checkpoint.npz"}


KINDS = {"mnist": "mlp_vae", "text": "sentence_vae", "autoencoder": "ae"}
ARGV = {"mnist": TINY, "text": TEXT, "autoencoder": AE}


@pytest.mark.parametrize("source, target", [(s, t) for s in KINDS for t in KINDS if s != t]
                         + [("autoencoder", "autoencoder")])
def test_another_scripts_checkpoint_is_refused_with_the_flags_before_any_data(source, target, checkpoints, tmp_path,
                                                                             capsys, monkeypatch):
    module = {"mnist": mnist, "text": text_vae}.get(target) or _script("train_autoencoder")
    monkeypatch.setattr(module, "load_data", lambda *a: pytest.fail("data was read"))
    argv = ARGV[target] + ["--out", str(tmp_path / "run"), "--resume", str(checkpoints[source])]
    ours = KINDS[target]
    if source == target:  # the same script, another --model
        argv, ours = argv + ["--model", "dae"], "dae"
    message = _refused(module.main, argv, capsys, "--resume")
    assert message == (f"--resume: {checkpoints[source]} is a checkpoint of model {KINDS[source]!r}, and this run "
                       f"trains model {ours!r}: resume a checkpoint written by the same script (and --model)")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 15. every script's flags, the same checks
def test_autoencoder_sizes_of_zero_are_refused_not_replaced_by_a_default(tmp_path, capsys):
    train_autoencoder = _script("train_autoencoder")
    for flag in ("--latent", "--batch-size", "--n-codes"):
        assert _refused(train_autoencoder.main, AE + [flag, "0", "--out", str(tmp_path)], capsys, flag) == \
            f"{flag} must be >= 1 (got 0)"
    assert "expected a finite number, got 'inf'" in _refused(
        train_autoencoder.main, AE + ["--lr", "inf", "--out", str(tmp_path)], capsys, "--lr")


@pytest.mark.parametrize("script, argv, warning", [
    ("train_autoencoder", AE + ["--k", "5"], "WARNING: --k has no effect with --model ae; it is ignored"),
    ("train_autoencoder", AE + ["--beta", "2"], "WARNING: --beta has no effect with --model ae; it is ignored"),
    ("train_text_vae", TEXT + ["--sfb-rate", "0.1"], "WARNING: --sfb-rate has no effect without --soft-free-bits; "
                                                     "it is ignored"),
    ("train_mnist_vae", TINY + ["--iw-examples", "10"], "WARNING: --iw-examples has no effect without --iw-samples; "
                                                        "it is ignored")])
def test_a_flag_the_run_ignores_is_warned_about(script, argv, warning, capsys):
    _script(script).parse_args(argv)
    assert warning in capsys.readouterr().out.splitlines()


def test_a_batch_larger_than_the_data_set_is_warned_about(tmp_path, capsys):
    mnist.main(TINY[:4] + ["--batch-size", "9000"] + TINY[6:] + ["--epochs", "1", "--out", str(tmp_path / "run")])
    assert ("WARNING: --batch-size 9000 is larger than the 8000 training images: each epoch is one batch of all "
            "8000, one step per epoch") in capsys.readouterr().out.splitlines()


# ------------------------------------------------------------------ 16. held-out text that is training text
def test_a_validation_file_that_is_the_training_file_is_warned_about(tmp_path, capsys):
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(f"the cat number {i} sat on mat {i % 7}\n" for i in range(200)))
    text_vae.main(TEXT[2:] + ["--corpus", str(corpus), "--valid-corpus", str(corpus), "--epochs", "1",
                              "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert ("WARNING: 190 of the 200 valid sentences (95%) are also in the training split: valid scores mostly "
            "sentences the model trains on") in out.splitlines()
    assert "test sentences (" not in out  # the test split, carved from the file, is not the training split


def test_the_default_toy_corpus_gets_no_overlap_warning():
    from minivae import text
    assert "also in the training split" not in text.describe(text.load_toy_data(2000, seed=0))


# ------------------------------------------------------------------ 17. data and checkpoint messages
def test_a_bad_file_in_the_cache_may_be_deleted_one_in_a_data_dir_must_be_replaced(tmp_path, monkeypatch):
    from minivae import data
    cache = tmp_path / "empty-cache" / "mnist"
    cache.mkdir(parents=True)
    for folder in (cache, tmp_path):
        (folder / "bad.gz").write_bytes(b"\x1f\x8bnot gzip")
        with pytest.raises(data.DataError) as err:
            data.read_idx(folder / "bad.gz")
        delete = "delete it (minivae downloads a fresh copy) or replace it with a good copy." in str(err.value)
        assert delete == (folder == cache) and str(err.value).endswith("replace it with a good copy.")


def test_an_mnist_checkpoint_older_than_x_logvar_and_conditional_resumes(good_checkpoint, tmp_path, capsys):
    path = tmp_path / "old.npz"
    path.write_bytes(good_checkpoint)
    _tamper(path, lambda s: [s["config"].pop(k) for k in ("x_logvar", "conditional", "model")])
    history = mnist.main(TINY + ["--epochs", "2", "--out", str(tmp_path / "run"), "--resume", str(path)])
    assert len(history) == 2
    assert ("  its config is older than the flags --x-logvar, --conditional; taken as the runs of that time had them: "
            "x_logvar=learned-scalar, conditional=False") in capsys.readouterr().out.splitlines()
