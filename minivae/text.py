"""Text for sentence VAEs: vocabulary, corpora, splits and batches.

Reading order: `Vocab` (tokens <-> ids), `read_corpus` / `load_text_data` / `load_toy_data`
(what a script calls; the toy language itself is minivae.toy_language), `pad_batch` /
`text_batches` (what the training loop calls every step), then the evaluation helpers
`bag_of_words` and `perplexity`. Decoder-input corruption (word dropout, contiguous dropout)
is a posterior-collapse remedy and lives in minivae.collapse.

A sentence is a list of whitespace tokens, encoded as a list of ids WITHOUT <sos>/<eos>;
`pad_batch` adds those. Special ids are fixed: <pad>=0, <sos>=1, <eos>=2, <unk>=3.
"""
import math
import operator
import os
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .toy_language import toy_corpus

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIALS = (PAD, SOS, EOS, UNK)
PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# A corpus file holds one sentence per line; lines past these limits mean it does not (a book on
# one line, paragraphs, a binary file), and read_corpus refuses it rather than train on nonsense.
MAX_LINE_BYTES = 1 << 16
MAX_LINE_TOKENS = 1000
# describe() warns when a held-out split has this much more <unk> than the training split.
UNK_WARNING = 0.05
OVERLAP_WARNING = 0.5  # a held-out split sharing more than this fraction of its sentences with train is warned about

# ----------------------------------------------------------------------------- vocabulary

class Vocab:
    """Token <-> id map with <pad>=0, <sos>=1, <eos>=2, <unk>=3, then words by decreasing count.

    Tokens not in the vocabulary map to <unk>. A literal "<unk>" in the data (e.g. Penn Treebank)
    is the same thing and maps to <unk>; literal "<pad>", "<sos>", "<eos>" in the data also map to
    <unk>, so data can never produce a structural id that would fool masking or decoding.
    """

    def __init__(self, words):
        words = list(words)
        if set(words) & set(SPECIALS) or len(set(words)) != len(words):
            raise ValueError("Vocab words must be unique and must not include the special tokens")
        self.itos = list(SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences, min_count=1, max_size=None):
        """Vocabulary of the tokens seen >= min_count times, at most max_size ids INCLUDING the 4 specials.

        Order: decreasing count, ties alphabetically, so the result never depends on data order.
        """
        if min_count < 1 or (max_size is not None and max_size <= len(SPECIALS)):
            raise ValueError(f"need min_count >= 1 and max_size > {len(SPECIALS)} (it counts the 4 "
                             f"special tokens), got min_count={min_count}, max_size={max_size}")
        counts = Counter(tok for sentence in sentences for tok in sentence)
        ranked = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                        key=lambda w: (-counts[w], w))
        if not ranked:
            raise ValueError(f"no token occurs at least min_count={min_count} times; lower min_count")
        if max_size is not None:
            ranked = ranked[:max_size - len(SPECIALS)]
        return cls(ranked)

    def __len__(self):
        return len(self.itos)

    def __repr__(self):
        return f"Vocab({len(self)} ids: {' '.join(self.itos[:8])} ...)"

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens):
        """Ids of `tokens` (no <sos>/<eos> added); unknown words and literal specials -> <unk>."""
        ids = [self.stoi.get(tok, UNK_ID) for tok in tokens]
        return [i if i >= len(SPECIALS) else UNK_ID for i in ids]

    def decode(self, ids, strip=True):
        """Tokens of `ids`; with strip, skip <pad>/<sos> and stop at the first <eos>."""
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside this vocabulary of {len(self.itos)} ids")
            if strip and i == EOS_ID:
                break
            if not (strip and i in (PAD_ID, SOS_ID)):
                tokens.append(self.itos[i])
        return tokens

    def to_dict(self):
        """A JSON-able dict for checkpoints; `Vocab.from_dict` inverts it."""
        return {"specials": list(SPECIALS), "words": self.itos[len(SPECIALS):]}

    @classmethod
    def from_dict(cls, d):
        if list(d.get("specials", [])) != list(SPECIALS):
            raise ValueError(f"checkpoint vocabulary has specials {d.get('specials')}, expected {list(SPECIALS)}")
        return cls(d["words"])


# ----------------------------------------------------------------------------- corpora from files

