"""scripts/train_autoencoder.py and compare_autoencoders.py, end to end on the bundled digits:
every model learns in a short run (beats the best image that ignores the input), writes its
metrics and figures, resumes exactly; the VQ prior prefers its own samples to uniform codes; dead VQ codes are restarted
in runs shorter than --restart-every; the comparison scores reconstructions with a digit classifier."""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minivae import data, shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the scripts import each other
import compare_autoencoders  # noqa: E402
import train_autoencoder  # noqa: E402

SHORT = ["--no-download", "--limit", "4000", "--epochs", "2", "--batch-size", "16", "--hidden", "64",
         "--no-progress", "--prior-epochs", "1"]
LONGER = {"beta_vae": ["--epochs", "6"]}  # on the first 4,000 generated shapes: 2 epochs are few steps
FIGURES = {"ae": [], "dae": [], "sparse": ["filters", "code_units"], "ksparse": ["filters", "code_units"],
           "contractive": ["filters"], "vae": ["samples", "traversals"], "beta_vae": ["samples", "traversals"],
           "vqvae": ["samples", "code_usage"], "iaf": ["samples"]}


def mean_image_nll(x_train, x_test):
    """-log p(x) per test image under independent pixels with the training set's means: the best
    model that ignores its input, and the baseline every autoencoder must beat."""
    p = np.clip(x_train.mean(0), 1e-6, 1 - 1e-6)
    return float(-(x_test * np.log(p) + (1 - x_test) * np.log(1 - p)).sum(1).mean())


@pytest.fixture(scope="module")
def baselines():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        x_train, _, x_test, _, _ = data.load_train_test("mnist", download=False)
    s_train, _, s_test, _ = shapes.make_shapes(seed=1)
    return {"mnist": mean_image_nll(x_train[:4000], x_test), "shapes": mean_image_nll(s_train, s_test)}


@pytest.mark.parametrize("model", train_autoencoder.MODELS)
def test_every_model_learns_in_a_short_run_and_writes_its_outputs(model, tmp_path, baselines):
    out = tmp_path / model
    metrics = train_autoencoder.main(["--model", model, *SHORT, "--iw-samples", "5", "--iw-examples", "50",
                                      "--out", str(out), *LONGER.get(model, [])])
    dataset = "shapes" if model == "beta_vae" else "mnist"
    score = metrics.get("test_neg_elbo", metrics["test_rec"])  # the VAEs: the whole bound
    assert score < baselines[dataset] - 5, (score, baselines[dataset])
    assert json.loads((out / "metrics.json").read_text())["test_rec"] == pytest.approx(metrics["test_rec"])
    for name in ["reconstructions", *FIGURES[model]]:
        assert (out / f"{name}.png").stat().st_size > 1000, name
    if model == "vqvae":
        assert metrics["prior_sample_nll"] < metrics["uniform_code_nll"] - 5
        assert metrics["prior_test_nll"] < metrics["uniform_code_nll"]
        assert 1 < metrics["code_perplexity"] <= 64 and min(metrics["code_usage"]["codes_used_per_position"]) >= 2
        assert (out / "prior.npz").is_file()
    else:
        assert metrics["active_units"] >= 1
    if model in ("vae", "beta_vae", "iaf"):
        assert metrics["test_iw_nll"] <= metrics["test_neg_elbo"] + 5
    if model == "beta_vae":
        assert 0 <= metrics["mig"] <= 1 and set(metrics["mig_per_factor"]) == set(shapes.FACTORS)


@pytest.mark.parametrize("model", ["ksparse", "vqvae"])
def test_resume_continues_exactly(model, tmp_path):
    flags = ["--model", model, "--no-download", "--limit", "600", "--batch-size", "64", "--hidden", "32",
             "--no-progress", "--no-plots", "--prior-epochs", "1", "--k-warmup-epochs", "1.5",
             "--restart-every", "7", *(["--ema"] if model == "vqvae" else [])]
    straight = train_autoencoder.main(flags + ["--epochs", "2", "--out", str(tmp_path / "a")])
    train_autoencoder.main(flags + ["--epochs", "1", "--out", str(tmp_path / "b")])
    resumed = train_autoencoder.main(flags + ["--epochs", "2", "--out", str(tmp_path / "b"),
                                              "--resume", str(tmp_path / "b" / "checkpoint.npz")])
    assert resumed["test_rec"] == straight["test_rec"]
    with pytest.raises(SystemExit, match="different"):
        train_autoencoder.main(flags + ["--epochs", "3", "--hidden", "48", "--out", str(tmp_path / "b"),
                                        "--resume", str(tmp_path / "b" / "checkpoint.npz")])


