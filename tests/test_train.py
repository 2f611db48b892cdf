"""minivae.train: the helpers the training scripts share, each on its own.

The scripts' own tests (test_train_mnist.py, test_train_text.py) show the same helpers at work in
a whole run: exact resumption, the NaN stop in mid-training, refused flags.
"""
import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from minivae import train
from minivae.checkpoint import load_checkpoint
from minivae.models import MLPVAE
from minivae.optim import Adam


# ------------------------------------------------------------------ flags
def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--hidden", type=int, nargs="+", default=[4])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--word-dropout", type=float, default=0.0)
    train.add_kl_flags(p)
    return p


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1"), (["--hidden", "8", "0"], "--hidden must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"), (["--free-bits", "-0.1"], "--free-bits must be >= 0"),
    (["--word-dropout", "1.5"], r"--word-dropout must be in \[0, 1\]")])
def test_check_flags_names_the_flag_out_of_range(argv, message, capsys):
    p = _parser()
    ranges = dict(at_least_1=("epochs", "hidden"), positive=("lr",), at_least_0=("beta", "free_bits"),
                  in_0_1=("word_dropout",))
    train.check_flags(p, p.parse_args([]), **ranges)  # the defaults pass
    with pytest.raises(SystemExit) as err:
        train.check_flags(p, p.parse_args(argv), **ranges)
    assert err.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_beta_schedule_scales_the_schedule_and_names_a_bad_flag():
    p = _parser()
    beta = train.beta_schedule(p.parse_args(["--beta", "0.5", "--beta-schedule", "linear",
                                             "--beta-params", "x0=10"]), total_steps=100)
    assert beta(0) == 0 and beta(5) == pytest.approx(0.25) and beta(50) == 0.5
    with pytest.raises(SystemExit, match="--beta-params"):
        train.beta_schedule(p.parse_args(["--beta-params", "x0"]), 100)
    with pytest.raises(SystemExit, match="--beta-schedule"):
        train.beta_schedule(p.parse_args(["--beta-schedule", "cyclical", "--beta-params", "ratio=2"]), 100)


def test_run_config_leaves_out_how_the_run_is_watched():
    args = argparse.Namespace(lr=0.1, resume="c.npz", no_progress=True, out="runs/x")
    assert train.run_config(args) == {"lr": 0.1, "out": "runs/x"}


# ------------------------------------------------------------------ output and progress
def test_run_creates_its_folder_with_parents_and_out_problem_refuses_a_file(tmp_path):
    args = argparse.Namespace(out=str(tmp_path / "a" / "b"), resume=None, overwrite=False, no_progress=True)
    assert train.out_problem(args) is None and not (tmp_path / "a").exists()  # checking creates nothing
    run = train.Run(args, [])
    assert (tmp_path / "a" / "b").is_dir() and run.path("m.json") == str(tmp_path / "a" / "b" / "m.json")
    assert train.out_problem(args) is None  # an existing folder without results is fine
    (tmp_path / "file").write_text("")
    assert train.out_problem(argparse.Namespace(**{**vars(args), "out": str(tmp_path / "file")})) == \
        f"--out {tmp_path / 'file'} is a file, not a folder"


class _Terminal:
    def isatty(self):
        return True

    def write(self, text):
        pass

    def flush(self):
        pass