def read_corpus(path, lowercase=False, max_len=None):
    """Read a text file, one sentence per line, tokens separated by whitespace.

    Empty and whitespace-only lines are skipped; sentences longer than max_len tokens are cut to
    their first max_len tokens. The file must be UTF-8 (a leading byte-order mark is ignored),
    with LF or CR LF line endings; a NUL byte (binary data), a carriage return inside a line
    (CR-only line endings), a line of more than MAX_LINE_BYTES bytes or MAX_LINE_TOKENS tokens
    is refused with a ValueError naming the line.
    Returns (sentences, stats) with stats = {"path", "n_lines", "n_sentences", "n_tokens",
    "n_truncated"} (n_tokens counts tokens after truncation).
    """
    path = os.fspath(path)
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"corpus {path!r} {what}; expected a UTF-8 text file with one sentence per line")
    sentences, n_truncated, offset, n_lines = [], 0, 0, 0
    with open(path, "rb") as f:
        for n_lines, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            problem = ("holds a NUL byte (binary data, or UTF-16)" if b"\0" in raw else
                       "holds a carriage return that ends no CR LF pair: CR-only (old Mac) line endings? "
                       "Convert them with `tr '\\r' '\\n'`" if b"\r" in raw.replace(b"\r\n", b"") else
                       f"is longer than {MAX_LINE_BYTES:,} bytes" if len(raw) > MAX_LINE_BYTES else None)
            if problem:
                raise ValueError(f"{path}: line {n_lines} {problem}; expected UTF-8 text, one sentence per line")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}: line {n_lines} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset "
                    f"{offset + e.start} of the file, {e.start} of the line). Convert the file to UTF-8, "
                    f"e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`") from None
            offset += len(raw)
            tokens = (line.lstrip("\ufeff") if n_lines == 1 else line).split()
            if len(tokens) > MAX_LINE_TOKENS:
                raise ValueError(f"{path}: line {n_lines} has {len(tokens):,} tokens, more than any sentence "
                                 f"({MAX_LINE_TOKENS:,}); expected one sentence per line, not paragraphs")
            if lowercase:
                tokens = [t.lower() for t in tokens]
            if max_len is not None and len(tokens) > max_len:
                tokens, n_truncated = tokens[:max_len], n_truncated + 1
            if tokens:
                sentences.append(tokens)
    if not sentences:
        raise ValueError(f"{path} contains no sentences ({n_lines} lines, all empty or whitespace)")
    stats = {"path": path, "n_lines": n_lines, "n_sentences": len(sentences),
             "n_tokens": sum(map(len, sentences)), "n_truncated": n_truncated}
    return sentences, stats


@dataclass
class TextData:
    """Encoded splits (lists of id lists, no <sos>/<eos>), the train vocabulary and a JSON-able info dict.

    factors is None for text files; for the toy corpus factors[split][name][i] labels split[i].
    """
    train: list
    valid: list
    test: list
    vocab: Vocab
    info: dict
    factors: dict = None


def _split_indices(n, held_out, seed):
    """Seeded random split of range(n): {name: fraction} held out, "train" gets the rest; indices sorted."""
    order = list(range(n))
    random.Random(operator.index(seed)).shuffle(order)
    out, start = {}, 0
    for name, fraction in held_out.items():
        k = max(1, round(fraction * n)) if fraction > 0 else 0
        out[name], start = sorted(order[start:start + k]), start + k
    if start >= n:
        raise ValueError(f"{n} sentences are too few to hold out {held_out}; give more data or smaller fractions")
    out["train"] = sorted(order[start:])
    return out


def _check_split(split):
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6:
        raise ValueError(f"split must be (train, valid, test) fractions >= 0 summing to 1, got {split!r}")


def _text_data(parts, min_count, max_size, info, factors=None):
    """Build the vocabulary on parts["train"], encode every split and add per-split counts to info."""
    vocab = Vocab.build(parts["train"], min_count, max_size)
    encoded = {name: [vocab.encode(s) for s in parts[name]] for name in ("train", "valid", "test")}
    info["vocab_size"] = len(vocab)
    info["n_train_types"] = len({tok for s in parts["train"] for tok in s})
    info["splits"] = {}
    seen = set(map(tuple, parts["train"]))  # the training sentences as words (ids would merge <unk>s)
    for name, seqs in encoded.items():
        n_tokens = sum(map(len, seqs))
        n_unk = sum(i == UNK_ID for s in seqs for i in s)
        info["splits"][name] = {"n_sentences": len(seqs), "n_tokens": n_tokens, "n_unk": n_unk,
                                "unk_rate": n_unk / n_tokens if n_tokens else None,
                                "max_len": max(map(len, seqs), default=0),
                                "in_train": sum(tuple(sentence) in seen for sentence in parts[name])}
    return TextData(encoded["train"], encoded["valid"], encoded["test"], vocab, info, factors)


