"""Tests for minivae.text: vocabulary, file corpora, the toy data's splits, batching, evaluation helpers."""
import json
import math

import numpy as np
import pytest

from minivae.text import (EOS_ID, PAD_ID, SOS_ID, UNK_ID, SPECIALS, Vocab, bag_of_words, load_text_data,
                          load_toy_data, pad_batch, perplexity, read_corpus, text_batches)
from minivae.toy_language import toy_corpus


@pytest.fixture(scope="module")
def toy_data():
    return load_toy_data(6000, seed=3)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# ----------------------------------------------------------------------------- toy data splits

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
    assert info["splits"]["train"] == {"n_sentences": 3, "n_tokens": 8, "n_unk": 0, "unk_rate": 0.0, "max_len": 3,
                                      "in_train": 3}
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