def test_vq_restarts_fire_in_a_run_shorter_than_restart_every(tmp_path):
    # 2 epochs of 10 steps, far fewer than --restart-every 50: the restarts still happen, every
    # 2 steps of each epoch, and they are what keeps many codes in use at every position
    flags = ["--model", "vqvae", "--no-download", "--limit", "640", "--epochs", "2", "--batch-size", "64",
             "--hidden", "32", "--prior-epochs", "1", "--no-plots", "--no-progress"]
    runs = {every: train_autoencoder.main(flags + ["--restart-every", every, "--out", str(tmp_path / every)])
            for every in ("50", "0")}
    assert all(record["dead_codes_restarted"] > 0 for record in runs["50"]["epochs"])
    assert all(record["dead_codes_restarted"] == 0 for record in runs["0"]["epochs"])
    used = {every: metrics["code_usage"]["codes_used_per_position"] for every, metrics in runs.items()}
    assert min(used["50"]) > min(used["0"]) and sum(used["50"]) >= 1.5 * sum(used["0"]), used


@pytest.mark.parametrize("limit", ["--max-seconds", "--max-cpu-seconds"])
def test_a_time_limit_stops_training_early(tmp_path, limit):
    metrics = train_autoencoder.main(["--model", "ae", "--no-download", "--limit", "2000", "--epochs", "50",
                                      limit, "0.2", "--no-plots", "--no-progress", "--out", str(tmp_path)])
    assert len(metrics["epochs"]) < 50
    assert metrics["train_cpu_seconds"] == pytest.approx(sum(r["train_cpu_seconds"] for r in metrics["epochs"]))


def test_bad_flags_name_the_flag(capsys):
    for flags, name in [(["--k", "0"], "--k"), (["--ema-decay", "2"], "--ema-decay"),
                        (["--noise-level", "-1"], "--noise-level")]:
        with pytest.raises(SystemExit):
            train_autoencoder.parse_args(flags)
        assert name in capsys.readouterr().err


def test_compare_writes_the_table_json_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_autoencoders, "QUICK", ["--limit", "600", "--epochs", "1", "--hidden", "32",
                                                        "--batch-size", "64", "--prior-epochs", "1"])
    monkeypatch.setattr(compare_autoencoders, "VQVAE2_QUICK", ["--limit", "300", "--epochs", "1", "--hidden", "16",
                                                               "--batch-size", "64", "--prior-epochs", "1",
                                                               "--n-codes", "16", "--n-codes-bottom", "4"])
    result = compare_autoencoders.main(["--out", str(tmp_path), "--quick", "--no-download",
                                        "--iw-samples", "3", "--iw-examples", "20", "--shapes-epochs", "1"])
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [r["model"] for r in saved["rows"]] == [*train_autoencoder.MODELS, "vqvae2", "iaf_equal_time"]
    keys = {"model", "test_rec", "test_neg_elbo", "test_iw_nll", "active_units", "recognised",
            "codes_per_position", "seconds", "cpu_seconds"}
    for row in saved["rows"]:
        assert set(row) == keys
        assert (row["test_neg_elbo"] is None) == (row["model"] not in ("vae", "beta_vae", "iaf", "iaf_equal_time"))
        assert (row["codes_per_position"] is None) == (row["model"] != "vqvae")
        assert 0 <= row["recognised"] <= 1
    assert saved["config"]["classifier_test_accuracy"] > 0.8  # the scorer itself recognises real digits
    vq = saved["vqvae"]
    assert len(vq["code_usage"]["codes_used_per_position"]) == 8
    for key in ("prior_samples", "uniform_codes"):
        assert sum(vq[key]["class_counts"]) == 1000
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    text = (tmp_path / "comparison.md").read_text()
    assert "| model |" in text and "| position 8 |" in text and "all positions, pooled" in text
    assert set(json.loads((tmp_path / "disentanglement.json").read_text())["rows"][0]) >= {"beta", "mig"}


@pytest.mark.slow
def test_beta_vae_on_the_shapes_pays_kl_for_a_smaller_code(tmp_path):
    # what beta > 1 reliably does: it spends fewer nats and fewer dimensions on the code. How the
    # MIG follows beta is measured by scripts/beta_sweep.py (docs/autoencoders.md), not tested here.
    flags = ["--dataset", "shapes", "--epochs", "3", "--batch-size", "128", "--hidden", "256", "--latent", "10",
             "--no-plots", "--no-progress"]
    vae = train_autoencoder.main(["--model", "vae", *flags, "--out", str(tmp_path / "vae")])
    beta = train_autoencoder.main(["--model", "beta_vae", *flags, "--beta", "8", "--out", str(tmp_path / "b")])
    assert beta["test_kl"] < vae["test_kl"] - 2 and beta["active_units"] <= vae["active_units"]
    assert beta["test_rec"] > vae["test_rec"]
    for m in (vae, beta):
        assert 0 <= m["mig"] <= 1 and len(m["kl_per_dim"]) == 10
