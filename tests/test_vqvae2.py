"""VQ-VAE-2: the patch encoder is a stride-7 convolution; every new piece's gradients against
finite differences (where the function is differentiable) and against HIPS autograd on the same
computation written in autograd.numpy (the straight-through loss included); the top codes reach
the bottom quantiser and the bottom prior; the bottom prior is a normalised distribution for each
top; ancestral sampling's shapes; checkpoints round-trip through load_model and the run resumes
exactly."""
import json
import sys
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd.extend import defvjp, primitive
from autograd.scipy.special import logsumexp

import minivae.ops as ops
from conftest import reference  # a worked GRU, brought by the grader
from minivae import flags, vqvae2
from minivae.run import save_state
from minivae.engine import Tensor, no_grad
from minivae.saved import load_model
from test_autoencoders import check_loss_grads

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the scripts import each other
import sample  # noqa: E402
import train_autoencoder  # noqa: E402
import vqvae2_measure  # noqa: E402

DEFAULTS, FLAT_L = (512, 16, 2, 4, 0.0), 11  # K_t, K_b, prior epochs, top codes, top reconstruction; 100 bits
D, F, K_T, K_B, L_T = 3, 2, 5, 6, 2


def small(ema=True, seed=0, top_reconstruction=0.0, decoder="dense"):
    rng = np.random.default_rng(seed)
    model = vqvae2.VQVAE2(hidden=(5,), n_top=L_T, code_dim=D, n_codes_top=K_T, n_codes_bottom=K_B, patch_hidden=4,
                          patch_features=F, top_hidden=6, prior_hidden=4, commitment=0.7, ema=ema,
                          top_reconstruction=top_reconstruction, decoder=decoder, rng=rng, dtype=np.float64)
    model.codebook_top.E.data[...] = rng.standard_normal((K_T, D))  # spread out: no near-ties
    model.codebook_bottom.E.data[...] = rng.standard_normal((K_B, D))
    return model, rng.uniform(0, 1, (3, 784))


# ------------------------------------------------------------------ the same computations in autograd.numpy
@primitive
def stop_gradient(x):
    return x


defvjp(stop_gradient, lambda ans, x: lambda g: anp.zeros_like(g))


def _mlp(p, prefix, x, n_layers):
    for i in range(n_layers):
        x = x @ p[f"{prefix}.layers.{i}.W"] + p[f"{prefix}.layers.{i}.b"]
        x = anp.maximum(x, 0.0) if i < n_layers - 1 else x
    return x


def loss_ref(p, x, top, bottom, beta, ema, top_reconstruction, decoder):
    """VQVAE2.loss's objective with the codes held at the ones the model chose."""
    B = len(x)
    h = _mlp(p, "enc_b", vqvae2.patches(x), 2)  # (B, 16, F)
    z_e_top = anp.reshape(_mlp(p, "enc_t", anp.reshape(h, (B, -1)), 2), (B, L_T, D))
    z_q_top = p["codebook_top.E"][top]
    z_top = z_e_top + stop_gradient(z_q_top - z_e_top)  # the straight-through estimator
    c = anp.reshape(_mlp(p, "dec_t", anp.reshape(z_top, (B, -1)), 2), (B, 16, F))
    z_e_bottom = anp.concatenate([h, c], axis=2) @ p["pre_quantise.W"] + p["pre_quantise.b"]
    z_q_bottom = p["codebook_bottom.E"][bottom]
    z_bottom = z_e_bottom + stop_gradient(z_q_bottom - z_e_bottom)
    if decoder == "patch":  # each patch from its bottom code and c, then the patches back in their places
        patch_logits = anp.reshape(_mlp(p, "decoder", anp.concatenate([z_bottom, c], axis=2), 2), (B, 4, 4, 7, 7))
        logits = anp.reshape(anp.transpose(patch_logits, (0, 1, 3, 2, 4)), (B, 784))
    else:
        logits = _mlp(p, "decoder", anp.concatenate([anp.reshape(z_bottom, (B, -1)), anp.reshape(z_top, (B, -1))], 1), 2)
    rec = anp.mean(anp.sum(anp.logaddexp(0.0, logits) - x * logits, axis=1))  # BCE from logits
    sq = lambda a, b: anp.mean(anp.sum((a - b) ** 2, axis=(1, 2)))  # noqa: E731
    levels = [(z_e_top, z_q_top), (z_e_bottom, z_q_bottom)]
    objective = rec + beta * sum(sq(z_e, stop_gradient(z_q)) for z_e, z_q in levels)
    objective = objective + top_reconstruction * sq(c, stop_gradient(h))  # the top regresses the patch features
    return objective if ema else objective + sum(sq(stop_gradient(z_e), z_q) for z_e, z_q in levels)


