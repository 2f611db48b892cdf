"""The sentence VAE's training script, scripts/train_text_vae.py: a tiny toy run writing every
output, every remedy through the flags, exact resumption, the NaN stop, and clear errors for bad
corpora and flags.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minivae import decoding
from minivae.checkpoint import load_checkpoint
from minivae.engine import Tensor
from minivae.saved import sentence_model
from minivae.sentence_vae import SentenceVAE
from minivae.text import PAD_ID, SOS_ID, UNK_ID, text_batches

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_text_vae.py"
spec = importlib.util.spec_from_file_location("train_text_vae", SCRIPT)
train_text_vae = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_text_vae)

TINY = ["--toy-sentences", "300", "--max-vocab", "120", "--embedding", "8", "--hidden", "10", "--latent", "3",
        "--batch-size", "16", "--no-progress", "--n-samples", "3", "--max-gen-len", "8", "--eval-batch-size", "50"]


def test_tiny_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    history = train_text_vae.main(TINY + ["--epochs", "2", "--out", str(out), "--word-dropout", "0.3",
                                          "--beta-schedule", "linear", "--beta-params", "x0=20"])
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "tokens/s" in printed and "AU" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"config", "data", "epochs", "test", "tokens_per_sec"}
    assert metrics["data"]["source"] == "toy" and metrics["data"]["vocab_size"] == 120
    keys = {"epoch", "train_nll", "train_kl", "valid_nll", "valid_kl", "valid_ppl", "active_units", "mi",
            "beta", "seconds"}
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and all(keys <= set(e) for e in metrics["epochs"])
    assert {"nll", "kl", "ppl", "active_units", "mi"} <= set(metrics["test"])
    test = metrics["test"]  # greedy reconstruction of the 15 test sentences, and the factor probes
    assert test["recon_accuracy"] in [k / 15 for k in range(16)] and test["levenshtein"] >= 0
    assert set(test["factor_accuracy"]) == {"topic", "sentiment", "tense", "length"}
    for probe in test["factor_accuracy"].values():
        assert 0 <= probe["accuracy"] <= 1 and 0 <= probe["accuracy_z"] <= 1 and 1 / 6 <= probe["chance"] <= 1
    assert metrics["epochs"] == history and metrics["tokens_per_sec"] > 0
    e = metrics["epochs"][-1]
    assert 1 < e["valid_ppl"] < 120 and 0 <= e["active_units"] <= 3 and 0 < e["beta"] <= 1
    valid = metrics["data"]["splits"]["valid"]
    n_predicted = valid["n_tokens"] + valid["n_sentences"]  # every word and each <eos>, never <sos>
    assert e["valid_ppl"] == pytest.approx(
        np.exp((e["valid_nll"] + e["valid_kl"]) * valid["n_sentences"] / n_predicted), rel=1e-9)
    for name in ("samples.txt", "reconstructions.txt", "interpolations.txt"):
        assert (out / name).read_text().strip(), name
    assert "input:" in (out / "reconstructions.txt").read_text()
    for png in ("curves", "kl_per_dim", "beta_schedule", "latent"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 2 and state["step"] == 2 * 17  # 270 training sentences / 16 per batch
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_every_remedy_runs_through_the_script(tmp_path):
    common = TINY + ["--epochs", "1", "--no-plots"]
    for flags in (["--bn-vae", "0.5", "--bidirectional", "--z-to-every-step", "--free-bits", "0.1",
                   "--bow", "1.0", "--embedding-dropout", "0.2", "--contiguous-dropout", "0.2"],
                  ["--bn-vae-tau", "0.5", "--ha-bits", "0.1", "--historyless", "--mdr", "2.0"],
                  ["--soft-free-bits", "2.0", "--free-bits", "0.2", "--free-bits-mode", "total"]):
        out = tmp_path / flags[0].strip("-")
        history = train_text_vae.main(common + flags + ["--out", str(out)])
        assert np.isfinite(history[-1]["valid_nll"]) and np.isfinite(history[-1]["valid_kl"])
    # BN-VAE's floor on the training KL: (d/2) * gamma^2 = 0.375 nats (plus the learned shifts' share).
    # (Evaluation uses running statistics, which after 17 steps still remember their start values.)
    assert json.loads((tmp_path / "bn-vae" / "metrics.json").read_text())["epochs"][0]["train_kl"] >= 0.375 * 0.999


def test_resume_is_exactly_a_continued_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = TINY + ["--no-plots", "--word-dropout", "0.2", "--mdr", "3.0", "--bn-vae", "0.5"]
    train_text_vae.main(flags + ["--epochs", "2", "--out", str(straight)])
    train_text_vae.main(flags + ["--epochs", "1", "--out", str(split)])
    history = train_text_vae.main(flags + ["--epochs", "2", "--out", str(split),
                                           "--resume", str(split / "checkpoint.npz")])
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a["step"] == b["step"] and a["mdr"] == b["mdr"]
    for name in a["params"]:
        np.testing.assert_array_equal(a["params"][name], b["params"][name], err_msg=name)
    drop_time = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop_time(a["history"]) == drop_time(b["history"]) == drop_time(history)
    with pytest.raises(SystemExit, match=r"different latent \(3 there, 4 here\)"):
        train_text_vae.main(flags + ["--latent", "4", "--epochs", "3", "--out", str(split),
                                     "--resume", str(split / "checkpoint.npz")])


def test_nan_stops_training_naming_step_and_term_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_loss = SentenceVAE.loss
    calls = {"n": 0}

    def loss_that_goes_nan(self, *args, **kwargs):
        objective, stats = real_loss(self, *args, **kwargs)
        if kwargs.get("training"):
            calls["n"] += 1
            if calls["n"] == 21:  # step 20, in epoch 2 (17 steps per epoch)
                stats = {**stats, "rec": float("nan")}
        return objective, stats
    monkeypatch.setattr(SentenceVAE, "loss", loss_that_goes_nan)
    with pytest.raises(SystemExit, match="step 20: the rec term is nan"):
        train_text_vae.main(TINY + ["--epochs", "3", "--out", str(run), "--no-plots"])
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 1  # the last good one survives


@pytest.mark.parametrize("content, message", [(b"", "contains no sentences"),
                                              (b"  \n\n \t\n", "contains no sentences"),
                                              (b"a good line\nbad \xff\xfe bytes\n", "line 2 is not valid UTF-8")])
def test_bad_corpus_file_is_refused_clearly(tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        train_text_vae.main(["--corpus", str(corpus), "--out", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(SystemExit, match="does not exist"):
        train_text_vae.main(["--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")])


def test_a_text_file_corpus_trains(tmp_path):
    lines = [" ".join(f"w{(i * 7 + k) % 23}" for k in range(3 + i % 5)) for i in range(120)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(lines[:20]) + "\nan unseen line\n", encoding="utf-8")
    history = train_text_vae.main(["--corpus", str(tmp_path / "train.txt"), "--valid-corpus",
                                   str(tmp_path / "valid.txt"), "--epochs", "1", "--no-plots",
                                   "--out", str(tmp_path / "out")] + TINY[4:])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["carved_from_train"] == ["test"] and metrics["data"]["splits"]["valid"]["n_unk"] == 3
    assert metrics["test"]["factor_accuracy"] is None and 0 <= metrics["test"]["recon_accuracy"] <= 1
    assert np.isfinite(history[0]["valid_ppl"])


def test_toy_length_and_topics_shape_the_corpus_and_are_recorded(tmp_path):
    out = tmp_path / "run"
    train_text_vae.main(TINY + ["--epochs", "1", "--no-plots", "--toy-length", "6", "9", "--toy-topics", "3",
                                "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["toy_length"] == [6, 9] and metrics["config"]["toy_topics"] == 3
    assert metrics["data"]["factor_levels"]["topic"] == ["topic0", "topic1", "topic2"]
    splits = metrics["data"]["splits"]  # every sentence has 6 to 9 words
    assert all(6 <= s["n_tokens"] / s["n_sentences"] <= 9 for s in splits.values())
    assert 1 / 3 <= metrics["test"]["factor_accuracy"]["topic"]["chance"] < 0.6
    data = train_text_vae.load_data(train_text_vae.parse_args(TINY + ["--toy-length", "6", "9", "--out", "o"]))
    assert {len(s) for seqs in (data.train, data.valid, data.test) for s in seqs} <= set(range(6, 10))


@pytest.mark.parametrize("bad, message", [
    (["--toy-length", "3", "10"], "--toy-length must be MIN MAX with 4 <= MIN <= MAX <= 40"),
    (["--toy-length", "12", "10"], "--toy-length must be MIN MAX with 4 <= MIN <= MAX <= 40"),
    (["--toy-length", "10", "41"], "--toy-length must be MIN MAX with 4 <= MIN <= MAX <= 40"),
    (["--toy-topics", "1"], "--toy-topics must be in 2..10"),
    (["--toy-topics", "11"], "--toy-topics must be in 2..10"),
    (["--corpus", "some.txt", "--toy-topics", "3"], "with --corpus PATH leave them out")])
def test_bad_toy_corpus_flags_are_refused_naming_the_flag(bad, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        train_text_vae.main(TINY + bad + ["--out", str(tmp_path)])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_historyless_decoder_is_scored_and_decoded_on_unk_inputs_as_trained(tmp_path):
    """The historyless model's held-out NLL is that of the same weights fed <unk> after <sos>
    (computed here directly from a plain model's loss), not of the real words it never read; and
    its decoder's steps do not depend on the previous word."""
    args = train_text_vae.parse_args(TINY + ["--historyless", "--out", str(tmp_path)])
    data = train_text_vae.load_data(args)
    model = sentence_model(vars(args), len(data.vocab), np.random.default_rng(0))
    model.to_initial_state.W.data[...] = 0.0  # z cut off from the decoder: the noise of z changes nothing
    plain = sentence_model({**vars(args), "historyless": False}, len(data.vocab))
    plain.load_state_dict(model.state_dict())
    assert model.historyless and not plain.historyless
    scores = {}
    for name, unk_inputs in (("unk", True), ("words", False)):
        total, n = 0.0, 0
        for batch in text_batches(data.valid, 7):
            dec_in = batch["dec_in"]
            if unk_inputs:
                dec_in = np.where(np.isin(dec_in, (PAD_ID, SOS_ID)), dec_in, UNK_ID)
            B = len(batch["lengths"])
            eps = np.zeros((B, args.latent), np.float32)
            total += plain.loss(batch, eps, dec_in=dec_in, training=False)[1]["rec"] * B
            n += B
        scores[name] = total / n
    assert train_text_vae.evaluate_sentences(model, data.valid, np.random.default_rng(1))["nll"] == pytest.approx(
        scores["unk"], rel=1e-5)
    assert abs(scores["words"] - scores["unk"]) > 0.1  # the real words would give another number
    z, h = Tensor(np.zeros((2, args.latent), np.float32)), Tensor(np.zeros((2, args.hidden), np.float32))
    words = [decoding.decoder_step(model, z, np.array(ids), h)[0].data for ids in ([SOS_ID, 7], [SOS_ID, 30])]
    np.testing.assert_array_equal(words[0], words[1])
    assert not np.allclose(decoding.decoder_step(plain, z, np.array([SOS_ID, 7]), h)[0].data,
                           decoding.decoder_step(plain, z, np.array([SOS_ID, 30]), h)[0].data)


def test_a_collapsed_run_says_so_in_one_line_and_its_mi_is_zero(tmp_path, capsys, monkeypatch):
    """An encoder that returns the prior (q(z|x) = p(z) for every x) ends with KL 0, no active
    unit and MI 0 +- 0: the run names the collapse and points at docs/collapse.md."""
    def prior(self, enc_in, lengths, training=False):
        zeros = Tensor(np.zeros((len(lengths), self.latent), np.float32))
        return zeros, zeros
    monkeypatch.setattr(SentenceVAE, "encode", prior)
    train_text_vae.main(TINY + ["--epochs", "1", "--no-plots", "--bow", "0", "--out", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if "posterior collapse" in line]
    assert len(lines) == 1 and "docs/collapse.md" in lines[0] and "KL 0.00 nats, 0 of 3 units active" in lines[0]
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert test["kl"] == 0 and test["active_units"] == 0 and abs(test["mi"]) <= 2 * test["mi_se"] + 1e-9
    assert test["recon_distinct"] == 1  # every sentence decodes to the same one


def test_a_run_that_uses_z_is_not_told_it_collapsed_and_its_mi_stays_below_the_kl(tmp_path, capsys, monkeypatch):
    """An encoder whose first mean is the sentence's length, standardised, with variance e^-2:
    its KL is above 1 nat and its z is informative, so there is no collapse line, and every MI
    printed lies below the KL within 2 standard errors."""
    def length_code(self, enc_in, lengths, training=False):
        mu = np.zeros((len(lengths), self.latent), np.float32)
        mu[:, 0] = (lengths - 10.0) / 4.0
        return Tensor(mu), Tensor(np.full(mu.shape, -2.0, np.float32))
    monkeypatch.setattr(SentenceVAE, "encode", length_code)
    train_text_vae.main(TINY + ["--epochs", "1", "--no-plots", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    test = metrics["test"]
    assert test["kl"] > 1 and test["active_units"] == 1 and test["mi"] > 0.5
    assert "posterior collapse" not in capsys.readouterr().out
    for mi, se, kl in [(test["mi"], test["mi_se"], test["kl"])] + [(e["mi"], e["mi_se"], e["valid_kl"])
                                                                    for e in metrics["epochs"]]:
        assert 0 < se and mi <= kl + 2 * se


@pytest.mark.parametrize("bad", [
    ["--epochs", "0"], ["--word-dropout", "1.5"], ["--max-vocab", "3"],
    ["--free-bits", "0.1", "--ha-bits", "0.1"], ["--bn-vae", "0.5", "--bn-vae-tau", "0.5"],
    ["--historyless", "--word-dropout", "0.2"], ["--soft-free-bits", "3", "--beta-schedule", "logistic"],
    ["--beta-schedule", "cyclical", "--beta-params", "ratio=2"]])
def test_bad_flags_are_refused_clearly(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        train_text_vae.main(TINY + bad + ["--out", str(tmp_path)])
    message = str(err.value) + capsys.readouterr().err
    assert err.value.code != 0 and ("must be" in message or "cannot be combined" in message or "beta" in message)


@pytest.mark.slow
def test_learning_on_the_toy_corpus_with_remedies_uses_z(tmp_path):
    """A real run: the decoder must beat a unigram model, and with word dropout + free bits the KL
    must stay well above 0 (no collapse) and several units be active."""
    history = train_text_vae.main(["--toy-sentences", "4000", "--epochs", "3", "--no-progress", "--no-plots",
                                   "--word-dropout", "0.3", "--free-bits", "0.25", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["kl"] > 2 and metrics["test"]["active_units"] >= 4
    assert history[-1]["valid_ppl"] < history[0]["valid_ppl"] < 2000
