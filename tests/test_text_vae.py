"""The sentence VAE (models.SentenceVAE) and its training script, scripts/train_text_vae.py.

The model: a gradient check of the whole objective with every remedy on at once, the masks,
generation (greedy, sampling, beam search; the step-by-step decoder must reproduce the
teacher-forced logits) and its state. The script: a tiny toy run writing every output, exact
resumption, and clear errors for bad corpora and flags.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minivae import Tensor
from minivae.checkpoint import load_checkpoint
from minivae.distributions import sample_gaussian
from minivae.gradcheck import GradientCheckError, check_grads
from minivae.layers import dropout_mask
from minivae.models import SentenceVAE
from minivae.text import EOS_ID, PAD_ID, SOS_ID, UNK_ID, pad_batch, word_dropout

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_text_vae.py"
spec = importlib.util.spec_from_file_location("train_text_vae", SCRIPT)
train_text_vae = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_text_vae)

V = 12
SENTENCES = [[4, 5, 6, 7], [8, 9, 4], [10, 11, 5, 6, 9], [7, 4]]  # lengths 4, 3, 5, 2: padding everywhere


def tiny_model(seed=0, dtype=np.float64, **kwargs):
    sizes = dict(embedding=4, hidden=5, latent=3)
    return SentenceVAE(V, **{**sizes, **kwargs}, rng=np.random.default_rng(seed), dtype=dtype)


def _set_param(layer, dotted_name, tensor):
    """Replace the parameter called e.g. "layers.0.W" by another Tensor (as tests/test_layers.py)."""
    *path, last = dotted_name.split(".")
    owner = layer
    for part in path:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    setattr(owner, last, tensor)


def objective_of_parameters(model, loss_fn):
    """f(*parameter arrays) -> objective, with the model using the given tensors, for check_grads."""
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        for name, tensor in zip(names, params):
            _set_param(model, name, tensor)
        return loss_fn(model)
    return f, [p.data.copy() for _, p in model.named_parameters()]


# ------------------------------------------------------------------ the objective
def test_whole_objective_gradient_with_every_remedy_on():
    rng = np.random.default_rng(0)
    model = tiny_model(bidirectional=True, z_to_every_step=True, posterior_norm="bn", bow_hidden=6)
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    B, T1 = batch["dec_in"].shape
    eps = rng.standard_normal((B, 3))
    dec_in = word_dropout(batch["dec_in"], 0.3, np.random.default_rng(1))   # fixed corruption
    emb_mask = dropout_mask((B, T1, 4), 0.2, rng, np.float64)                # fixed dropout mask
    # put the free-bits floor between two dimensions' KLs, far from both kinks
    _, stats = model.loss(batch, eps, dec_in=dec_in)
    kl_sorted = np.sort(stats["kl_per_dim"])
    free_bits = (kl_sorted[0] + kl_sorted[1]) / 2
    assert kl_sorted[1] - kl_sorted[0] > 1e-3

    def loss(m):
        objective, _ = m.loss(batch, eps, beta=0.7, free_bits=free_bits, mdr_rate=3.0, mdr_multiplier=0.4,
                              bow_weight=0.5, dec_in=dec_in, emb_mask=emb_mask, training=True)
        return objective
    f, params = objective_of_parameters(model, loss)
    assert len(params) == 24  # every parameter: both encoder directions, BN shift, bag-of-words MLP
    check_grads(f, *params)


def test_objective_gradient_tau_variant_ha_bits_and_historyless():
    rng = np.random.default_rng(2)
    model = tiny_model(seed=1, posterior_norm="tau")
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    eps = rng.standard_normal((4, 3))
    dec_in = word_dropout(batch["dec_in"], 1.0, rng)       # historyless decoder
    assert set(np.unique(dec_in)) <= {SOS_ID, UNK_ID, PAD_ID}
    _, stats = model.loss(batch, eps, dec_in=dec_in)
    ha_bits = 2 * stats["kl"] / 3  # the floor is below the mean KL per dimension: KL gradients flow

    def loss(m):
        return m.loss(batch, eps, ha_bits=ha_bits, dec_in=dec_in)[0]
    f, params = objective_of_parameters(model, loss)
    check_grads(f, *params)


def test_gradient_check_catches_a_wrong_gradient():
    """Negative control: a 0.1% error in the objective's dependence on one parameter must fail."""
    model = tiny_model()
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    eps = np.random.default_rng(3).standard_normal((4, 3))

    def wrong(m):
        objective = m.loss(batch, eps)[0]
        W = m.to_logits.W
        return objective + 1e-3 * (W.data * W).sum()  # the extra term's gradient is missing W.data's share
    f, params = objective_of_parameters(model, wrong)
    with pytest.raises(GradientCheckError):
        check_grads(f, *params)


