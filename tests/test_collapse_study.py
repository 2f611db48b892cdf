"""The text diagnostics (reconstruction scores, factor probe) and scripts/collapse_study.py.

The probe must read a label that the features encode and must not read one they do not; the
reconstruction scores are checked on pairs whose answers are known; the study script runs every
method at a tiny size and writes its table, JSON and figure.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minivae import diagnostics
from minivae.text import EOS_ID

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "collapse_study.py"
spec = importlib.util.spec_from_file_location("collapse_study", SCRIPT)
collapse_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collapse_study)

METHOD_NAMES = ["vanilla", "monotonic", "cyclical", "free_bits", "soft_free_bits", "mdr", "bn_vae", "bn_vae_tau",
                "word_dropout", "contiguous_dropout", "historyless", "bow"]


# ------------------------------------------------------------------ reconstruction scores
def test_reconstruction_scores_on_known_pairs():
    inputs = [[4, 5, 6], [7, 8], [9, 10, 11, 12], [5]]
    outputs = [[4, 5, 6, EOS_ID],          # exact: distance 0
               [7, 9, 9, EOS_ID, 8],       # one substitution + one insertion before <eos>: 2
               [9, 11, 12, EOS_ID],        # one deletion: 1
               [5, 5, 5]]                  # never ended: compared as is, two insertions: 2
    accuracy, distance = diagnostics.reconstruction_scores(inputs, outputs)
    assert accuracy == 0.25
    assert distance == pytest.approx((0 + 2 + 1 + 2) / 4)
    assert diagnostics.reconstruction_scores(inputs, [s + [EOS_ID] for s in inputs]) == (1.0, 0.0)
    assert diagnostics.strip_eos([4, EOS_ID, 5, EOS_ID]) == [4] and diagnostics.strip_eos([4, 5]) == [4, 5]
    with pytest.raises(ValueError, match="equally many"):
        diagnostics.reconstruction_scores(inputs, outputs[:2])


# ------------------------------------------------------------------ factor probe
def _clusters(rng, n, n_classes=6, d=16, noise=0.5):
    labels = rng.integers(0, n_classes, n)
    centres = np.random.default_rng(99).standard_normal((n_classes, d))
    return centres[labels] + noise * rng.standard_normal((n, d)), labels


def test_probe_reads_a_label_the_features_encode():
    rng = np.random.default_rng(0)
    x_train, y_train = _clusters(rng, 2000)
    x_test, y_test = _clusters(rng, 500)
    # scale and shift the features: standardisation makes the probe indifferent to units
    result = diagnostics.factor_probe(1e-3 * x_train + 5, y_train, 1e-3 * x_test + 5, y_test)
    assert result["accuracy"] > 0.98
    assert result["chance"] == pytest.approx(np.bincount(y_test).max() / 500)
    # a label carried by one feature out of 16, the others pure noise
    y = rng.integers(0, 2, 2500)
    x = rng.standard_normal((2500, 16))
    x[:, 7] += 3 * y
    assert diagnostics.factor_probe(x[:2000], y[:2000], x[2000:], y[2000:])["accuracy"] > 0.9


def test_probe_is_at_chance_on_random_features():
    rng = np.random.default_rng(1)
    _, y_train = _clusters(rng, 2000)
    _, y_test = _clusters(rng, 1000)
    result = diagnostics.factor_probe(rng.standard_normal((2000, 16)), y_train,
                                      rng.standard_normal((1000, 16)), y_test)
    assert result["accuracy"] < result["chance"] + 0.05   # 6 balanced classes: chance ~ 0.18
    # constant features (a collapsed encoder's exact means) can only give one class
    const = diagnostics.factor_probe(np.ones((2000, 4)), y_train, np.ones((1000, 4)), y_test)
    assert const["accuracy"] <= const["chance"]


def test_probe_reads_tiny_means_but_not_the_noisy_samples_a_decoder_sees():
    """A collapsed encoder in miniature: means that name the class with a spread of 0.001, under
    posterior noise of std 1. Standardised, the means are read; the samples z are not."""
    rng = np.random.default_rng(3)
    mu_train, y_train = _clusters(rng, 2000, noise=0.1)
    mu_test, y_test = _clusters(rng, 1000, noise=0.1)
    mu_train, mu_test = 1e-3 * mu_train, 1e-3 * mu_test
    on_mu = diagnostics.factor_probe(mu_train, y_train, mu_test, y_test)
    on_z = diagnostics.factor_probe(mu_train + rng.standard_normal(mu_train.shape), y_train,
                                    mu_test + rng.standard_normal(mu_test.shape), y_test)
    assert on_mu["accuracy"] > 0.98 and on_z["accuracy"] < on_z["chance"] + 0.05


def test_softmax_regression_descends_to_a_good_fit():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 600, n_classes=3, d=2, noise=1.0)

    def loss(W, b, mean, std):
        logits = (x - mean) / std @ W + b
        logits -= logits.max(axis=1, keepdims=True)
        return -np.mean(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(axis=1)))
    losses = [loss(*diagnostics.fit_softmax_regression(x, y, 3, steps)) for steps in (0, 10, 100, 500)]
    assert losses[0] == pytest.approx(np.log(3))          # W = 0: uniform prediction
    assert all(a > b for a, b in zip(losses, losses[1:]))  # the 1/L step always descends
    # the full-batch gradient at the end is nearly zero (a stationary point of a convex loss)
    W, b, mean, std = diagnostics.fit_softmax_regression(x, y, 3, 3000)
    W2, b2, _, _ = diagnostics.fit_softmax_regression(x, y, 3, 3001)
    assert np.max(np.abs(W2 - W)) < 1e-4 and np.max(np.abs(b2 - b)) < 1e-4
    with pytest.raises(ValueError, match="labels must lie"):
        diagnostics.fit_softmax_regression(x, y, 2)


# ------------------------------------------------------------------ the study script
TINY = ["--toy-sentences", "160", "--epochs", "1", "--jobs", "1", "--max-vocab", "100", "--embedding", "8",
        "--hidden", "10", "--latent", "3", "--batch-size", "16", "--eval-batch-size", "50", "--n-samples", "2",
        "--max-gen-len", "8", "--bow-hidden", "8"]


def test_the_methods_are_the_documented_ones():
    assert list(collapse_study.METHODS) == METHOD_NAMES
    for name, flags in collapse_study.METHODS.items():  # every method's flags are valid on their own
        collapse_study.train_text_vae.parse_args(flags + ["--out", "unused"])


def test_tiny_study_writes_table_json_and_figure(tmp_path, capsys):
    out = tmp_path / "study"
    rows = collapse_study.main(TINY + ["--out", str(out)])
    printed = capsys.readouterr().out
    assert "| method |" in printed and "12 runs" in printed

    study = json.loads((out / "collapse.json").read_text())
    assert [r["method"] for r in study["rows"]] == METHOD_NAMES and study["rows"] == rows
    keys = {"method", "nll", "kl", "active_units", "mi", "ppl", "factor_accuracy", "recon_accuracy",
            "levenshtein", "seconds"}
    for row in study["rows"]:
        assert keys <= set(row), row["method"]
        assert np.isfinite(row["nll"]) and row["kl"] >= 0 and 0 <= row["active_units"] <= 3
        assert 0 <= row["factor_accuracy"] <= 1 and 0 <= row["factor_accuracy_z"] <= 1 and 0 < row["factor_chance"] <= 1
        assert 0 <= row["recon_accuracy"] <= 1 and row["levenshtein"] >= 0 and row["seconds"] > 0
        assert set(row["probes"]) == {"topic", "sentiment", "tense", "length"}
        assert row["best_z_probe"] in row["probes"] and np.isfinite(row["best_z_probe_score"])
        assert row["verdict"] in ("collapsed", "weak", "uses z")
        run = out / row["method"]
        assert (run / "metrics.json").exists() and "epoch   1/1" in (run / "train.log").read_text()
    assert study["budget"]["epochs"] == 1 and study["budget"]["toy_sentences"] == 160
    assert study["methods"]["mdr"] == collapse_study.METHODS["mdr"]
    # every run saw the passed-through model size and the same seed
    configs = [json.loads((out / m / "metrics.json").read_text())["config"] for m in METHOD_NAMES]
    assert {(c["hidden"], c["latent"], c["seed"], c["toy_sentences"]) for c in configs} == {(10, 3, 1, 160)}
    assert configs[METHOD_NAMES.index("bn_vae")]["bn_vae"] == 0.5

    table = (out / "collapse.md").read_text()
    assert all(f"| {m} |" in table for m in METHOD_NAMES)
    assert "## Linear probes" in table and "length (chance" in table
    assert (out / "collapse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*.tmp")]


def test_bad_arguments_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        collapse_study.main(["--out", str(tmp_path), "--methods", "vanilla,nonsense"])
    assert "unknown --methods ['nonsense']" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a passed-through flag train_text_vae does not know
        collapse_study.main(["--out", str(tmp_path), "--methods", "vanilla", "--no-such-flag"])
    assert not (tmp_path / "vanilla").exists()


def test_probe_score_counts_binomial_standard_errors_and_picks_the_best_label():
    # 60% on 100 sentences against a 50% majority class: 0.1 / sqrt(0.5 * 0.5 / 100) = 2 se.
    assert collapse_study.probe_z_score({"accuracy_z": 0.6, "chance": 0.5, "n": 100}) == pytest.approx(2.0)
    assert collapse_study.probe_z_score({"accuracy_z": 0.2, "chance": 0.2, "n": 1000}) == 0.0
    # The best label is the one furthest above its own chance in standard errors, not the one
    # with the highest accuracy on z: on 1,000 sentences topic 20% against 1/6 is 2.8 se, tense
    # 55% against 50% is 3.2 se, length 40% against 30% is 6.9 se.
    probes = {"topic": {"accuracy": 0.9, "accuracy_z": 0.2, "chance": 1 / 6, "n": 1000},
              "tense": {"accuracy": 0.7, "accuracy_z": 0.55, "chance": 0.5, "n": 1000},
              "length": {"accuracy": 0.5, "accuracy_z": 0.4, "chance": 0.3, "n": 1000}}
    metrics = {"test": {"nll": 40.0, "kl": 3.0, "active_units": 2, "mi": 2.5, "ppl": 20.0, "recon_accuracy": 0.0,
                        "levenshtein": 9.0, "factor_accuracy": probes}, "tokens_per_sec": 1e4}
    row = collapse_study.table_row("free_bits", metrics, seconds=1.0)
    assert row["best_z_probe"] == "length" and row["verdict"] == "uses z"
    assert row["best_z_probe_score"] == pytest.approx(0.1 / (0.3 * 0.7 / 1000) ** 0.5)
    assert row["factor_accuracy"] == 0.9 and row["factor_accuracy_z"] == 0.2  # the topic columns
