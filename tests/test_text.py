"""Tests for minivae.text: toy corpus, vocabulary, file corpora, batching, decoder corruption."""
import functools
import hashlib
import json
import math

import numpy as np
import pytest

from minivae.text import (EOS_ID, PAD_ID, SOS_ID, UNK_ID, SPECIALS, Vocab, bag_of_words,
                          contiguous_dropout, levenshtein, load_text_data, load_toy_data, pad_batch,
                          perplexity, read_corpus, text_batches, toy_corpus, word_dropout)
from minivae.text import _toy_lexicon


@pytest.fixture(scope="module")
def toy20k():
    return toy_corpus(20000, seed=0)


@pytest.fixture(scope="module")
def toy_data():
    return load_toy_data(6000, seed=3)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# ----------------------------------------------------------------------------- toy corpus

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


def test_load_toy_data_keeps_factors_aligned(toy_data):
    corpus = toy_corpus(6000, seed=3)
    labels = {}
    for i, s in enumerate(corpus.sentences):
        labels.setdefault(tuple(s), set()).add(tuple(corpus.factors[f][i] for f in corpus.factor_names))
    sizes = {}
    for split in ("train", "valid", "test"):
        seqs, factors = getattr(toy_data, split), toy_data.factors[split]
        sizes[split] = len(seqs)
        assert all(len(factors[f]) == len(seqs) for f in corpus.factor_names)
        for i in range(0, len(seqs), 7):
            tokens = toy_data.vocab.decode(seqs[i])
            if UNK_ID not in seqs[i]:
                assert tuple(factors[f][i] for f in corpus.factor_names) in labels[tuple(tokens)]
    assert sizes == {"train": 5400, "valid": 300, "test": 300}
    json.dumps(toy_data.info)
    assert toy_data.info["splits"]["train"]["unk_rate"] == 0.0


# ----------------------------------------------------------------------------- vocabulary

