"""minivae.run: one training run's folder, progress bar, checkpoints and stops, each on its own.

The scripts' own tests (test_train_mnist.py, test_train_text.py, test_reliability.py) show the
same helpers at work in a whole run: exact resumption, the NaN stop in mid-training, Ctrl-C and
SIGTERM.
"""
import argparse
import os
import sys

import numpy as np
import pytest

from minivae.checkpoint import load_checkpoint
from minivae.flags import out_problem
from minivae.models import MLPVAE
from minivae.optim import Adam
from minivae.run import PlainProgress, Run, progress, resume, save_state, stop_if_not_finite


# ------------------------------------------------------------------ output and progress
def test_run_creates_its_folder_with_parents_and_out_problem_refuses_a_file(tmp_path):
    args = argparse.Namespace(out=str(tmp_path / "a" / "b"), resume=None, overwrite=False, no_progress=True)
    assert out_problem(args) is None and not (tmp_path / "a").exists()  # checking creates nothing
    run = Run(args, [])
    assert (tmp_path / "a" / "b").is_dir() and run.path("m.json") == str(tmp_path / "a" / "b" / "m.json")
    assert out_problem(args) is None  # an existing folder without results is fine
    (tmp_path / "file").write_text("")
    assert out_problem(argparse.Namespace(**{**vars(args), "out": str(tmp_path / "file")})) == \
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
    bar = progress(range(3), 3, "epoch 1")
    assert isinstance(bar, PlainProgress) and list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1.00")  # the loop's call does nothing, and does not fail
    assert isinstance(progress(range(3), 3, "epoch 1", enabled=False), PlainProgress)


def test_progress_uses_tqdm_only_on_a_terminal(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress(range(3), 3, "epoch 1")
    assert isinstance(bar, tqdm.tqdm) and list(bar) == [0, 1, 2]
    with open(os.devnull, "w") as log:  # stderr sent to a log file: no bar redraws in it
        monkeypatch.setattr(sys, "stderr", log)
        assert isinstance(progress(range(3), 3, "epoch 1"), PlainProgress)


def test_the_resume_command_replaces_the_runs_own_resume_flag_in_either_form(tmp_path):
    args = argparse.Namespace(out=str(tmp_path), resume="old.npz", no_progress=True)
    for given in (["--lr", "0.1", "--resume", "old.npz", "--seed", "2"], ["--lr", "0.1", "--resume=old.npz", "--seed", "2"]):
        run = Run(args, given, "scripts/train.py")
        assert run.command("new.npz").split()[1:] == ["scripts/train.py", "--lr", "0.1", "--seed", "2",
                                                      "--resume", "new.npz"]
        assert run.command().split()[1:] == ["scripts/train.py", *given]  # no checkpoint: the command as given
        run.close()  # lets go of the folder's lock for the next Run in it


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
    save_state(path, model, optimizer, rng, config=vars(args), step=1, epoch=1, history=[{"epoch": 1}],
                     mdr=_Controller(2.5).state_dict())
    model2, optimizer2, rng2, _ = _run(seed=1)  # different weights, moments and RNG position
    mdr = _Controller()
    state = resume(path, args, ARCHITECTURE, model2, optimizer2, rng2, mdr=mdr, soft_free_bits=None)
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
    save_state(path, model, optimizer, rng, config=vars(args), step=1, epoch=1, history=[{}],
                     vocab={"words": ["a", "b"]}, mdr=None)
    other, other_opt, other_rng, other_args = _run(latent=3)
    with pytest.raises(SystemExit, match=r"^--resume: .* different latent \(2 there, 3 here\)$"):
        resume(path, other_args, ARCHITECTURE, other, other_opt, other_rng)
    with pytest.raises(SystemExit, match=r"different vocab \(other data\?\)"):
        resume(path, args, ARCHITECTURE, model, optimizer, rng, same={"vocab": {"words": ["a", "c"]}})
    with pytest.raises(SystemExit, match="has no --mdr state to resume"):
        resume(path, args, ARCHITECTURE, model, optimizer, rng, mdr=_Controller())
    with pytest.raises(SystemExit, match="--resume: no checkpoint at"):
        resume(tmp_path / "missing.npz", args, ARCHITECTURE, model, optimizer, rng)


def test_the_nan_stop_names_step_term_and_checkpoint():
    stop_if_not_finite({"rec": 1.0, "kl": 0.5}, 3, "runs/x/checkpoint.npz")  # finite: carries on
    with pytest.raises(SystemExit) as err:
        stop_if_not_finite({"rec": 1.0, "kl": float("inf")}, 44, "runs/x/checkpoint.npz")
    message = str(err.value)
    assert message.startswith("step 44: the kl term is inf") and message.endswith(
        "Last good checkpoint: runs/x/checkpoint.npz")