def test_progress_falls_back_to_plain_iteration(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: importing it fails
    bar = train.progress(range(3), 3, "epoch 1")
    assert isinstance(bar, train.PlainProgress) and list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1.00")  # the loop's call does nothing, and does not fail
    assert isinstance(train.progress(range(3), 3, "epoch 1", enabled=False), train.PlainProgress)


def test_progress_uses_tqdm_only_on_a_terminal(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = train.progress(range(3), 3, "epoch 1")
    assert isinstance(bar, tqdm.tqdm) and list(bar) == [0, 1, 2]
    with open(os.devnull, "w") as log:  # stderr sent to a log file: no bar redraws in it
        monkeypatch.setattr(sys, "stderr", log)
        assert isinstance(train.progress(range(3), 3, "epoch 1"), train.PlainProgress)


# ------------------------------------------------------------------ checkpoints and the NaN stop
ARCHITECTURE = ("hidden", "latent")


def _run(seed=0, latent=2):
    """A tiny model, its optimiser after one step, its RNG and its flags."""
    rng = np.random.default_rng(seed)
    model = MLPVAE(6, [5], latent, "relu", "bernoulli", rng=rng)
    optimizer = Adam(model.parameters(), lr=1e-2)
    x = (rng.random((4, 6)) > 0.5).astype(np.float32)
    objective, _ = model.loss(x, rng.standard_normal((4, latent)).astype(np.float32), 1.0)
    objective.backward()
    optimizer.step()
    return model, optimizer, rng, argparse.Namespace(hidden=[5], latent=latent)


class _Controller:
    def __init__(self, value=0.0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_resume_restores_model_optimizer_rng_and_extra_state(tmp_path, capsys):
    model, optimizer, rng, args = _run(seed=0)
    path = tmp_path / "c.npz"
    train.save_state(path, model, optimizer, rng, config=vars(args), step=1, epoch=1, history=[{"epoch": 1}],
                     mdr=_Controller(2.5).state_dict())
    model2, optimizer2, rng2, _ = _run(seed=1)  # different weights, moments and RNG position
    mdr = _Controller()
    state = train.resume(path, args, ARCHITECTURE, model2, optimizer2, rng2, mdr=mdr, soft_free_bits=None)
    assert state["step"] == 1 and state["history"] == [{"epoch": 1}] and mdr.value == 2.5
    assert "resumed from" in capsys.readouterr().out
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert rng.random() == rng2.random()
    saved = load_checkpoint(path)["optimizer"]
    for key, value in optimizer2.state_dict().items():
        np.testing.assert_equal(value, saved[key], err_msg=key)


def test_resume_refuses_another_architecture_other_data_or_missing_state(tmp_path):
    model, optimizer, rng, args = _run()
    path = tmp_path / "c.npz"
    train.save_state(path, model, optimizer, rng, config=vars(args), step=1, epoch=1, history=[{}],
                     vocab={"words": ["a", "b"]}, mdr=None)
    other, other_opt, other_rng, other_args = _run(latent=3)
    with pytest.raises(SystemExit, match=r"^--resume: .* different latent \(2 there, 3 here\)$"):
        train.resume(path, other_args, ARCHITECTURE, other, other_opt, other_rng)
    with pytest.raises(SystemExit, match=r"different vocab \(other data\?\)"):
        train.resume(path, args, ARCHITECTURE, model, optimizer, rng, same={"vocab": {"words": ["a", "c"]}})
    with pytest.raises(SystemExit, match="has no --mdr state to resume"):
        train.resume(path, args, ARCHITECTURE, model, optimizer, rng, mdr=_Controller())
    with pytest.raises(SystemExit, match="--resume: no checkpoint at"):
        train.resume(tmp_path / "missing.npz", args, ARCHITECTURE, model, optimizer, rng)


def test_the_nan_stop_names_step_term_and_checkpoint():
    train.stop_if_not_finite({"rec": 1.0, "kl": 0.5}, 3, "runs/x/checkpoint.npz")  # finite: carries on
    with pytest.raises(SystemExit) as err:
        train.stop_if_not_finite({"rec": 1.0, "kl": float("inf")}, 44, "runs/x/checkpoint.npz")
    message = str(err.value)
    assert message.startswith("step 44: the kl term is inf") and message.endswith(
        "Last good checkpoint: runs/x/checkpoint.npz")


# ------------------------------------------------------------------ memory
PAGE_FAULTS_PER_STEP = """
import resource, sys
import numpy as np
from minivae.train import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
x = np.ones((32, 22, 2000), np.float32)            # the size of the text VAE's logits, 5.6 MB

def step():                                         # four new large arrays, all freed at the end
    a = x * 2
    b = a + 1
    return float((np.exp(-b) * a)[0, 0, 0])

for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _page_faults_per_step(mode):
    """(what reuse_freed_memory returned, minor page faults per step) in a fresh interpreter."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS_PER_STEP, mode], cwd=root, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], float(out[1])


def test_reuse_freed_memory_stops_large_temporaries_from_page_faulting():
    """Counted, not timed: page faults are exact where seconds are noisy."""
    took, with_reuse = _page_faults_per_step("reuse")
    if took != "True":
        pytest.skip("not glibc: reuse_freed_memory is a no-op here")
    _, without = _page_faults_per_step("default")
    assert without > 1000        # each 5.6 MB array came fresh from the kernel, ~1,400 pages
    assert with_reuse < 10       # ... and now from the memory the last step freed