def test_vocab_build_order_min_count_and_max_size():
    sentences = [["b", "a", "c"], ["c", "a", "d"], ["b", "e"], ["c"]]   # c:3, a:2, b:2, d:1, e:1
    v = Vocab.build(sentences)
    assert v.itos == list(SPECIALS) + ["c", "a", "b", "d", "e"]
    assert [v.stoi[s] for s in SPECIALS] == [PAD_ID, SOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    assert Vocab.build(sentences[::-1]) == v                           # independent of data order
    assert Vocab.build(sentences, min_count=2).itos[4:] == ["c", "a", "b"]
    assert len(Vocab.build(sentences, max_size=6)) == 6 and Vocab.build(sentences, max_size=6).itos[4:] == ["c", "a"]
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(sentences, min_count=4)
    with pytest.raises(ValueError, match="max_size"):
        Vocab.build(sentences, max_size=4)


def test_vocab_literal_specials_never_become_structural_ids():
    v = Vocab.build([["<unk>", "<pad>", "<sos>", "<eos>", "x"], ["x", "<unk>"]])
    assert v.itos == list(SPECIALS) + ["x"]                            # literals are not counted as words
    assert v.encode(["x", "<unk>", "<pad>", "<sos>", "<eos>", "never-seen"]) == [4] + [UNK_ID] * 5


def test_vocab_encode_decode_and_json_round_trip():
    v = Vocab.build([["the", "cat", "sat"], ["the", "dog"]])
    ids = v.encode(["the", "cat", "flew"])
    assert ids[2] == UNK_ID and v.decode(ids) == ["the", "cat", "<unk>"]
    padded = [SOS_ID] + ids + [EOS_ID, PAD_ID, v.stoi["dog"]]
    assert v.decode(padded) == ["the", "cat", "<unk>"]                 # strip: no <sos>, stop at <eos>
    assert v.decode(padded, strip=False)[:2] == ["<sos>", "the"] and len(v.decode(padded, strip=False)) == 7
    assert v.decode(np.array(ids)) == v.decode(ids)
    with pytest.raises(ValueError, match="outside"):
        v.decode([len(v)])
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(ValueError, match="specials"):
        Vocab.from_dict({"specials": ["<pad>", "<unk>"], "words": ["a"]})


# ----------------------------------------------------------------------------- text files

def test_read_corpus_tokens_blank_lines_truncation(tmp_path):
    path = write(tmp_path, "c.txt", "\ufeffThe  cat\tsat\r\n\n   \t \nA café  naïve x y z\nlast line no newline")
    sentences, stats = read_corpus(path)
    assert sentences == [["The", "cat", "sat"], ["A", "café", "naïve", "x", "y", "z"], ["last", "line", "no", "newline"]]
    assert stats == {"path": str(path), "n_lines": 5, "n_sentences": 3, "n_tokens": 13, "n_truncated": 0}
    sentences, stats = read_corpus(path, lowercase=True, max_len=4)
    assert sentences[0] == ["the", "cat", "sat"] and sentences[1] == ["a", "café", "naïve", "x"]
    assert stats["n_truncated"] == 1 and stats["n_tokens"] == 11
    with pytest.raises(ValueError, match="max_len"):
        read_corpus(path, max_len=0)


def test_read_corpus_errors(tmp_path):
    bad = write(tmp_path, "latin1.txt", b"ok line\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"line 2 .*UTF-8.*byte offset 12") as e:
        read_corpus(bad)
    assert "Convert the file to UTF-8" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.txt.*does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="directory"):
        read_corpus(tmp_path)
    for name, text in (("empty.txt", ""), ("blank.txt", "  \n\t\n\n")):
        with pytest.raises(ValueError, match="no sentences"):
            read_corpus(write(tmp_path, name, text))


def test_load_text_data_with_three_files(tmp_path):
    train = write(tmp_path, "train.txt", "a b c\na b\nb c d\n")
    valid = write(tmp_path, "valid.txt", "a z\n")
    test = write(tmp_path, "test.txt", "q q q b\n")
    data = load_text_data(train, valid, test, split=(1.0, 0.0, 0.0))
    assert data.vocab.itos[4:] == ["b", "a", "c", "d"]                 # train only
    assert data.valid == [[data.vocab.stoi["a"], UNK_ID]] and data.test == [[UNK_ID] * 3 + [4]]
    info = json.loads(json.dumps(data.info))
    assert info["carved_from_train"] == [] and info["split"] is None and info["vocab_size"] == 8
    assert info["splits"]["valid"]["unk_rate"] == 0.5 and info["splits"]["test"]["unk_rate"] == 0.75
    assert info["splits"]["train"] == {"n_sentences": 3, "n_tokens": 8, "n_unk": 0, "unk_rate": 0.0, "max_len": 3}
    assert info["files"]["test"]["path"] == str(test) and data.factors is None


def test_load_text_data_carves_a_seeded_split(tmp_path):
    lines = [f"w{i} w{i + 1} common" for i in range(200)]
    path = write(tmp_path, "all.txt", "\n".join(lines) + "\n")
    data = load_text_data(path, split=(0.8, 0.1, 0.1), seed=5, max_len=2)
    decoded = {split: [" ".join(data.vocab.decode(s, strip=False)) for s in getattr(data, split)]
               for split in ("train", "valid", "test")}
    assert [len(decoded[k]) for k in ("train", "valid", "test")] == [160, 20, 20]
    train_words = {w for s in data.train for w in data.vocab.decode(s)}
    assert set(data.vocab.itos[4:]) == train_words and "common" not in train_words   # truncated away
    held_out = [s for k in ("valid", "test") for s in getattr(data, k)]
    assert any(UNK_ID in s for s in held_out)                          # words only in held-out lines
    assert data.info["files"]["train"]["n_truncated"] == 200
    assert data.info["carved_from_train"] == ["test", "valid"]
    again = load_text_data(path, split=(0.8, 0.1, 0.1), seed=5, max_len=2)
    other = load_text_data(path, split=(0.8, 0.1, 0.1), seed=6, max_len=2)
    assert again.valid == data.valid and other.valid != data.valid
    valid_only = load_text_data(path, valid_path=path, split=(0.9, 0.0, 0.1))
    assert len(valid_only.valid) == 200 and len(valid_only.test) == 20 and len(valid_only.train) == 180
    with pytest.raises(ValueError, match="split"):
        load_text_data(path, split=(0.8, 0.1, 0.2))
    tiny = write(tmp_path, "tiny.txt", "one line\n")
    with pytest.raises(ValueError, match="too few"):
        load_text_data(tiny)


# ----------------------------------------------------------------------------- batching

def test_pad_batch_layout_matches_docstring():
    b = pad_batch([[7, 8, 9], [5]])
    np.testing.assert_array_equal(b["enc_in"], [[7, 8, 9], [5, 0, 0]])
    np.testing.assert_array_equal(b["dec_in"], [[1, 7, 8, 9], [1, 5, 0, 0]])
    np.testing.assert_array_equal(b["dec_target"], [[7, 8, 9, 2], [5, 2, 0, 0]])
    np.testing.assert_array_equal(b["mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(b["enc_mask"], b["mask"][:, 1:])
    np.testing.assert_array_equal(b["lengths"], [3, 1])
    assert b["mask"].dtype == np.float32 and b["enc_in"].dtype == np.int64
    # Teacher forcing: the decoder reads token t and predicts token t+1.
    np.testing.assert_array_equal(b["dec_in"][:, 1:] * b["mask"][:, 1:], b["dec_target"][:, :-1] * b["mask"][:, 1:])


def test_pad_batch_errors():
    for bad in ([], [[4, 5], []], [[4, EOS_ID]], [[SOS_ID, 4]], [[4, PAD_ID, 5]]):
        with pytest.raises(ValueError):
            pad_batch(bad)
    assert pad_batch([[UNK_ID, 4]])["lengths"][0] == 2                 # <unk> is a word


def test_text_batches_cover_data_once():
    rng = np.random.default_rng(0)
    data = [list(range(4, 4 + n)) for n in rng.integers(1, 30, size=1003)]
    in_order = list(text_batches(data, 100))
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in in_order]), np.arange(1003))
    assert [len(b["index"]) for b in in_order] == [100] * 10 + [3]
    for bucket in (0, 5):
        batches = list(text_batches(data, 100, rng=np.random.default_rng(1), bucket=bucket, drop_last=True))
        assert all(len(b["index"]) == 100 for b in batches) and len(batches) == 10
        seen = np.concatenate([b["index"] for b in batches])
        assert len(set(seen.tolist())) == 1000
        for b in batches:
            np.testing.assert_array_equal(b["lengths"], [len(data[i]) for i in b["index"]])
    again = [b["index"] for b in text_batches(data, 100, np.random.default_rng(1), bucket=5, drop_last=True)]
    np.testing.assert_array_equal(np.concatenate(again), seen)     # seeded
    cells = lambda bucket: sum(b["dec_in"].size for b in text_batches(data, 50, np.random.default_rng(2), bucket))
    assert cells(10) < 0.75 * cells(0)                                  # bucketing cuts padding
    with pytest.raises(ValueError):
        next(text_batches(data, 0))


