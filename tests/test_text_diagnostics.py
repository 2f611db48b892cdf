"""Tests for minivae.text_diagnostics: edit distance, reconstruction scores and the linear probe.

The probe must read a label that the features encode and must not read one they do not; the
reconstruction scores are checked on pairs whose answers are known.
"""
import functools

import numpy as np
import pytest

from minivae import text_diagnostics
from minivae.text import EOS_ID
from minivae.text_diagnostics import levenshtein


# ------------------------------------------------------------------ edit distance
def test_levenshtein_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein([], []) == 0
    assert levenshtein(["the", "cat", "sat"], ["the", "cat", "sat"]) == 0
    assert levenshtein(["the", "cat", "sat"], ["the", "cat", "sat", "down"]) == 1
    assert levenshtein(["the", "cat", "sat"], ["a", "cat", "sat"]) == 1
    assert levenshtein(["a", "b"], ["b", "a"]) == 2
    assert levenshtein(np.array([4, 5, 6]), [4, 6]) == 1


def test_levenshtein_matches_recursive_definition():
    def reference(a, b):
        @functools.lru_cache(maxsize=None)
        def d(i, j):
            if i == 0 or j == 0:
                return i + j
            return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        return d(len(a), len(b))
    rng = np.random.default_rng(5)
    for _ in range(200):
        a, b = (tuple(rng.integers(0, 3, size=rng.integers(0, 7)).tolist()) for _ in range(2))
        assert levenshtein(a, b) == levenshtein(b, a) == reference(a, b)


# ------------------------------------------------------------------ reconstruction scores
def test_reconstruction_scores_on_known_pairs():
    inputs = [[4, 5, 6], [7, 8], [9, 10, 11, 12], [5]]
    outputs = [[4, 5, 6, EOS_ID],          # exact: distance 0
               [7, 9, 9, EOS_ID, 8],       # one substitution + one insertion before <eos>: 2
               [9, 11, 12, EOS_ID],        # one deletion: 1
               [5, 5, 5]]                  # never ended: compared as is, two insertions: 2
    accuracy, distance = text_diagnostics.reconstruction_scores(inputs, outputs)
    assert accuracy == 0.25
    assert distance == pytest.approx((0 + 2 + 1 + 2) / 4)
    assert text_diagnostics.reconstruction_scores(inputs, [s + [EOS_ID] for s in inputs]) == (1.0, 0.0)
    assert text_diagnostics.strip_eos([4, EOS_ID, 5, EOS_ID]) == [4] and text_diagnostics.strip_eos([4, 5]) == [4, 5]
    with pytest.raises(ValueError, match="equally many"):
        text_diagnostics.reconstruction_scores(inputs, outputs[:2])


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
    result = text_diagnostics.factor_probe(1e-3 * x_train + 5, y_train, 1e-3 * x_test + 5, y_test)
    assert result["accuracy"] > 0.98
    assert result["chance"] == pytest.approx(np.bincount(y_test).max() / 500)
    # a label carried by one feature out of 16, the others pure noise
    y = rng.integers(0, 2, 2500)
    x = rng.standard_normal((2500, 16))
    x[:, 7] += 3 * y
    assert text_diagnostics.factor_probe(x[:2000], y[:2000], x[2000:], y[2000:])["accuracy"] > 0.9


def test_probe_is_at_chance_on_random_features():
    rng = np.random.default_rng(1)
    _, y_train = _clusters(rng, 2000)
    _, y_test = _clusters(rng, 1000)
    result = text_diagnostics.factor_probe(rng.standard_normal((2000, 16)), y_train,
                                      rng.standard_normal((1000, 16)), y_test)
    assert result["accuracy"] < result["chance"] + 0.05   # 6 balanced classes: chance ~ 0.18
    # constant features (a collapsed encoder's exact means) can only give one class
    const = text_diagnostics.factor_probe(np.ones((2000, 4)), y_train, np.ones((1000, 4)), y_test)
    assert const["accuracy"] <= const["chance"]


def test_probe_reads_tiny_means_but_not_the_noisy_samples_a_decoder_sees():
    """A collapsed encoder in miniature: means that name the class with a spread of 0.001, under
    posterior noise of std 1. Standardised, the means are read; the samples z are not."""
    rng = np.random.default_rng(3)
    mu_train, y_train = _clusters(rng, 2000, noise=0.1)
    mu_test, y_test = _clusters(rng, 1000, noise=0.1)
    mu_train, mu_test = 1e-3 * mu_train, 1e-3 * mu_test
    on_mu = text_diagnostics.factor_probe(mu_train, y_train, mu_test, y_test)
    on_z = text_diagnostics.factor_probe(mu_train + rng.standard_normal(mu_train.shape), y_train,
                                    mu_test + rng.standard_normal(mu_test.shape), y_test)
    assert on_mu["accuracy"] > 0.98 and on_z["accuracy"] < on_z["chance"] + 0.05


def test_softmax_regression_descends_to_a_good_fit():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 600, n_classes=3, d=2, noise=1.0)

    def loss(W, b, mean, std):
        logits = (x - mean) / std @ W + b
        logits -= logits.max(axis=1, keepdims=True)
        return -np.mean(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(axis=1)))
    losses = [loss(*text_diagnostics.fit_softmax_regression(x, y, 3, steps)) for steps in (0, 10, 100, 500)]
    assert losses[0] == pytest.approx(np.log(3))          # W = 0: uniform prediction
    assert all(a > b for a, b in zip(losses, losses[1:]))  # the 1/L step always descends
    # the full-batch gradient at the end is nearly zero (a stationary point of a convex loss)
    W, b, mean, std = text_diagnostics.fit_softmax_regression(x, y, 3, 3000)
    W2, b2, _, _ = text_diagnostics.fit_softmax_regression(x, y, 3, 3001)
    assert np.max(np.abs(W2 - W)) < 1e-4 and np.max(np.abs(b2 - b)) < 1e-4
    with pytest.raises(ValueError, match="labels must lie"):
        text_diagnostics.fit_softmax_regression(x, y, 2)
