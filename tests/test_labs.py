"""Each lab of scripts/labs.py, run on the reference, lands in its expected band.

The labs are what a student runs after finishing a topic; these tests prove the bands hold for
correct code. The ones that train (15 s to 2 min) are marked slow.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("labs", ROOT / "scripts" / "labs.py")
labs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(labs)


@pytest.mark.parametrize("lab", ["sampler", "kl", "schedules", "graph"])
def test_quick_lab_lands_in_its_band(lab, tmp_path, capsys):
    assert labs.main([lab, "--out", str(tmp_path)]) == 0
    assert "as expected" in capsys.readouterr().out


def test_graph_lab_names_a_broken_op_and_draws_it_red(tmp_path, capsys):
    assert labs.main(["graph", "--break", "tanh", "--out", str(tmp_path)]) == 1  # the VAE has no tanh
    assert labs.main(["graph", "--break", "softplus", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "op 'softplus': its VJP disagrees with finite differences" in out
    assert (tmp_path / "vae_graph.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("lab", ["mnist", "iwae", "free_bits"])
def test_training_lab_lands_in_its_band(lab, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the labs import the training scripts
    assert labs.main([lab, "--out", str(tmp_path)]) == 0
    assert "as expected" in capsys.readouterr().out