# ----------------------------------------------------------------------------- decoder corruption

def decoder_inputs(rng, B=4000, T=30):
    """dec_in-like ids: <sos>, random word ids >= 4 (no <unk>), then <pad>; one <eos> planted per row."""
    lengths = rng.integers(1, T, size=B)
    dec_in = np.where(np.arange(T + 1) <= lengths[:, None], rng.integers(4, 500, size=(B, T + 1)), PAD_ID)
    dec_in[:, 0] = SOS_ID
    dec_in[np.arange(B), lengths] = EOS_ID
    return dec_in


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_word_dropout_rate_and_specials(p):
    rng = np.random.default_rng(0)
    dec_in = decoder_inputs(rng)
    before = dec_in.copy()
    out = word_dropout(dec_in, p, rng)
    np.testing.assert_array_equal(dec_in, before)                      # input untouched
    words = dec_in >= 4
    np.testing.assert_array_equal(out[~words], dec_in[~words])         # <sos>, <eos>, <pad> kept
    dropped = out[words] == UNK_ID
    assert np.all(out[words][~dropped] == dec_in[words][~dropped])
    n = words.sum()
    assert abs(dropped.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_word_dropout_edge_cases():
    rng = np.random.default_rng(1)
    dec_in = decoder_inputs(rng, B=50)
    out = word_dropout(dec_in, 0.0, None)
    np.testing.assert_array_equal(out, dec_in)
    assert out is not dec_in
    historyless = word_dropout(dec_in, 1.0, rng)
    np.testing.assert_array_equal(historyless, np.where(dec_in >= 4, UNK_ID, dec_in))
    assert historyless.dtype == dec_in.dtype
    for p in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            word_dropout(dec_in, p, rng)


def poisson_tail(lam, k):
    """P(L > k) for L ~ Poisson(lam)."""
    return 1 - sum(math.exp(-lam) * lam ** i / math.factorial(i) for i in range(k + 1))


@pytest.mark.parametrize("p, lam", [(0.1, 2.0), (0.3, 0.7)])
def test_contiguous_dropout_marginals_match_the_exact_formula(p, lam):
    # Position j (1 = first word) is dropped iff some start at j-k (1 <= j-k) has span L > k:
    # P = 1 - prod_{k=0}^{j-1} (1 - p * P(L > k)). Exact, including merged spans.
    # A protected token (here an <eos> at column 6) cuts every span, so the count restarts after it.
    rng = np.random.default_rng(2)
    B, T = 20000, 12
    dec_in = np.concatenate([np.full((B, 1), SOS_ID), rng.integers(4, 500, size=(B, T))], axis=1)
    dec_in[:, 6] = EOS_ID
    out = contiguous_dropout(dec_in, p, lam, rng)
    assert np.all(out[:, [0, 6]] == [SOS_ID, EOS_ID])
    rate = (out[:, 1:] == UNK_ID).mean(axis=0)
    marginal = lambda j: 1 - math.prod(1 - p * poisson_tail(lam, k) for k in range(j))
    expected = [marginal(j) if j < 6 else 0.0 if j == 6 else marginal(j - 6) for j in range(1, T + 1)]
    se = np.sqrt(np.array(expected) * (1 - np.array(expected)) / B)
    assert np.all(np.abs(rate - expected) <= 4 * se), (rate, expected)


def test_contiguous_dropout_span_lengths():
    # Rare starts on very long rows, so spans almost never merge (expected bias ~0.02 tokens, far
    # below the tolerance) and few reach the row end (those are excluded). A span of length 0 leaves
    # no trace, so the visible runs have the zero-truncated Poisson mean lam / (1 - exp(-lam)).
    rng = np.random.default_rng(3)
    lam, B, T = 3.0, 1000, 1000
    dec_in = np.concatenate([np.full((B, 1), SOS_ID), rng.integers(4, 500, size=(B, T)), np.full((B, 1), PAD_ID)], axis=1)
    out = contiguous_dropout(dec_in, 0.0005, lam, rng)
    dropped = (out == UNK_ID).astype(np.int8)
    edges = np.diff(dropped, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    assert np.all(out[:, [0, -1]] == [SOS_ID, PAD_ID])
    runs = ends[1] - starts[1]                                          # the pad column is never dropped
    assert len(runs) > 300
    mean, se = lam / (1 - math.exp(-lam)), math.sqrt(lam) / math.sqrt(len(runs))
    assert abs(runs.mean() - mean) < 4 * se, (runs.mean(), mean)
    assert runs.max() >= 7 and runs.min() == 1


def test_contiguous_dropout_protects_specials_and_validates():
    rng = np.random.default_rng(4)
    dec_in = decoder_inputs(rng, B=500)
    before = dec_in.copy()
    out = contiguous_dropout(dec_in, 0.5, 5.0, rng)
    np.testing.assert_array_equal(dec_in, before)
    np.testing.assert_array_equal(out[dec_in < 4], dec_in[dec_in < 4])
    assert (out[dec_in >= 4] == UNK_ID).mean() > 0.5
    np.testing.assert_array_equal(contiguous_dropout(dec_in, 0.0, 3.0, None), dec_in)
    np.testing.assert_array_equal(contiguous_dropout(dec_in, 0.5, 0.0, None), dec_in)
    # A span never crosses a protected token: everything after a mid-row <eos> survives.
    row = np.array([[SOS_ID, 7, 8, EOS_ID, 9, 10]])
    out = contiguous_dropout(row, 1.0, 50.0, np.random.default_rng(0), protect=(SOS_ID, EOS_ID))
    np.testing.assert_array_equal(out, [[SOS_ID, UNK_ID, UNK_ID, EOS_ID, UNK_ID, UNK_ID]])
    out = contiguous_dropout(row, 1.0, 50.0, np.random.default_rng(0), protect=(SOS_ID, EOS_ID, 9))
    np.testing.assert_array_equal(out, [[SOS_ID, UNK_ID, UNK_ID, EOS_ID, 9, UNK_ID]])
    for p, lam in ((1.5, 1.0), (0.5, -1.0)):
        with pytest.raises(ValueError):
            contiguous_dropout(dec_in, p, lam, rng)


# ----------------------------------------------------------------------------- evaluation helpers

def test_bag_of_words_counts_real_targets_only():
    b = pad_batch([[5, 6, 5], [7]])
    counts = bag_of_words(b["dec_target"], b["mask"], 8)
    expected = np.zeros((2, 8))
    expected[0, [5, 6, EOS_ID]] = [2, 1, 1]
    expected[1, [7, EOS_ID]] = [1, 1]
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == b["mask"].sum()
    permuted = pad_batch([[5, 5, 6], [7]])
    np.testing.assert_array_equal(bag_of_words(permuted["dec_target"], permuted["mask"], 8), counts)
    with pytest.raises(ValueError, match="ids"):
        bag_of_words(b["dec_target"], b["mask"], 7)


def test_perplexity():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(50), 10) == pytest.approx(50)
    # A uniform model over V ids has perplexity V; tokens = mask.sum() counts <eos>, not <sos>.
    b = pad_batch([[4, 5, 6], [7]])
    n_tokens = b["mask"].sum()
    assert n_tokens == 6
    assert perplexity(n_tokens * math.log(1000), n_tokens) == pytest.approx(1000)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="total_tokens"):
        perplexity(1.0, 0)
    with pytest.raises(ValueError, match="negative log-likelihood"):
        perplexity(-1.0, 5)


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
