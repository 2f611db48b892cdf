"""The sentence VAE (sentence_vae.SentenceVAE): a gradient check of the whole objective with every
remedy on at once, its stats, the masks and its state. Generation is tested in
tests/test_decoding.py, the training script in tests/test_train_text.py.
"""
import numpy as np
import pytest

from minivae.collapse import word_dropout
from minivae.decoding import encode_mean
from minivae.distributions import sample_gaussian
from minivae.gradcheck import GradientCheckError, check_grads
from minivae.layers import dropout_mask
from minivae.sentence_vae import SentenceVAE
from minivae.text import PAD_ID, SOS_ID, UNK_ID, pad_batch


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
    np.testing.assert_array_equal(encode_mean(fresh, SENTENCES), encode_mean(model, SENTENCES))
    with pytest.raises(ValueError, match="batch-norm statistics"):
        fresh.load_state_dict(tiny_model().state_dict())