def describe(data):
    """What a run prints at start-up: sentences per split, vocabulary size, each split's <unk> rate.

    A WARNING line follows for each held-out split whose unknown-word rate exceeds the training
    split's by more than UNK_WARNING (5 points): its words are mostly not the training corpus's,
    so its NLL and perplexity count many words as the one easy token <unk> and look too good.
    Another follows for each held-out split more than OVERLAP_WARNING (half) of whose sentences
    also occur in the training split (e.g. --valid-corpus given the training file): its scores
    then measure memory of the training sentences, not generalisation.
    """
    splits = data.info["splits"]
    rates = ", ".join(f"{name} {split['unk_rate'] or 0:.1%}" for name, split in splits.items())
    lines = [f"{len(data.train)} train / {len(data.valid)} valid / {len(data.test)} test sentences, "
             f"vocabulary {len(data.vocab)}, unknown words {rates}"]
    for name in ("valid", "test"):
        excess = (splits[name]["unk_rate"] or 0) - (splits["train"]["unk_rate"] or 0)
        if excess > UNK_WARNING:
            lines.append(f"WARNING: {splits[name]['unk_rate']:.1%} of the {name} words are <unk>, {excess:.1%} more "
                         f"than in train: is it the same kind of text? Its perplexity will look too good")
    for name in ("valid", "test"):
        shared, n = splits[name].get("in_train", 0), splits[name]["n_sentences"]
        if n and shared > OVERLAP_WARNING * n:
            lines.append(f"WARNING: {shared} of the {n} {name} sentences ({shared / n:.0%}) are also in the training "
                         f"split: {name} scores mostly sentences the model trains on")
    return "\n".join(lines)


def load_text_data(train_path, valid_path=None, test_path=None, split=(0.9, 0.05, 0.05), seed=0,
                   min_count=1, max_size=None, lowercase=False, max_len=None):
    """Read a corpus (one sentence per line) into encoded train/valid/test splits and a train-only vocab.

    A split whose file is not given is carved from the train file: split = (train, valid, test)
    fractions of the train file's sentences, drawn with random.Random(seed); train keeps the rest.
    With both files given, split is ignored. The vocabulary (min_count, max_size as in
    `Vocab.build`) sees the train split only, so valid/test unk rates are honest.
    """
    _check_split(split)
    parts, files = {}, {}
    for name, path in (("train", train_path), ("valid", valid_path), ("test", test_path)):
        if path is not None:
            parts[name], files[name] = read_corpus(path, lowercase, max_len)
    held_out = {name: split[k] for k, name in ((1, "valid"), (2, "test")) if name not in parts}
    if held_out:
        index = _split_indices(len(parts["train"]), held_out, seed)
        # index also holds "train" (the rest), so the carved train split replaces the full file.
        parts = {**parts, **{name: [parts["train"][i] for i in idx] for name, idx in index.items()}}
    info = {"source": "files", "files": files, "carved_from_train": sorted(held_out),
            "split": list(split) if held_out else None, "seed": operator.index(seed), "min_count": min_count,
            "max_size": max_size, "lowercase": lowercase, "max_len": max_len}
    return _text_data(parts, min_count, max_size, info)


def load_toy_data(n_sentences=20000, seed=0, split=(0.9, 0.05, 0.05), min_count=1, max_size=None, **toy_kwargs):
    """`toy_corpus(n_sentences, seed, **toy_kwargs)` split like `load_text_data`, factors kept aligned."""
    _check_split(split)
    corpus = toy_corpus(n_sentences, seed, **toy_kwargs)
    index = _split_indices(len(corpus.sentences), {"valid": split[1], "test": split[2]}, seed)
    parts = {name: [corpus.sentences[i] for i in idx] for name, idx in index.items()}
    factors = {name: {f: [corpus.factors[f][i] for i in idx] for f in corpus.factor_names}
               for name, idx in index.items()}
    info = {"source": "toy", "n_sentences_total": int(n_sentences), "seed": operator.index(seed), "split": list(split),
            "min_count": min_count, "max_size": max_size, "toy_kwargs": dict(toy_kwargs),
            "factor_names": list(corpus.factor_names), "factor_levels": corpus.factor_levels}
    return _text_data(parts, min_count, max_size, info, factors)


# ----------------------------------------------------------------------------- batching

