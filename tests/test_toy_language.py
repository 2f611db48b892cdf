"""Tests for minivae.toy_language: the toy corpus is seeded and pinned, Zipf-like, and its factors
can be read from its words."""
import hashlib
import json

import numpy as np
import pytest

from minivae.text import bag_of_words, load_toy_data, pad_batch
from minivae.toy_language import _toy_lexicon, toy_corpus


@pytest.fixture(scope="module")
def toy20k():
    return toy_corpus(20000, seed=0)


@pytest.fixture(scope="module")
def toy_data():
    return load_toy_data(6000, seed=3)


def test_toy_corpus_is_deterministic_and_seeded():
    a, b, c = toy_corpus(300, seed=0), toy_corpus(300, seed=0), toy_corpus(300, seed=1)
    assert a.sentences == b.sentences and a.factors == b.factors
    assert a.sentences != c.sentences and a.factors != c.factors


def test_toy_corpus_fingerprint_is_pinned():
    # The corpus must be bit-identical on every machine and Python >= 3.9 (random.Random only).
    # Change this value only together with a deliberate change of the toy language.
    c = toy_corpus(200, seed=0)
    blob = json.dumps([c.sentences, c.factors], sort_keys=True).encode()
    assert hashlib.sha256(blob).hexdigest() == "e7916ff336c01c9ee0ced423eb28bad9afabb0012b763392f86c4499184bcfff"


def test_toy_corpus_statistics(toy20k):
    counts = {}
    for s in toy20k.sentences:
        assert 5 <= len(s) <= 25 and s[-1] == "."
        for tok in s:
            counts[tok] = counts.get(tok, 0) + 1
    assert 2000 <= len(counts) <= 10000
    freqs = sorted(counts.values(), reverse=True)
    assert freqs[10] > 20 * freqs[2000]                                  # heavy-tailed (Zipf-like)
    assert sum(f == 1 for f in freqs) < 0.2 * len(freqs)                 # ...but a learnable vocabulary
    assert set(toy20k.factor_names) == set(toy20k.factors)
    for name in toy20k.factor_names:
        labels = np.array(toy20k.factors[name])
        assert len(labels) == 20000
        n_levels = len(toy20k.factor_levels[name])
        shares = np.bincount(labels, minlength=n_levels) / len(labels)
        assert np.all(np.abs(shares - 1 / n_levels) < 0.2 / n_levels), (name, shares)


def test_toy_corpus_options_and_errors():
    c = toy_corpus(300, seed=2, n_topics=3, length_range=(10, 12))
    assert all(10 <= len(s) <= 12 for s in c.sentences)
    assert set(c.factors["topic"]) == {0, 1, 2}
    assert _toy_lexicon(4)["topics"][2] == _toy_lexicon(6)["topics"][2]   # words don't depend on n_topics
    with pytest.raises(ValueError, match="length_range"):
        toy_corpus(10, length_range=(2, 25))
    with pytest.raises(ValueError, match="n_topics"):
        toy_corpus(10, n_topics=1)


def nearest_centroid_accuracy(data, factor, shuffle_labels=False):
    """Classify test sentences by the nearest class word distribution in KL (= multinomial naive Bayes)."""
    V = len(data.vocab)
    y_train, y_test = np.array(data.factors["train"][factor]), np.array(data.factors["test"][factor])
    if shuffle_labels:
        y_train = np.random.default_rng(0).permutation(y_train)
    K = y_train.max() + 1
    counts = np.ones((K, V))                                              # add-one smoothing
    np.add.at(counts, (np.repeat(y_train, [len(s) for s in data.train]), np.concatenate(data.train)), 1)
    log_centroid = np.log(counts / counts.sum(axis=1, keepdims=True))
    batch = pad_batch(data.test)
    scores = bag_of_words(batch["dec_target"], batch["mask"], V) @ log_centroid.T
    return np.mean(np.argmax(scores, axis=1) == y_test)


@pytest.mark.parametrize("factor", ["topic", "sentiment", "tense"])
def test_toy_factors_are_predictable_from_words(toy_data, factor):
    assert nearest_centroid_accuracy(toy_data, factor) > 0.9


def test_nearest_centroid_check_fails_on_shuffled_labels(toy_data):
    assert nearest_centroid_accuracy(toy_data, "topic", shuffle_labels=True) < 0.3