def bottom_prior_ref(p, bottom, top):
    """BottomPrior.log_prob: the GRU equations of test_layers with the top's context at every step."""
    B, L = bottom.shape
    inputs = np.concatenate([np.full((B, 1), K_B), bottom[:, :-1]], axis=1)
    ctx = anp.tanh(anp.reshape(p["top_embedding.W"][top], (B, -1)) @ p["context.W"] + p["context.b"])
    x = anp.concatenate([p["prior.embedding.W"][inputs], anp.repeat(ctx[:, None, :], L, axis=1)], axis=2)
    H = p["prior.gru.cell.W_h"].shape[0]
    out, _ = reference("_gru_direction")(p, x, np.full(B, L), np.zeros((B, H)), "prior.gru.cell.", False)
    logits = out @ p["prior.out.W"] + p["prior.out.b"]
    log_p = logits - logsumexp(logits, axis=2, keepdims=True)
    return anp.sum(log_p[np.arange(B)[:, None], np.arange(L)[None, :], bottom], axis=1)


def against_autograd(module, value, reference, *args):
    """The module's value and every parameter's gradient of sum(u * value) against autograd's."""
    names, arrays = zip(*[(n, p.data.copy()) for n, p in module.named_parameters()])
    out = value()
    np.testing.assert_allclose(out.data, reference(dict(zip(names, arrays)), *args), rtol=1e-10, atol=1e-12)
    u = np.random.default_rng(5).standard_normal(out.shape)
    module.zero_grad()
    value().backward(u)
    scalar = lambda *a: anp.sum(u * reference(dict(zip(names, a)), *args))  # noqa: E731
    grads = autograd.grad(scalar, list(range(len(names))))(*arrays)
    for (name, p), g in zip(module.named_parameters(), grads):
        np.testing.assert_allclose(np.zeros_like(g) if p.grad is None else p.grad, g, rtol=1e-9, atol=1e-12,
                                   err_msg=name)


# ------------------------------------------------------------------ shapes
def test_patches_are_the_7x7_blocks_and_the_patch_encoder_a_stride_7_convolution():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 784))
    p = vqvae2.patches(x)
    assert p.shape == (2, 16, 49)
    np.testing.assert_array_equal(p[1, 4 * 2 + 3], x[1].reshape(28, 28)[14:21, 21:28].ravel())  # row 2, column 3
    model, _ = small()
    layer = model.enc_b.layers[0]
    kernels = layer.W.data.T.reshape(-1, 7, 7)  # (channels, 7, 7)
    image = x[0].reshape(28, 28)
    conv = np.array([[[np.sum(image[7 * r:7 * r + 7, 7 * c:7 * c + 7] * k) for c in range(4)] for r in range(4)]
                     for k in kernels]) + layer.b.data[:, None, None]  # stride 7, no padding
    np.testing.assert_allclose(layer(Tensor(p[:1])).data[0], conv.reshape(len(kernels), 16).T, rtol=1e-12)


def test_loss_shapes_and_codes():
    model, x = small()
    objective, stats = model.loss(x)
    assert objective.shape == () and stats["codes_top"].shape == (3, L_T) and stats["codes_bottom"].shape == (3, 16)
    assert stats["z_e_top"].shape == (3, L_T, D) and stats["z_e_bottom"].shape == (3, 16, D)
    assert model.decode_codes(stats["codes_top"], stats["codes_bottom"]).shape == (3, 784)
    top, bottom = model.codes(x, batch_size=2)
    np.testing.assert_array_equal(top, stats["codes_top"])
    np.testing.assert_array_equal(bottom, stats["codes_bottom"])


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("ema, top_reconstruction, decoder", [(True, 0.0, "dense"), (False, 0.0, "dense"),
                                                               (True, 0.6, "dense"), (True, 0.0, "patch"),
                                                               (False, 0.6, "patch")])