def test_stats_are_per_sentence_and_the_plain_objective_is_minus_the_elbo():
    model = tiny_model(dtype=np.float32)
    batch = pad_batch(SENTENCES)
    eps = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    objective, stats = model.loss(batch, eps)
    assert objective.dtype == np.float32
    assert stats["objective"] == pytest.approx(stats["neg_elbo"], rel=1e-6)
    assert stats["elbo"] == pytest.approx(-stats["rec"] - stats["kl"])
    assert stats["n_tokens"] == sum(len(s) + 1 for s in SENTENCES) and stats["n_sentences"] == 4
    assert stats["kl_per_dim"].shape == (3,) and stats["kl"] == pytest.approx(stats["kl_per_dim"].sum(), rel=1e-5)
    # an untrained decoder predicts ~uniformly: rec ~ (tokens per sentence) * log V
    assert abs(stats["rec"] - stats["n_tokens"] / 4 * np.log(V)) < 0.3 * stats["rec"]

    _, mdr_stats = model.loss(batch, eps, mdr_rate=5.0, mdr_multiplier=1.5)
    assert mdr_stats["objective"] - stats["objective"] == pytest.approx(1.5 * (5.0 - stats["kl"]), rel=1e-4)
    assert mdr_stats["neg_elbo"] == pytest.approx(stats["neg_elbo"])  # the true bound, reported apart
    _, ha_stats = model.loss(batch, eps, ha_bits=100.0)
    assert ha_stats["kl_term"] == pytest.approx(3 * 100.0)  # d * lambda, nats per sentence
    with pytest.raises(ValueError, match="not both"):
        model.loss(batch, eps, free_bits=0.1, ha_bits=0.1)
    with pytest.raises(ValueError, match="bow_hidden"):
        model.loss(batch, eps, bow_weight=1.0)


def test_padding_and_batch_mates_do_not_change_a_sentences_likelihood():
    model = tiny_model()
    eps = np.random.default_rng(5).standard_normal((4, 3))
    together = model.log_likelihood(*_logits_and_targets(model, SENTENCES, eps))
    for i, s in enumerate(SENTENCES):
        alone = model.log_likelihood(*_logits_and_targets(model, [s], eps[i:i + 1]))
        assert alone.data[0] == pytest.approx(together.data[i], rel=1e-12)


def _logits_and_targets(model, seqs, eps):
    batch = pad_batch(seqs, mask_dtype=np.float64)
    mu, logvar = model.encode(batch["enc_in"], batch["lengths"])
    z = sample_gaussian(mu, logvar, eps)
    return model.decode(z, batch["dec_in"], batch["lengths"] + 1), batch["dec_target"], batch["mask"]


def test_batch_norm_statistics_are_saved_and_restored_with_the_parameters():
    model = tiny_model(posterior_norm="bn")
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    model.loss(batch, np.zeros((4, 3)), training=True)
    state = model.state_dict()
    assert {"posterior_bn.running_mean", "posterior_bn.running_var", "posterior_bn.shift"} <= set(state)
    assert not np.allclose(state["posterior_bn.running_mean"], 0)
    running = model.posterior_bn.running.mean.copy()
    model.loss(batch, np.zeros((4, 3)), training=False)  # evaluation leaves them alone
    np.testing.assert_array_equal(model.posterior_bn.running.mean, running)
    fresh = tiny_model(seed=9, posterior_norm="bn")
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.posterior_bn.running.mean, running)
    np.testing.assert_array_equal(fresh.encode_mean(SENTENCES), model.encode_mean(SENTENCES))
    with pytest.raises(ValueError, match="batch-norm statistics"):
        fresh.load_state_dict(tiny_model().state_dict())


