"""Generation from a SentenceVAE (minivae.decoding): the step-by-step decoder must reproduce the
teacher-forced logits; greedy, sampled and beam-searched sentences are valid; beam search of
width 1 is greedy and a wider beam finds likelier sentences; sampling follows the temperature.
"""
import numpy as np
import pytest

from minivae import Tensor
from minivae.decoding import decoder_step, generate, interpolate, reconstruct, sample
from minivae.sentence_vae import SentenceVAE
from minivae.text import EOS_ID, PAD_ID, SOS_ID, pad_batch

V = 12
SENTENCES = [[4, 5, 6, 7], [8, 9, 4], [10, 11, 5, 6, 9], [7, 4]]  # lengths 4, 3, 5, 2: padding everywhere


def tiny_model(seed=0, dtype=np.float64, **kwargs):
    sizes = dict(embedding=4, hidden=5, latent=3)
    return SentenceVAE(V, **{**sizes, **kwargs}, rng=np.random.default_rng(seed), dtype=dtype)


@pytest.mark.parametrize("z_to_every_step", [False, True])
def test_generation_steps_give_the_teacher_forced_logits(z_to_every_step):
    model = tiny_model(z_to_every_step=z_to_every_step)
    batch = pad_batch(SENTENCES, mask_dtype=np.float64)
    z = Tensor(np.random.default_rng(6).standard_normal((4, 3)))
    teacher = model.decode(z, batch["dec_in"], batch["lengths"] + 1).data   # (B, T+1, V)
    h = model.initial_state(z)
    for t in range(batch["dec_in"].shape[1]):
        logits, h = decoder_step(model, z, batch["dec_in"][:, t], h)
        real = batch["mask"][:, t] > 0
        np.testing.assert_allclose(logits.data[real], teacher[real, t], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_generated_sequences_are_valid(method):
    model = tiny_model(dtype=np.float32)
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 3)) * 3
    for max_len in (1, 4, 30):
        out = generate(model, z, method=method, max_len=max_len, rng=rng, beam_width=3)
        assert len(out) == 6
        for ids in out:
            assert 1 <= len(ids) <= max_len
            assert ids[-1] == EOS_ID or len(ids) == max_len
            assert EOS_ID not in ids[:-1] and not {PAD_ID, SOS_ID} & set(ids)
            assert all(0 <= i < V for i in ids)


def test_beam_width_one_is_greedy_and_beam_finds_likelier_sentences():
    model = tiny_model(seed=3)
    z = np.random.default_rng(8).standard_normal((8, 3)) * 2
    greedy = generate(model, z, max_len=12)
    assert generate(model, z, method="beam", beam_width=1, max_len=12) == greedy
    assert generate(model, z, method="beam", beam_width=1, max_len=12, length_norm=False) == greedy
    wide = generate(model, z, method="beam", beam_width=6, max_len=12, length_norm=False)
    for i in range(8):  # without length normalisation the wider beam never does worse
        if greedy[i][-1] == EOS_ID and wide[i][-1] == EOS_ID:
            assert _log_prob(model, z[i], wide[i]) >= _log_prob(model, z[i], greedy[i]) - 1e-9


def _log_prob(model, z, ids):
    """log p(ids | z) under the decoder, ids ending in <eos>."""
    batch = pad_batch([ids[:-1]] if len(ids) > 1 else [[4]], mask_dtype=np.float64)
    if len(ids) == 1:  # just <eos>: score the first step directly
        logits, _ = decoder_step(model, Tensor(z[None]), np.array([SOS_ID]), model.initial_state(Tensor(z[None])))
        return float(logits.data[0, EOS_ID] - np.log(np.exp(logits.data[0]).sum()))
    logits = model.decode(Tensor(z[None]), batch["dec_in"], batch["lengths"] + 1)
    return float(model.log_likelihood(logits, batch["dec_target"], batch["mask"]).data[0])


def test_sampling_follows_the_temperature_and_reconstruct_interpolate_shapes():
    model = tiny_model(seed=4)
    n = 4000
    z = np.zeros((n, 3))
    logits, _ = decoder_step(model, Tensor(z[:1]), np.array([SOS_ID]), model.initial_state(Tensor(z[:1])))
    for T in (0.3, 1.0, 3.0):
        first = [ids[0] for ids in generate(model, z, "sample", max_len=1, temperature=T,
                                                  rng=np.random.default_rng(9))]
        freq = np.bincount(first, minlength=V) / n
        scaled = logits.data[0] / T
        scaled[[PAD_ID, SOS_ID]] = -np.inf  # never generated
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12), (T, freq, p)
    assert len(reconstruct(model, SENTENCES, max_len=5)) == 4
    assert len(interpolate(model, SENTENCES[0], SENTENCES[1], n_steps=4, method="beam", beam_width=2)) == 4
    assert len(sample(model, 3, np.random.default_rng(0), method="sample")) == 3
    with pytest.raises(ValueError, match="needs an rng"):
        generate(model, z, "sample")
    with pytest.raises(ValueError, match="method must be"):
        generate(model, z, "nucleus")
