"""Each lab of scripts/labs.py, run on the reference, lands in its expected band.

The labs are what a student runs after finishing a topic; these tests prove the bands hold for
correct code. The ones that train (15 s to 2 min) are marked slow.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("labs", ROOT / "scripts" / "labs.py")
labs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(labs)


@pytest.mark.parametrize("lab", ["sampler", "kl", "schedules", "graph", "gru"])
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


@pytest.mark.skipif(bool(os.environ.get("MINIVAE_ASSIGNMENT_CHILD")), reason="makes a copy: not inside a copy")
def test_a_lab_runs_the_copy_it_stands_in_not_an_installed_minivae(tmp_path):
    """In a copy with the sampler blanked, the lab fails, even with the reference first on the path."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_assignment
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    make_assignment.make_assignment(tmp_path / "hw", ["distributions"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}  # the reference first
    proc = subprocess.run([sys.executable, "scripts/labs.py", "sampler", "--out", str(tmp_path / "labs")],
                          cwd=tmp_path / "hw", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "NotImplementedError: distributions:" in proc.stderr