# ------------------------------------------------------------------ generation
@pytest.mark.parametrize("z_to_every_step", [False, True])
def test_generation_steps_give_the_teacher_forced_logits(z_to_every_step):
    model = tiny_model(z_to_every_step=z_to_every_step)
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    z = Tensor(np.random.default_rng(6).standard_normal((4, 3)))
    teacher = model.decode(z, batch["dec_in"], batch["lengths"] + 1).data   # (B, T+1, V)
    h = model.initial_state(z)
    for t in range(batch["dec_in"].shape[1]):
        logits, h = model.decoder_step(z, batch["dec_in"][:, t], h)
        real = batch["mask"][:, t] > 0
        np.testing.assert_allclose(logits.data[real], teacher[real, t], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_generated_sequences_are_valid(method):
    model = tiny_model(dtype=np.float32)
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 3)) * 3
    for max_len in (1, 4, 30):
        out = model.generate(z, method=method, max_len=max_len, rng=rng, beam_width=3)
        assert len(out) == 6
        for ids in out:
            assert 1 <= len(ids) <= max_len
            assert ids[-1] == EOS_ID or len(ids) == max_len
            assert EOS_ID not in ids[:-1] and not {PAD_ID, SOS_ID} & set(ids)
            assert all(0 <= i < V for i in ids)


def test_beam_width_one_is_greedy_and_beam_finds_likelier_sentences():
    model = tiny_model(seed=3)
    z = np.random.default_rng(8).standard_normal((8, 3)) * 2
    greedy = model.generate(z, max_len=12)
    assert model.generate(z, method="beam", beam_width=1, max_len=12) == greedy
    assert model.generate(z, method="beam", beam_width=1, max_len=12, length_norm=False) == greedy
    wide = model.generate(z, method="beam", beam_width=6, max_len=12, length_norm=False)
    for i in range(8):  # without length normalisation the wider beam never does worse
        if greedy[i][-1] == EOS_ID and wide[i][-1] == EOS_ID:
            assert _log_prob(model, z[i], wide[i]) >= _log_prob(model, z[i], greedy[i]) - 1e-9


def _log_prob(model, z, ids):
    """log p(ids | z) under the decoder, ids ending in <eos>."""
    batch = pad_batch([ids[:-1]] if len(ids) > 1 else [[4]], mask_dtype=np.float64)
    if len(ids) == 1:  # just <eos>: score the first step directly
        logits, _ = model.decoder_step(Tensor(z[None]), np.array([SOS_ID]), model.initial_state(Tensor(z[None])))
        return float(logits.data[0, EOS_ID] - np.log(np.exp(logits.data[0]).sum()))
    logits = model.decode(Tensor(z[None]), batch["dec_in"], batch["lengths"] + 1)
    return float(model.log_likelihood(logits, batch["dec_target"], batch["mask"]).data[0])


def test_sampling_follows_the_temperature_and_reconstruct_interpolate_shapes():
    model = tiny_model(seed=4)
    n = 4000
    z = np.zeros((n, 3))
    logits, _ = model.decoder_step(Tensor(z[:1]), np.array([SOS_ID]), model.initial_state(Tensor(z[:1])))
    for T in (0.3, 1.0, 3.0):
        first = [ids[0] for ids in model.generate(z, "sample", max_len=1, temperature=T,
                                                  rng=np.random.default_rng(9))]
        freq = np.bincount(first, minlength=V) / n
        scaled = logits.data[0] / T
        scaled[[PAD_ID, SOS_ID]] = -np.inf  # never generated
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12), (T, freq, p)
    assert len(model.reconstruct(SENTENCES, max_len=5)) == 4
    assert len(model.interpolate(SENTENCES[0], SENTENCES[1], n_steps=4, method="beam", beam_width=2)) == 4
    assert len(model.sample(3, np.random.default_rng(0), method="sample")) == 3
    with pytest.raises(ValueError, match="needs an rng"):
        model.generate(z, "sample")
    with pytest.raises(ValueError, match="method must be"):
        model.generate(z, "nucleus")


# ------------------------------------------------------------------ the training script
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
    real_loss = train_text_vae.SentenceVAE.loss
    calls = {"n": 0}

    def loss_that_goes_nan(self, *args, **kwargs):
        objective, stats = real_loss(self, *args, **kwargs)
        if kwargs.get("training"):
            calls["n"] += 1
            if calls["n"] == 21:  # step 20, in epoch 2 (17 steps per epoch)
                stats = {**stats, "rec": float("nan")}
        return objective, stats
    monkeypatch.setattr(train_text_vae.SentenceVAE, "loss", loss_that_goes_nan)
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