def pad_batch(seqs, mask_dtype=np.float32):
    """Pad id lists (no specials) into the encoder/decoder arrays of a sentence VAE.

    For B sentences of lengths n_i and T = max n_i (ids int64, masks mask_dtype):
      enc_in     (B, T)    w_1 .. w_n, then <pad>          encoder input (no <sos>/<eos>)
      enc_mask   (B, T)    1 where enc_in holds a word
      dec_in     (B, T+1)  <sos> w_1 .. w_n, then <pad>    decoder input (teacher forcing)
      dec_target (B, T+1)  w_1 .. w_n <eos>, then <pad>    what the decoder predicts at each step
      mask       (B, T+1)  1 for real targets, <eos> included; mask.sum() = number of predicted tokens
      lengths    (B,)      n_i
    Example, seqs = [[7, 8, 9], [5]] (<pad>=0, <sos>=1, <eos>=2):
      enc_in = [[7, 8, 9], [5, 0, 0]]         dec_in = [[1, 7, 8, 9], [1, 5, 0, 0]]
      dec_target = [[7, 8, 9, 2], [5, 2, 0, 0]]   mask = [[1, 1, 1, 1], [1, 1, 0, 0]]
    """
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    if len(seqs) == 0 or lengths.min() < 1:
        raise ValueError("pad_batch needs at least one sentence and no empty sentences")
    B, T = len(seqs), int(lengths.max())
    enc_in = np.full((B, T), PAD_ID, dtype=np.int64)
    for i, s in enumerate(seqs):
        enc_in[i, :len(s)] = s
    enc_mask = np.arange(T)[None, :] < lengths[:, None]
    if np.isin(enc_in[enc_mask], (PAD_ID, SOS_ID, EOS_ID)).any():
        raise ValueError("a sentence contains a <pad>/<sos>/<eos> id; pass word ids only "
                         "(Vocab.encode never produces them, pad_batch adds <sos>/<eos>)")
    dec_in = np.concatenate([np.full((B, 1), SOS_ID, dtype=np.int64), enc_in], axis=1)
    dec_target = np.concatenate([enc_in, np.full((B, 1), PAD_ID, dtype=np.int64)], axis=1)
    dec_target[np.arange(B), lengths] = EOS_ID
    mask = np.arange(T + 1)[None, :] <= lengths[:, None]
    return {"enc_in": enc_in, "enc_mask": enc_mask.astype(mask_dtype), "dec_in": dec_in,
            "dec_target": dec_target, "mask": mask.astype(mask_dtype), "lengths": lengths}


def text_batches(data, batch_size, rng=None, bucket=0, drop_last=False):
    """Yield `pad_batch` dicts over `data` (a list of id lists), plus "index": the rows' positions in data.

    rng=None: data order (for evaluation); else shuffled by rng (np.random.Generator) every call.
    bucket=k > 0: sentences are sorted by length within pools of k*batch_size consecutive (shuffled)
    sentences before being cut into batches, then (with rng) the batch order is shuffled again;
    this cuts padding, and so time, a lot for k ~ 50 while keeping batches random.
    drop_last drops a final batch smaller than batch_size.
    """
    if batch_size < 1 or bucket < 0 or len(data) == 0:
        raise ValueError(f"need batch_size >= 1, bucket >= 0 and non-empty data, got {batch_size}, {bucket}, {len(data)}")
    order = np.arange(len(data)) if rng is None else rng.permutation(len(data))
    if bucket:
        lengths = np.array([len(s) for s in data])
        pool = bucket * batch_size
        order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(pool, len(order), pool))])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    if bucket and rng is not None:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    for index in batches:
        yield {**pad_batch([data[i] for i in index]), "index": index}


# ----------------------------------------------------------------------------- evaluation helpers

def bag_of_words(dec_target, mask, vocab_size):
    """Counts (B, V) of each id among a batch's real targets, weighted by mask (<eos> counts, <pad> not).

    The target of the bag-of-words loss: L_bow = -sum_v counts[b, v] * log_softmax(f)[b, v].
    Reference: Zhao et al. 2017, arXiv:1703.10960, Sec. 3.3 (bag-of-words loss).
    """
    dec_target, mask = np.asarray(dec_target), np.asarray(mask)
    if dec_target.max() >= vocab_size or dec_target.min() < 0:
        raise ValueError(f"ids must lie in [0, {vocab_size}), got {dec_target.min()}..{dec_target.max()}")
    counts = np.zeros((dec_target.shape[0], vocab_size), dtype=mask.dtype)
    rows = np.broadcast_to(np.arange(dec_target.shape[0])[:, None], dec_target.shape)
    np.add.at(counts, (rows, dec_target), mask)
    return counts


def perplexity(total_nll, total_tokens):
    """exp(total_nll / total_tokens): total NLL in nats over all predicted tokens.

    Count every predicted target, <eos> included and <sos> excluded (it is never predicted):
    total_tokens = pad_batch(...)["mask"].sum() summed over batches.
    """
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be > 0, got {total_tokens}")
    if total_nll < 0:
        raise ValueError(f"total_nll={total_nll} < 0: pass the negative log-likelihood (a loss), not log p")
    rate = total_nll / total_tokens
    return math.exp(rate) if rate < 700 else math.inf