def test_loss_matches_autograd_with_the_straight_through_estimator(ema, top_reconstruction, decoder):
    model, x = small(ema, top_reconstruction=top_reconstruction, decoder=decoder)
    _, stats = model.loss(x)
    against_autograd(model, lambda: model.loss(x)[0], loss_ref, x, stats["codes_top"], stats["codes_bottom"],
                     0.7, ema, top_reconstruction, decoder)


def test_the_patch_decoder_draws_each_bottom_code_in_its_own_patch_only():
    model, _ = small(decoder="patch")
    top, bottom = np.array([[0, 4]]), np.arange(16)[None] % K_B
    changed = bottom.copy()
    changed[0, 6] = (bottom[0, 6] + 1) % K_B  # row 1, column 2 of the 4 x 4 grid
    with no_grad():
        diff = (model.decode_codes(top, changed).data - model.decode_codes(top, bottom).data).reshape(28, 28)
    inside = np.zeros((28, 28), bool)
    inside[7:14, 14:21] = True
    assert np.all(diff[~inside] == 0) and np.all(diff[inside] != 0)
    with no_grad():  # a new top code changes every patch
        diff = model.decode_codes((top + 1) % K_T, bottom).data - model.decode_codes(top, bottom).data
    assert np.all(vqvae2.patches(np.abs(diff)).max(axis=2) > 0)
    np.testing.assert_array_equal(vqvae2.unpatch(vqvae2.patches(np.arange(784.0)[None])), np.arange(784.0)[None])


def test_top_reconstruction_adds_its_weighted_error_and_holds_the_patch_features_fixed():
    (plain, x), (aux, _) = small(), small(top_reconstruction=2.5)
    for model in (plain, aux):  # the top's input no longer depends on h: h reaches the term only as its target
        model.enc_t.layers[0].W.data[...] = 0.0
    objective, stats = plain.loss(x)
    assert float(aux.loss(x)[0].data) == pytest.approx(float(objective.data) + 2.5 * stats["top_rec"], rel=1e-12)
    objective.backward()
    aux.loss(x)[0].backward()
    grads = {name: [dict(m.named_parameters())[name].grad for m in (plain, aux)]
             for name in ("enc_b.layers.0.W", "enc_t.layers.0.W", "dec_t.layers.1.W")}
    np.testing.assert_allclose(*grads["enc_b.layers.0.W"], rtol=1e-12)  # the target h is held fixed
    for name in ("enc_t.layers.0.W", "dec_t.layers.1.W"):
        assert not np.allclose(*grads[name]), name


@pytest.mark.parametrize("prefix, decoder", [("decoder.", "dense"), ("codebook_", "dense"), ("decoder.", "patch"),
                                             ("codebook_", "patch"), ("dec_t.", "patch")])
def test_decoding_codes_finite_differences(prefix, decoder):
    # below the quantisers the gradient is the straight-through estimate, not the loss's
    # derivative, so finite differences check the decoder and the codebook lookups
    model, _ = small(decoder=decoder)
    top, bottom = np.array([[0, 4], [2, 2]]), np.arange(32).reshape(2, 16) % K_B
    check_loss_grads(model, lambda m: ops.mean(ops.square(m.decode_codes(top, bottom))), prefix=prefix)


def test_loss_decoder_gradients_finite_differences():
    model, x = small()
    check_loss_grads(model, lambda m: m.loss(x)[0], prefix="decoder.")


def _bottom_prior(seed=0):
    return vqvae2.BottomPrior(K_B, K_T, L_T, embed=3, hidden=4, rng=np.random.default_rng(seed), dtype=np.float64)


def test_bottom_prior_finite_differences_and_autograd():
    prior = _bottom_prior()
    rng = np.random.default_rng(1)
    bottom, top = rng.integers(0, K_B, (3, 16)), rng.integers(0, K_T, (3, L_T))
    check_loss_grads(prior, lambda m: m.loss(bottom, top)[0])
    prior = _bottom_prior()  # check_loss_grads left its own tensors in the parameters' places
    against_autograd(prior, lambda: prior.log_prob(bottom, top), bottom_prior_ref, bottom, top)


def test_conditional_code_prior_gradient_reaches_its_context():
    from minivae.vqvae import CodePrior
    prior = CodePrior(3, 4, embed=2, hidden=3, rng=np.random.default_rng(0), dtype=np.float64, n_context=2)
    idx = np.array([[0, 2, 1, 1], [2, 0, 0, 1]])
    check_loss_grads(prior, lambda m, c: ops.sum(m.log_prob(idx, c)), np.random.default_rng(1).standard_normal((2, 2)))


