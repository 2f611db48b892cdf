"""Using a trained model without retraining: minivae.load_model and scripts/sample.py.

Tiny checkpoints of both training scripts are made once per module, offline (the MNIST script
falls back to the bundled digits), then rebuilt and used.
"""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

import minivae
from minivae import data, text
from minivae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivae.engine import no_grad
from minivae.models import MLPVAE
from minivae.saved import BUILDERS, load_model
from minivae.sentence_vae import SentenceVAE

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    path = SCRIPTS / f"{name}.py" if (SCRIPTS / f"{name}.py").exists() else SCRIPTS / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """The three scripts, with scripts/ importable (sample.py imports train_mnist_vae) and no network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))
        mp.setenv("MINIVAE_DATA", str(tmp_path_factory.mktemp("empty-cache")))
        mp.setattr(data, "DATASETS", {name: {**spec, "mirrors": ["http://127.0.0.1:9/"]}
                                      for name, spec in data.DATASETS.items()})
        yield {name: _script(name) for name in ("train_mnist_vae", "train_text_vae", "sample", "bench_iw_eval")}


TINY_MNIST = ["--hidden", "32", "--latent", "3", "--batch-size", "400", "--epochs", "1", "--no-progress",
              "--no-download", "--no-plots"]


@pytest.fixture(scope="module")
def runs(scripts, tmp_path_factory):
    """Checkpoints of an image VAE, a conditional Gaussian one, and a sentence VAE."""
    root = tmp_path_factory.mktemp("runs")
    scripts["train_mnist_vae"].main(TINY_MNIST + ["--out", str(root / "vae")])
    scripts["train_mnist_vae"].main(TINY_MNIST + ["--conditional", "--likelihood", "gaussian", "--x-logvar",
                                                  "learned-pixel", "--out", str(root / "cvae")])
    scripts["train_text_vae"].main(["--toy-sentences", "200", "--epochs", "1", "--embedding", "8", "--hidden", "16",
                                    "--latent", "2", "--no-progress", "--no-plots", "--n-samples", "2",
                                    "--max-gen-len", "8", "--out", str(root / "text")])
    return {name: root / name / "checkpoint.npz" for name in ("vae", "cvae", "text")}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------ load_model
def test_load_model_rebuilds_the_trained_image_models(runs):
    for name, conditional in (("vae", False), ("cvae", True)):
        state = load_checkpoint(runs[name])
        model = minivae.load_model(runs[name])  # the package-level name is saved.load_model
        assert isinstance(model, MLPVAE) and model.config == state["config"]
        assert (model.n_classes == 10) is conditional
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(value, state["params"][key], err_msg=key)
        with no_grad():
            y = np.arange(5) if conditional else None
            images = model.sample(5, np.random.default_rng(0), y)
        assert images.shape == (5, 784) and np.all(np.isfinite(images))


def test_load_model_rebuilds_the_sentence_vae_with_its_vocabulary(runs):
    state = load_checkpoint(runs["text"])
    model = load_model(runs["text"])
    assert isinstance(model, SentenceVAE) and model.vocab == text.Vocab.from_dict(state["vocab"])
    assert sorted(model.state_dict()) == sorted(state["params"])
    from minivae import decoding
    ids = decoding.sample(model, 2, np.random.default_rng(0), max_len=5)
    assert len(ids) == 2 and all(len(s) <= 5 for s in ids)


def test_load_model_says_clearly_what_is_not_a_minivae_checkpoint(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    cases = {tmp_path / "notes.txt": "not a readable minivae checkpoint",
             tmp_path / "other.npz": "not a readable minivae checkpoint",
             tmp_path / "missing.npz": "no checkpoint at"}
    save_checkpoint(tmp_path / "no_config.npz", params={})
    cases[tmp_path / "no_config.npz"] = "has no 'config' entry"
    state = load_checkpoint(runs["vae"])
    save_checkpoint(tmp_path / "kind.npz", params=state["params"], config={**state["config"], "model": "gan"})
    cases[tmp_path / "kind.npz"] = "kind 'gan'; load_model knows " + str(sorted(BUILDERS))
    save_checkpoint(tmp_path / "shape.npz", params=state["params"], config={**state["config"], "latent": 4})
    cases[tmp_path / "shape.npz"] = "do not describe a mlp_vae"
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_model(path)


def test_a_checkpoint_without_a_model_entry_is_recognised_by_its_contents(runs, tmp_path):
    """Checkpoints written before the config named the model still load."""
    for name in ("vae", "text"):
        state = load_checkpoint(runs[name])
        state["config"].pop("model", None)
        save_checkpoint(tmp_path / f"{name}.npz", **state)
        assert type(load_model(tmp_path / f"{name}.npz")) is type(load_model(runs[name]))


# ------------------------------------------------------------------ scripts/sample.py
def test_sample_script_draws_every_image_figure_and_never_touches_the_run(scripts, runs, tmp_path, capsys):
    for name, extra in (("vae", []), ("cvae", ["class_samples.png"])):
        run = runs[name].parent
        before = _snapshot(run)
        written = scripts["sample"].main([str(runs[name]), "--n", "4", "--pair", "2", "5"])
        expected = ["samples.png", "reconstructions.png", "interpolation.png", "traversal.png", *extra]
        assert written == expected
        for png in expected:  # default --out: samples/ beside the checkpoint
            assert (run / "samples" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert _snapshot(run) == before  # the checkpoint, metrics.json and every other file as they were
    assert "held-out part" in capsys.readouterr().out


def test_sample_script_writes_sentences_from_the_command_line_and_stdin(scripts, runs, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a sentence from stdin\n\n"))
    out = tmp_path / "s"
    written = scripts["sample"].main([str(runs["text"]), "--out", str(out), "--n", "2", "--max-len", "6",
                                      "--sentence", "the cat", "--stdin", "--temperature", "0.5"])
    assert written == ["samples.txt", "reconstructions.txt", "interpolation.txt"]
    samples = (out / "samples.txt").read_text()
    for method in ("greedy", "sampling, temperature 0.5", "beam search, width 5"):
        assert f"# z ~ N(0, I), {method} decoding" in samples
    recon = (out / "reconstructions.txt").read_text()
    assert "input:  the cat" in recon and "input:  a sentence from stdin" in recon and recon.count("greedy:") == 2
    assert "# 2 inputs gave " in recon and "word edits from their own input on average" in recon
    assert samples.count("# 2 codes gave ") == 3
    interpolation = (out / "interpolation.txt").read_text().splitlines()
    assert interpolation[2] == "from: the cat" and interpolation[-1] == "to:   a sentence from stdin"
    assert len(interpolation) == 3 + 6 + 1
    assert "== samples.txt" in capsys.readouterr().out


def test_sentence_lists_say_how_many_different_sentences_they_hold(scripts):
    variety = scripts["sample"].variety
    assert variety([[5, 6, 2], [5, 6], [7, 2]], "codes") == "# 3 codes gave 2 different sentences"  # cut at <eos>
    assert variety([[5, 2], [5, 2, 9]], "codes") == ("# 2 codes gave 1 different sentence: the decoder ignores z "
                                                     "(posterior collapse, see docs/collapse.md)")


@pytest.mark.parametrize("argv, message", [
    (["{vae}", "--out", "{vae_dir}"], "holds a training run's results (checkpoint.npz, metrics.json)"),
    (["{vae}", "--sentence", "hello"], "--sentence: only for sentence models"),
    (["{text}", "--pair", "2", "3"], "--pair: only for image models"),
    (["{vae}", "--n", "0"], "--n must be >= 1"),
    (["{text}", "--temperature", "0"], "--temperature must be > 0"),
    (["{notes}"], "is not a readable minivae checkpoint")])
def test_sample_script_refuses_mistakes_in_one_line(argv, message, scripts, runs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    fill = {"vae": runs["vae"], "vae_dir": runs["vae"].parent, "text": runs["text"], "notes": tmp_path / "notes.txt"}
    with pytest.raises(SystemExit) as err:
        scripts["sample"].main([a.format(**fill) for a in argv])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_load_model_config_is_the_config_in_metrics_json(runs):
    """What load_model reads is what metrics.json reports: one record of the run's flags."""
    metrics = json.loads((runs["cvae"].parent / "metrics.json").read_text())
    assert load_model(runs["cvae"]).config == metrics["config"]


# ------------------------------------------------------------------ bench_iw_eval.py
def test_bench_iw_eval_times_three_paths_that_agree(scripts, runs, tmp_path, capsys):
    """The fast float32 evaluation, the textbook one and the float64 reference, on one checkpoint."""
    out = tmp_path / "iw.json"
    results = scripts["bench_iw_eval"].main([str(runs["vae"]), "--images", "12", "--samples", "40",
                                            "--out", str(out)])
    printed = capsys.readouterr().out
    assert set(results) == {"fast", "textbook", "float64"} and "textbook time / fast time" in printed
    for path in ("fast", "textbook"):
        assert abs(results[path]["nll"] - results["float64"]["nll"]) < 0.01
    assert json.loads(out.read_text())["results"]["fast"]["seconds"] > 0
    with pytest.raises(SystemExit, match="not a readable minivae checkpoint|not a minivae"):
        scripts["bench_iw_eval"].main([str(out)])
    with pytest.raises(SystemExit, match="unconditional Bernoulli"):
        scripts["bench_iw_eval"].main([str(runs["cvae"])])
