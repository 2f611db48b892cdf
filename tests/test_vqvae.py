"""VQ-VAE: gradients of its loss and of the prior, the straight-through gradient (identity onto
the encoder output plus the commitment term), the EMA codebook update by hand, dead-code
restarts and when they happen, perplexity and code usage per position, and the GRU prior as a normalised distribution over code sequences."""
import itertools

import numpy as np
import pytest

import minivae.ops as ops
from minivae import vqvae
from minivae.engine import Tensor
from test_autoencoders import check_loss_grads


def small(ema=False, commitment=0.25):
    rng = np.random.default_rng(0)
    model = vqvae.VQVAE(n_in=6, hidden=(5,), n_latents=3, code_dim=2, n_codes=4, activation="tanh",
                        commitment=commitment, ema=ema, rng=rng, dtype=np.float64)
    model.codebook.E.data[...] = rng.standard_normal((4, 2))  # spread out: no near-ties
    return model, rng.uniform(0, 1, (5, 6))


@pytest.mark.parametrize("ema", [False, True])
def test_decoder_gradients_finite_differences(ema):
    # only the decoder's: below the quantiser the gradient is the straight-through estimate,
    # not the derivative of the loss (which is flat in z_e between code switches); the next
    # tests check that part against its definition instead
    model, _ = small(ema)
    codes = np.array([[0, 3, 1], [2, 2, 0]])
    check_loss_grads(model, lambda m: ops.mean(m.decode_codes(codes)), prefix="decoder.")
    model, x = small(ema)
    check_loss_grads(model, lambda m: m.loss(x)[0], prefix="decoder.")


