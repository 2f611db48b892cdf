"""fused.softmax_cross_entropy against its composed form, in the places the sentence VAE uses it.

The op-table rows (tests/test_ops.py, test_vjps.py) check the primitive alone against finite
differences and HIPS autograd; these tests check that it equals the composed reference
(ops.logsumexp minus the picked logit) in values and gradients where it is used: masked pad
tokens, a broadcast input, extreme logits, float32; and that the comparison would catch a wrong VJP.
"""
import numpy as np
import pytest

from minivae import Tensor, fused, text
from minivae.gradcheck import check_vjp
from minivae.sentence_vae import SentenceVAE


def _both(logits, target, seed, weight=None):
    """Values and logits-gradients of sum(weight * nll) by the fused primitive and by the composed form."""
    out = []
    for fn in (lambda x: fused.softmax_cross_entropy(x, target=target), lambda x: fused.softmax_cross_entropy_composed(x, target)):
        x = Tensor(logits, requires_grad=True)
        nll = fn(x)
        w = np.random.default_rng(seed).standard_normal(nll.shape).astype(logits.dtype) if weight is None else weight
        (nll * w).sum().backward()
        out.append((nll.data, x.grad))
    return out


def test_fused_equals_composed_with_pad_tokens_masked():
    """A padded batch (B, T+1, V) as the sentence VAE sees it: pad targets get exactly zero gradient."""
    rng = np.random.default_rng(0)
    batch = text.pad_batch([[5, 6, 7, 8], [9], [4, 4, 6]])
    logits = rng.standard_normal((3, 5, 11)) * 3
    (v1, g1), (v2, g2) = _both(logits, batch["dec_target"], 0, weight=batch["mask"].astype(np.float64))
    np.testing.assert_allclose(v1, v2, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-14)
    pad = batch["mask"] == 0
    assert pad.any() and not g1[pad].any() and not g2[pad].any()
    # each real row's gradient is softmax - onehot: it sums to zero
    np.testing.assert_allclose(g1[~pad].sum(axis=-1), 0, atol=1e-13)


def test_sentence_vae_likelihood_is_the_masked_sum_of_the_composed_form():
    model = SentenceVAE(12, embedding=4, hidden=5, latent=3, rng=np.random.default_rng(1), dtype=np.float64)
    batch = text.pad_batch([[5, 6, 7], [9], [4, 11]], mask_dtype=np.float64)
    logits = Tensor(np.random.default_rng(2).standard_normal((3, 4, 12)))
    expected = -(fused.softmax_cross_entropy_composed(logits, batch["dec_target"]).data * batch["mask"]).sum(axis=1)
    got = model.log_likelihood(logits, batch["dec_target"], batch["mask"]).data
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_fused_equals_composed_on_a_broadcast_input_and_on_extreme_logits():
    """logits = h @ W + b (b broadcast over rows), one-word vocabulary edge, and logits of +-1000."""
    rng = np.random.default_rng(3)
    h, W, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 7)), rng.standard_normal(7)
    target = rng.integers(0, 7, 6)
    grads = []
    for fn in (lambda x: fused.softmax_cross_entropy(x, target=target), lambda x: fused.softmax_cross_entropy_composed(x, target)):
        tb = Tensor(b, requires_grad=True)
        fn(Tensor(h) @ Tensor(W) + tb).sum().backward()
        grads.append(tb.grad)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    (v1, g1), (v2, g2) = _both(np.zeros((2, 1)), np.zeros(2, dtype=int), 4)  # V = 1: nll 0, gradient 0
    assert not v1.any() and not g1.any() and not v2.any() and not g2.any()
    for dtype in (np.float32, np.float64):
        big = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], dtype=dtype)
        (v1, g1), (v2, g2) = _both(big, np.array([1, 2]), 5)
        assert v1.dtype == g1.dtype == dtype and np.isfinite(v1).all() and np.isfinite(g1).all()
        np.testing.assert_allclose(v1, [2000.0, np.log(3.0)], rtol=1e-6)
        # the composed form rounds -1000 + log(3) first (float32's spacing at 1000 is 6e-5)
        np.testing.assert_allclose(v1, v2, atol=1e-4)
        np.testing.assert_allclose(g1, g2, atol=1e-4)


def test_float32_fused_matches_float64_composed():
    rng = np.random.default_rng(6)
    logits, target = rng.standard_normal((8, 50)) * 4, rng.integers(0, 50, 8)
    (v32, g32), _ = _both(logits.astype(np.float32), target, 7)
    _, (v64, g64) = _both(logits, target, 7)
    assert v32.dtype == g32.dtype == np.float32
    np.testing.assert_allclose(v32, v64, rtol=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)


def test_a_slightly_wrong_vjp_is_caught(monkeypatch):
    """Negative control: a VJP 0.1% off in its softmax term fails both the comparison and check_vjp."""
    rng = np.random.default_rng(8)
    logits, target = rng.standard_normal((4, 6)), rng.integers(0, 6, 4)
    right = fused.softmax_cross_entropy._vjps[0]
    monkeypatch.setattr(fused.softmax_cross_entropy, "_vjps", (lambda g, ans, x, target, softmax:
                        right(g, ans, x, target, softmax) + 1e-3 * g[..., None] * softmax,))
    (_, g1), (_, g2) = _both(logits, target, 9)
    assert not np.allclose(g1, g2, rtol=1e-6, atol=1e-9)
    assert check_vjp(fused.softmax_cross_entropy, [logits], {"target": target})


def test_bad_targets_are_refused_clearly_and_the_softmax_is_saved_for_the_vjp():
    x = np.array([[0.0, 1.0, 2.0], [3.0, 3.0, -1.0]])
    with pytest.raises(ValueError, match=r"in 0\.\.2"):
        fused.softmax_cross_entropy(x, target=np.array([0, 3]))
    with pytest.raises(ValueError, match="integer ids shaped like"):
        fused.softmax_cross_entropy(x, target=np.array([0, 1, 2]))
    nll, params = fused.softmax_cross_entropy.run([x], {"target": np.array([0, 2])})
    softmax = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(params["softmax"], softmax, rtol=1e-15)
    np.testing.assert_allclose(nll, -np.log(softmax[[0, 1], [0, 2]]), rtol=1e-15)
    node = fused.softmax_cross_entropy(Tensor(x, requires_grad=True), target=np.array([0, 2]))
    assert node._params["softmax"] is not None and set(node._params) == {"target", "softmax"}