# ------------------------------------------------------------------ the top conditions the bottom
def test_the_top_codes_reach_the_bottom_quantiser_even_without_the_decoder():
    model, x = small()
    model.decoder.layers[0].W.data[16 * D:] = 0.0  # the decoder no longer reads the top codes
    model.loss(x)[0].backward()
    assert np.abs(model.enc_t.layers[0].W.grad).sum() > 0  # only through dec_t -> the bottom's input
    z_before = model.encode(x)[1][0].data
    model.codebook_top.E.data[...] += 1.0
    assert not np.allclose(model.encode(x)[1][0].data, z_before)


def test_bottom_prior_is_a_normalised_distribution_for_each_top_and_depends_on_it():
    prior = vqvae2.BottomPrior(2, K_T, L_T, embed=3, hidden=4, rng=np.random.default_rng(0), dtype=np.float64)
    prior.top_embedding.W.data *= 3  # tops far apart
    everything = (np.arange(2 ** 16)[:, None] >> np.arange(16)) & 1  # all 65,536 bottom sequences
    p = []
    with no_grad():
        for top in ([0, 1], [4, 2]):
            log_p = prior.log_prob(everything, np.tile(top, (len(everything), 1))).data
            assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-10)
            p.append(np.exp(log_p))
    assert np.abs(p[0] - p[1]).sum() > 0.05  # the top changes the distribution over bottoms


# ------------------------------------------------------------------ sampling, checkpoints, the run
def test_ancestral_sampling_shapes_ranges_and_determinism():
    model, _ = small()
    top, bottom = model.sample_codes(7, np.random.default_rng(3))
    assert top.shape == (7, L_T) and bottom.shape == (7, 16)
    assert top.min() >= 0 and top.max() < K_T and bottom.min() >= 0 and bottom.max() < K_B
    images = model.sample(7, np.random.default_rng(3))
    assert images.shape == (7, 784) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, model.sample(7, np.random.default_rng(3)))


TINY = ["--model", "vqvae2", "--no-download", "--limit", "300", "--batch-size", "64", "--hidden", "16",
        "--n-codes", "16", "--n-codes-bottom", "4", "--no-progress", "--restart-every", "3"]


def test_vqvae2_defaults_and_bad_flags(capsys):
    args = train_autoencoder.parse_args(["--model", "vqvae2"])
    assert (args.n_codes, args.n_codes_bottom, args.prior_epochs, args.latent, args.top_reconstruction) == DEFAULTS
    assert train_autoencoder.parse_args(["--model", "vqvae"]).n_codes == 64
    assert vqvae2_measure.flat_shape(args) == (FLAT_L, 512)  # 4 x 9 + 16 x log2 K_b bits, in codes of 9 bits
    for bad, name in [(["--n-codes", "0"], "--n-codes"), (["--prior-epochs", "-1"], "--prior-epochs"),
                      (["--n-codes-bottom", "0"], "--n-codes-bottom"), (["--top-reconstruction", "-1"],
                                                                         "--top-reconstruction")]:
        with pytest.raises(SystemExit):
            train_autoencoder.parse_args(["--model", "vqvae2", *bad])
        assert name in capsys.readouterr().err


