"""minivae.flags: the shared flags and their checks, each on its own.

The scripts' own tests (test_train_mnist.py, test_train_text.py, test_reliability.py) show the
same checks at work on whole command lines: refused flags, --resume and --out.
"""
import argparse
import re

import pytest

from minivae import flags


# ------------------------------------------------------------------ flags
def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--hidden", type=int, nargs="+", default=[4])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--word-dropout", type=float, default=0.0)
    flags.add_kl_flags(p)
    return p


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1"), (["--hidden", "8", "0"], "--hidden must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"), (["--free-bits", "-0.1"], "--free-bits must be >= 0"),
    (["--word-dropout", "1.5"], r"--word-dropout must be in \[0, 1\]")])
def test_check_flags_names_the_flag_out_of_range(argv, message, capsys):
    p = _parser()
    ranges = dict(at_least_1=("epochs", "hidden"), positive=("lr",), at_least_0=("beta", "free_bits"),
                  in_0_1=("word_dropout",))
    flags.check_flags(p, p.parse_args([]), **ranges)  # the defaults pass
    with pytest.raises(SystemExit) as err:
        flags.check_flags(p, p.parse_args(argv), **ranges)
    assert err.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_beta_schedule_scales_the_schedule_and_names_a_bad_flag():
    p = _parser()
    beta = flags.beta_schedule(p.parse_args(["--beta", "0.5", "--beta-schedule", "linear",
                                             "--beta-params", "x0=10"]), total_steps=100)
    assert beta(0) == 0 and beta(5) == pytest.approx(0.25) and beta(50) == 0.5
    with pytest.raises(SystemExit, match="--beta-params"):
        flags.beta_schedule(p.parse_args(["--beta-params", "x0"]), 100)
    with pytest.raises(SystemExit, match="--beta-schedule"):
        flags.beta_schedule(p.parse_args(["--beta-schedule", "cyclical", "--beta-params", "ratio=2"]), 100)


def test_run_config_leaves_out_how_the_run_is_watched():
    args = argparse.Namespace(lr=0.1, resume="c.npz", no_progress=True, out="runs/x")
    assert flags.run_config(args) == {"lr": 0.1, "out": "runs/x"}
