"""scripts/train_tdvae.py end to end on tiny settings: the run folder, an exact resume,
load_model and scripts/sample.py on its checkpoint. Offline: the digits are the bundled ones."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import sample  # noqa: E402
import train_tdvae  # noqa: E402

from minivae.checkpoint import load_checkpoint  # noqa: E402
from minivae.saved import load_model  # noqa: E402
from minivae.tdvae import TDVAE  # noqa: E402

TINY = ["--steps-per-epoch", "3", "--batch-size", "4", "--pairs", "2", "--test-sequences", "6", "--samples", "2",
        "--baseline-steps", "2", "--no-progress", "--no-download"]


@pytest.mark.parametrize("task, pictures", [("oscillator", ["rollouts.png"]),
                                            ("moving-digit", ["rollouts_context11.png", "rollouts_context1.png"])])
def test_a_tiny_run_writes_its_folder_and_loads(task, pictures, tmp_path):
    out = tmp_path / "run"
    metrics = train_tdvae.main(["--task", task, "--epochs", "1", "--out", str(out), *TINY])
    assert json.loads((out / "metrics.json").read_text())["measures"] == metrics["measures"]
    names = {"oscillator": ["tdvae_jump20", "next_step_gru_jump100", "baselines_jump20", "probe_r2_tdvae"],
             "moving-digit": ["baselines", "context1", "context11"]}[task]
    assert set(names) <= set(metrics["measures"])
    assert all(np.isfinite(v) for m in metrics["measures"].values() for v in m.values())
    for name in pictures:
        assert (out / name).stat().st_size > 1000
    model = load_model(out / "checkpoint.npz")
    assert isinstance(model, TDVAE) and model.config["task"] == task
    written = sample.main([str(out / "checkpoint.npz"), "--out", str(tmp_path / "samples")])
    assert written == pictures and all((tmp_path / "samples" / name).is_file() for name in pictures)


def test_resume_continues_exactly(tmp_path):
    common = ["--task", "oscillator", "--no-plots", *TINY]
    train_tdvae.main([*common, "--epochs", "2", "--out", str(tmp_path / "straight")])
    train_tdvae.main([*common, "--epochs", "1", "--out", str(tmp_path / "split")])
    train_tdvae.main([*common, "--epochs", "2", "--out", str(tmp_path / "split"),
                      "--resume", str(tmp_path / "split" / "checkpoint.npz")])
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.npz") for name in ("straight", "split"))
    assert a["step"] == b["step"] == 6
    for name, value in a["params"].items():
        np.testing.assert_array_equal(value, b["params"][name], err_msg=name)


def test_bad_flags_end_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_tdvae.main(["--pairs", "0", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "--pairs must be >= 1 (got 0)" in capsys.readouterr().err


def test_the_jump_flags_default_per_task_and_are_checked(tmp_path, capsys):
    args = train_tdvae.parse_args(["--out", str(tmp_path / "x")])
    assert (args.max_delta, args.p_long) == (10, 0.2)
    args = train_tdvae.parse_args(["--task", "moving-digit", "--out", str(tmp_path / "x")])
    assert (args.max_delta, args.p_long) == (4, 0.0)
    args = train_tdvae.parse_args(["--max-delta", "1", "--p-long", "0", "--out", str(tmp_path / "x")])
    assert (args.max_delta, args.p_long) == (1, 0.0)
    with pytest.raises(SystemExit) as stop:
        train_tdvae.parse_args(["--task", "moving-digit", "--p-long", "0.5", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "--p-long must be in [0, 1] for the oscillator and 0 for the moving digit" in capsys.readouterr().err


def test_no_baseline_updates_still_measures(tmp_path):
    metrics = train_tdvae.main(["--task", "oscillator", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-plots",
                                *TINY, "--baseline-steps", "0"])
    assert np.isfinite(metrics["measures"]["next_step_gru_jump20"]["rmse"])
    assert set(metrics["measures"]["latent_use"]) >= {"pB_mean_spread_z0", "pT_step1_rmse", "kl_t2_jump100"}