def test_checkpoint_round_trips_through_load_model(tmp_path):
    args = train_autoencoder.parse_args(TINY + ["--out", str(tmp_path)])
    model = vqvae2.make_model(flags.run_config(args), np.random.default_rng(0))
    from minivae.optim import Adam
    save_state(str(tmp_path / "checkpoint.npz"), model, Adam(model.parameters()), np.random.default_rng(0),
              config=flags.run_config(args), step=0, epoch=0, history=[])
    loaded = load_model(str(tmp_path / "checkpoint.npz"))
    assert isinstance(loaded, vqvae2.VQVAE2) and (loaded.n_codes_top, loaded.n_codes_bottom) == (16, 4) and loaded.n_top == 4
    for (name, p), (name2, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert name == name2
        np.testing.assert_array_equal(p.data, q.data)
    x = np.random.default_rng(1).uniform(0, 1, (4, 784)).astype(np.float32)
    np.testing.assert_array_equal(loaded.reconstruct(x), model.reconstruct(x))


def test_both_stages_resume_exactly_and_the_checkpoint_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(vqvae2_measure, "measure", lambda *args: {})  # the stages only; measure() has its own test
    flags = TINY + ["--no-plots", "--prior-epochs", "2"]
    straight = train_autoencoder.main(flags + ["--epochs", "2", "--out", str(tmp_path / "a")])
    train_autoencoder.main(flags + ["--epochs", "1", "--prior-epochs", "0", "--out", str(tmp_path / "b")])
    train_autoencoder.main(flags + ["--epochs", "2", "--prior-epochs", "1", "--out", str(tmp_path / "b"),
                                    "--resume", str(tmp_path / "b" / "checkpoint.npz")])
    resumed = train_autoencoder.main(flags + ["--epochs", "2", "--out", str(tmp_path / "b"),
                                              "--resume", str(tmp_path / "b" / "checkpoint.npz")])
    assert resumed["test_rec"] == straight["test_rec"]
    assert len(resumed["prior_epochs"]) == len(straight["prior_epochs"]) == 2
    for ours, theirs in zip(resumed["prior_epochs"], straight["prior_epochs"]):  # every NLL, not the timings
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}
    model = load_model(str(tmp_path / "b" / "checkpoint.npz"))
    assert model.sample(3, np.random.default_rng(0)).shape == (3, 784)
    with pytest.raises(SystemExit, match="different"):
        train_autoencoder.main(flags + ["--epochs", "3", "--hidden", "24", "--out", str(tmp_path / "b"),
                                        "--resume", str(tmp_path / "b" / "checkpoint.npz")])


def test_the_run_writes_every_measurement_and_picture_and_sample_py_draws_from_it(tmp_path, monkeypatch):
    monkeypatch.setattr(vqvae2_measure, "CLASSIFIER_EPOCHS", 1)
    monkeypatch.setattr(vqvae2_measure, "CONSISTENCY_IMAGES", 20)
    metrics = train_autoencoder.main(TINY + ["--epochs", "1", "--prior-epochs", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["rec"] == pytest.approx(metrics["rec"])
    assert set(saved["rec"]) == {"two_level", "bottom_all_most_frequent", "top_all_most_frequent", "flat_vqvae"}
    assert saved["bits_per_image"] == saved["flat_bits_per_image"] == 48.0  # 4 x 4 + 16 x 2 bits; 12 flat codes of 4
    assert set(saved["samples_100"]) == {"vqvae2", "flat_vqvae", "uniform_codes"}
    for hist in saved["samples_100"].values():
        assert sum(hist["class_counts"]) == 100 and 0 <= hist["entropy_bits"] <= np.log2(10)
    for value in saved["class_consistency"].values():
        assert 0 <= value <= 20
    for name in ("reconstructions", "same_top", "samples", "samples_flat", "samples_uniform"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
    for name in ("classifier.npz", "flat_vqvae.npz", "checkpoint.npz"):
        assert (tmp_path / name).exists()
    written = sample.main([str(tmp_path / "checkpoint.npz"), "--out", str(tmp_path / "samples")])
    assert written == ["reconstructions.png", "same_top.png", "samples.png"]
    for name in written:
        assert (tmp_path / "samples" / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_vqvae2_learns_on_the_bundled_digits(tmp_path):
    """8 epochs (504 steps) on the 8,000 bundled digits: the two-level model reconstructs far better than
    its top codes alone, each prior beats its uniform and unigram baselines on held-out codes, and
    the class lives in the top: decodes that keep an image's top codes and redraw the bottom keep
    its class far more often than decodes that keep the bottom codes and redraw the top."""
    metrics = train_autoencoder.main(["--model", "vqvae2", "--no-download", "--epochs", "8", "--no-progress",
                                      "--no-plots", "--out", str(tmp_path)])
    rec, base, test = metrics["rec"], metrics["baselines_bits"], metrics["prior_nll_bits"]["test"]
    assert rec["two_level"] < rec["bottom_all_most_frequent"] - 20
    assert test["top_prior"] < min(base["top_uniform"], base["top_unigram"])
    assert test["bottom_prior"] < min(base["bottom_uniform"], base["bottom_unigram"])
    assert test["bottom_prior"] < test["bottom_prior_alone"]  # the top tells the bottom something
    kept = metrics["class_consistency"]  # the top codes carry the class, the bottom codes little of it
    assert kept["keep_top_bottom_from_p_bottom_given_top"] > 0.5
    assert kept["keep_top_bottom_from_p_bottom_given_top"] > kept["keep_bottom_top_from_p_top"] + 0.25