def test_nearest_is_the_brute_force_argmin():
    cb = vqvae.Codebook(5, 3, np.random.default_rng(1), np.float64)
    z = np.random.default_rng(2).standard_normal((4, 2, 3))
    brute = np.argmin(((z[:, :, None, :] - cb.E.data) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(cb.nearest(z), brute)


def test_straight_through_gradient_is_identity_plus_commitment():
    model, x = small(commitment=0.7)
    B = len(x)
    z_e = Tensor(model.encode(Tensor(x)).data, requires_grad=True)  # the encoder output as a leaf
    model.encode = lambda x: z_e
    model.loss(x)[0].backward()
    idx = model.codebook.nearest(z_e.data)
    z_q = model.codebook.E.data[idx]
    # the decoder's gradient at z_q, computed on its own
    z_in = Tensor(z_q.reshape(B, -1), requires_grad=True)
    ops.mean(model.reconstruction_error(Tensor(x), model.decode(z_in))).backward()
    expected = z_in.grad.reshape(z_q.shape) + 0.7 * 2 * (z_e.data - z_q) / B
    np.testing.assert_allclose(z_e.grad, expected, rtol=1e-12, atol=1e-14)
    # the codebook gets only the codebook term's gradient, scattered into the codes used
    grad_E = np.zeros_like(model.codebook.E.data)
    np.add.at(grad_E, idx, 2 * (z_q - z_e.data) / B)
    np.testing.assert_allclose(model.codebook.E.grad, grad_E, rtol=1e-12, atol=1e-14)


def test_ema_update_against_a_hand_computation():
    cb = vqvae.Codebook(3, 2, np.random.default_rng(0), np.float64)
    cb.E.data[...] = [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]
    ema = vqvae.EMACodebook(cb, decay=0.5, eps=0.0)
    z_e = np.array([[1.0, 2.0], [3.0, 0.0], [4.0, 6.0]])
    ema.step(z_e, np.array([0, 0, 2]))
    # N = 0.5*[1, 1, 1] + 0.5*[2, 0, 1] = [1.5, 0.5, 1.0]
    # m_0 = 0.5*[0, 0] + 0.5*([1, 2] + [3, 0]) = [2, 1]; m_1 = 0.5*[1, 1]; m_2 = 0.5*[5, 5] + 0.5*[4, 6]
    np.testing.assert_allclose(ema.counts, [1.5, 0.5, 1.0])
    np.testing.assert_allclose(cb.E.data, [[2 / 1.5, 1 / 1.5], [1.0, 1.0], [4.5, 5.5]])
    # with Laplace smoothing: N~ = (N + eps) / (3 + 3 eps) * 3
    ema2 = vqvae.EMACodebook(cb, decay=0.5, eps=0.1)
    before = cb.E.data.copy()
    ema2.step(z_e, np.array([1, 1, 1]))
    counts = np.array([0.5, 2.0, 0.5])
    smoothed = (counts + 0.1) / (3 + 0.3) * 3
    sums = 0.5 * before + 0.5 * np.array([[0, 0], [8, 8], [0, 0]])
    np.testing.assert_allclose(cb.E.data, sums / smoothed[:, None])
    state = ema2.state_dict()
    ema2.step(z_e, np.array([2, 2, 2]))
    ema2.load_state_dict(state)
    np.testing.assert_allclose(ema2.counts, counts)


def test_restart_dead_codes_moves_unused_codes_onto_encoder_outputs():
    model, _ = small(ema=True)
    ema = vqvae.EMACodebook(model.codebook)
    z_e = np.random.default_rng(3).standard_normal((5, 3, 2))
    alive = model.codebook.E.data[[0, 2]].copy()
    assert vqvae.restart_dead_codes(model.codebook, np.array([4, 0, 1, 0]), z_e, np.random.default_rng(0), ema) == 2
    rows = {tuple(r) for r in z_e.reshape(-1, 2)}
    assert tuple(model.codebook.E.data[1]) in rows and tuple(model.codebook.E.data[3]) in rows
    np.testing.assert_array_equal(model.codebook.E.data[[0, 2]], alive)
    np.testing.assert_array_equal(ema.sums[[1, 3]], model.codebook.E.data[[1, 3]])
    assert vqvae.restart_dead_codes(model.codebook, np.ones(4), z_e, np.random.default_rng(0)) == 0


def test_perplexity():
    assert vqvae.perplexity(np.arange(8), 8) == pytest.approx(8)
    assert vqvae.perplexity(np.zeros(10, int), 8) == pytest.approx(1)
    assert vqvae.perplexity(np.array([0, 0, 1, 1]), 8) == pytest.approx(2)


def test_restarts_happen_in_short_runs_and_never_in_an_epochs_last_interval():
    due = lambda n_epochs, every, per_epoch: [s + 1 for s in range(n_epochs * per_epoch)  # noqa: E731
                                              if vqvae.restart_due(s, every, per_epoch)]
    assert due(1, 50, 469)[:3] == [50, 100, 150] and due(1, 50, 469)[-1] == 400  # long epochs: every 50
    assert due(2, 50, 16) == [4, 8, 12, 20, 24, 28]  # two 16-step epochs: every 4 steps, not 50
    assert due(1, 3, 16) == [3, 6, 9, 12]  # a shorter interval asked for is kept
    assert due(3, 0, 16) == [] and due(2, 50, 1) == []  # never: asked for, or no step to train them after
    assert due(1, 50, 5) == [1, 2, 3, 4]


def test_code_usage_per_position_shows_a_collapse_that_the_pooled_perplexity_hides():
    collapsed = np.tile([3, 7, 1, 0], (100, 1))  # every image has the same code; 4 codes equally used
    usage = vqvae.code_usage(collapsed, 8)
    assert usage["perplexity"] == pytest.approx(4) and usage["codes_used"] == 4
    assert usage["codes_used_per_position"] == [1, 1, 1, 1] and usage["distinct_sequences"] == 1
    assert usage["perplexity_per_position"] == pytest.approx([1, 1, 1, 1])
    varied = np.array([[0, 1], [2, 1], [0, 3], [2, 1]])
    usage = vqvae.code_usage(varied, 4)
    assert usage["codes_used_per_position"] == [2, 2] and usage["distinct_sequences"] == 3
    assert usage["perplexity_per_position"] == pytest.approx([2, np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))])


def _prior():
    return vqvae.CodePrior(3, 2, embed=4, hidden=5, rng=np.random.default_rng(0), dtype=np.float64)


def test_prior_is_a_normalised_distribution_over_sequences():
    prior = _prior()
    all_codes = np.array(list(itertools.product(range(3), repeat=2)))  # all 9 sequences
    log_p = prior.log_prob(all_codes).data
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-12)
    samples = prior.sample(20000, np.random.default_rng(1))
    freq = np.array([np.mean(np.all(samples == c, axis=1)) for c in all_codes])
    np.testing.assert_allclose(freq, np.exp(log_p), atol=0.015)  # sampling follows the same p


def test_prior_gradients_finite_differences():
    prior = _prior()
    codes = np.array([[0, 2], [1, 1], [2, 0]])
    check_loss_grads(prior, lambda m: m.loss(codes)[0])


def test_straight_through_op_has_the_forward_value_of_y_and_the_gradient_of_x():
    x, y = np.array([1.0, 2.0]), np.array([5.0, -1.0])
    xt = Tensor(x, requires_grad=True)
    out = ops.straight_through(xt, Tensor(y))
    np.testing.assert_array_equal(out.data, y)
    (out * np.array([3.0, -2.0])).sum().backward()
    np.testing.assert_array_equal(xt.grad, [3.0, -2.0])  # as if out were x itself
