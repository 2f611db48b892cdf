"""What a user of the training scripts can rely on when they make mistakes (docs/runs.md).

One test per promise: the command line wins on --resume; stale temporary files are removed and
a kill -9 during a save never leaves a broken checkpoint; a folder holding another run is not
overwritten silently; --out is checked at start-up; Ctrl-C and SIGTERM stop cleanly with a
resume command that works; every flag is validated before data is read; text corpora that are
not "one sentence per line", or held-out text the vocabulary does not know, are reported; an
explicit --data-dir must be complete; a checkpoint is validated as a whole when it is opened.
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


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist, text_vae = _script("train_mnist_vae"), _script("train_text_vae")
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIVAE_DATA": str(tmp_path / "empty-cache"),
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


def test_a_checkpoint_holding_python_objects_is_refused_without_mentioning_pickle(tmp_path, capsys):
    path = tmp_path / "c.npz"
    np.savez(path, __meta__=np.array([{"format": "minivae-checkpoint-1"}], dtype=object))
    message = _refused(mnist.main, TINY + ["--out", str(tmp_path / "run"), "--resume", str(path)], capsys, "--resume")
    assert "is not a readable minivae checkpoint" in message and "pickle" not in message
