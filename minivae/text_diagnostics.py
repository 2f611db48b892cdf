"""Diagnostics of a trained sentence VAE: held-out scores, reconstruction, posterior means, linear probes.

Reading order: evaluate_sentences (held-out NLL, KL, perplexity, active units and mutual
information), levenshtein and strip_eos, reconstruction_scores, greedy_reconstructions,
encode_sentences, then the linear probe (fit_softmax_regression, predict_softmax_regression,
factor_probe) that asks whether posterior means, or samples of z, carry a known label,
reconstruction_and_probes (what scripts/train_text_vae.py reports on the test split) and
write_text_outputs (samples, reconstructions and interpolations as text files). The estimators
of active units and mutual information are diagnostics.py's, shared with the image VAEs.
"""
import os

import numpy as np

from . import diagnostics, ops
from .decoding import generate, interpolate, reconstruct
from .distributions import sample_gaussian
from .engine import no_grad
from .fileio import atomic_writer
from .text import EOS_ID, pad_batch, perplexity, text_batches


def evaluate_sentences(model, seqs, rng, batch_size=200):
    """Held-out scores of a SentenceVAE on id lists: a dict of nll, kl, neg_elbo (nats per sentence),
    ppl (per token, from -ELBO), active_units, mi and mi_se (nats), kl_per_dim (d,), mu (N, d).

    Evaluation mode (running BN statistics) and no corruption of the decoder's inputs (a
    historyless model reads <unk>, as it was trained); one z ~ q(z|x) per sentence, the same for
    the ELBO and for the mutual information, which is diagnostics.mutual_information over all N
    sentences with its standard error. `batch_size` sentences at a time (memory, not results).
    """
    dtype = model.to_logits.W.dtype
    totals, n_sent, n_tokens = {"rec": 0.0, "kl": 0.0}, 0, 0.0
    mus, logvars, zs = [], [], []
    kl_dims = np.zeros(model.latent)
    with no_grad():
        for batch in text_batches(seqs, batch_size):
            B = len(batch["lengths"])
            eps = rng.standard_normal((B, model.latent)).astype(dtype)
            _, stats = model.loss(batch, eps, training=False)
            totals["rec"] += stats["rec"] * B
            totals["kl"] += stats["kl"] * B
            kl_dims += stats["kl_per_dim"] * B
            n_sent += B
            n_tokens += stats["n_tokens"]
            mu, logvar = model.encode(batch["enc_in"], batch["lengths"], training=False)
            mus.append(mu.data)
            logvars.append(logvar.data)
            zs.append(sample_gaussian(mu.data, logvar.data, eps).data)  # the z the loss decoded
    mu, logvar, z = np.concatenate(mus), np.concatenate(logvars), np.concatenate(zs)
    n_active, _ = diagnostics.active_units(mu)
    mi, mi_se = diagnostics.mutual_information(mu, logvar, z)
    nll, kl = totals["rec"] / n_sent, totals["kl"] / n_sent
    return {"nll": nll, "kl": kl, "neg_elbo": nll + kl, "ppl": perplexity((nll + kl) * n_sent, n_tokens),
            "active_units": n_active, "mi": mi, "mi_se": mi_se, "kl_per_dim": kl_dims / n_sent, "mu": mu}


def levenshtein(a, b):
    """Edit distance between sequences a and b: the fewest insertions, deletions and substitutions.

    Dynamic programming over a (len a + 1) x (len b + 1) table, kept one row at a time.
    """
    prev = list(range(len(b) + 1))  # distance from a[:0] to each prefix of b
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def strip_eos(ids):
    """A generated id list up to (not including) its first <eos>; the whole list if it has none."""
    ids = list(ids)
    return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def reconstruction_scores(inputs, outputs):
    """(exact-match rate, mean Levenshtein distance) between input and reconstructed id lists.

    inputs: sentences as id lists without <sos>/<eos>; outputs: the decoder's id lists, cut at
    their first <eos> here (one that never emitted <eos> is compared as it is). The exact-match
    rate is the fraction of pairs that agree token for token; the distance is the fewest word
    insertions, deletions and substitutions (levenshtein), averaged over sentences.
    """
    if len(inputs) != len(outputs) or len(inputs) == 0:
        raise ValueError(f"need equally many inputs and outputs (at least one), got {len(inputs)} and {len(outputs)}")
    outputs = [strip_eos(ids) for ids in outputs]
    exact = np.mean([list(a) == b for a, b in zip(inputs, outputs)])
    distance = np.mean([levenshtein(list(a), b) for a, b in zip(inputs, outputs)])
    return float(exact), float(distance)


def greedy_reconstructions(model, seqs, batch_size=200, extra_len=10):
    """Greedy decoding of each sentence's posterior mean (encode -> mu -> argmax at every step).

    A SentenceVAE in evaluation mode (running batch-norm statistics), `batch_size` sentences at a
    time; a decoding stops at <eos> or after (longest input + extra_len) tokens. Returns id lists.
    """
    if not seqs:
        raise ValueError("greedy_reconstructions needs at least one sentence")
    max_len = max(map(len, seqs)) + extra_len
    out = []
    for start in range(0, len(seqs), batch_size):
        out += reconstruct(model, seqs[start:start + batch_size], max_len=max_len)
    return out


def encode_sentences(model, seqs, batch_size=200):
    """Posterior means and log-variances (each (N, d)) of a SentenceVAE for id lists, in evaluation mode."""
    mus, logvars = [], []
    with no_grad():
        for start in range(0, len(seqs), batch_size):
            batch = pad_batch(seqs[start:start + batch_size], mask_dtype=model.to_logits.W.dtype)
            mu, logvar = model.encode(batch["enc_in"], batch["lengths"], training=False)
            mus.append(mu.data)
            logvars.append(logvar.data)
    return np.concatenate(mus), np.concatenate(logvars)


def fit_softmax_regression(features, labels, n_classes, steps=500):
    """Multinomial logistic regression by full-batch gradient descent: (W (d, K), b (K,), mean, std).

    The features (N, d) are standardised with their own mean and std (a column with std 0 is
    only centred), then the average cross-entropy -mean_i log softmax(x_i W + b)[y_i] is
    minimised from W = 0, b = 0, with gradient  X^T (softmax(XW + b) - onehot(y)) / N  and the
    fixed step 1/L, L = 0.5 * largest eigenvalue of [X, 1]^T [X, 1] / N: a bound on the
    curvature of this loss, so every step decreases it. No regularisation: a few hundred steps
    on separable data leave the weights finite.
    Reference: Bohning 1992, Ann. Inst. Statist. Math. 44(1), "Multinomial logistic regression
    algorithm" (the curvature bound 0.5 * X^T X).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need features (N, d) and N labels, got shapes {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = (x - mean) / std                                            # (N, d)
    n, d = x.shape
    x1 = np.concatenate([x, np.ones((n, 1))], axis=1)               # (N, d + 1): bias column
    lr = 1.0 / (0.5 * np.linalg.eigvalsh(x1.T @ x1 / n)[-1])
    onehot = np.eye(n_classes)[y]                                   # (N, K)
    w = np.zeros((d + 1, n_classes))
    for _ in range(steps):
        p = ops.softmax(x1 @ w, axis=1).data                         # (N, K)
        w -= lr * (x1.T @ (p - onehot)) / n
    return w[:d], w[d], mean, std


def predict_softmax_regression(features, W, b, mean, std):
    """Most likely class of each row of features (N, d) under fit_softmax_regression's model."""
    x = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.argmax(x @ W + b, axis=1)


def factor_probe(train_features, train_labels, test_features, test_labels, steps=500):
    """How well features (e.g. posterior means) predict a known label: {"accuracy", "chance"}.

    A multinomial logistic regression (fit_softmax_regression, standardised features, `steps`
    gradient-descent steps) is trained on (train_features, train_labels) and scored on the
    held-out (test_features, test_labels). chance is the majority-class frequency of the test
    labels: the best accuracy any constant guess could reach. Accuracy well above chance means
    the features carry the factor in a form a linear classifier can read. Standardising makes
    the probe blind to scale: it reads posterior means however small their spread, even when
    the noise of z (std ~1) hides them from the decoder, so read it next to the KL, the active
    units and the mutual information.
    Reference: linear probes, Alain & Bengio 2016, arXiv:1610.01644.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if len(test_labels) == 0 or len(test_labels) != len(test_features):
        raise ValueError(f"need one test label per test row, got {len(test_labels)} labels for "
                         f"{len(test_features)} rows")
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    W, b, mean, std = fit_softmax_regression(train_features, train_labels, n_classes, steps)
    predicted = predict_softmax_regression(test_features, W, b, mean, std)
    chance = np.bincount(test_labels, minlength=n_classes).max() / len(test_labels)
    return {"accuracy": float(np.mean(predicted == test_labels)), "chance": float(chance)}


def reconstruction_and_probes(model, data, rng, batch_size=200, probe_train=5000):
    """Test-split reconstruction and (toy corpus) factor probes of a trained SentenceVAE.

    data: a text.TextData. recon_accuracy: fraction of test sentences whose greedy decoding from
    their posterior mean is the sentence itself; levenshtein: mean word edit distance between
    the two; levenshtein_other: the same distance to the NEXT test sentence, i.e. what a decoder
    that ignores its input scores (a collapsed one ties it); recon_distinct: how many different
    decodings the test sentences get (1 when every z decodes to the same sentence).
    factor_accuracy: None for text files; for the toy corpus {factor: {"accuracy", "accuracy_z",
    "chance", "n"}}, factor = topic, sentiment, tense and length (quartile bins), from linear
    probes (factor_probe) trained on the first probe_train training sentences and scored on the
    n test sentences. "accuracy" reads the posterior means; "accuracy_z" reads one sample
    z ~ q(z|x) per sentence (from rng), i.e. what the decoder is given: the means of a collapsed
    encoder can still name the factor, its samples cannot.
    """
    recon = greedy_reconstructions(model, data.test, batch_size)
    recon_accuracy, distance = reconstruction_scores(data.test, recon)
    _, distance_other = reconstruction_scores(data.test[1:] + data.test[:1], recon)
    scores = {"recon_accuracy": recon_accuracy, "levenshtein": distance, "levenshtein_other": distance_other,
              "recon_distinct": len({tuple(strip_eos(ids)) for ids in recon}), "factor_accuracy": None}
    if data.factors is None:
        return scores
    features = {}
    for split, seqs in (("train", data.train[:probe_train]), ("test", data.test)):
        mu, logvar = encode_sentences(model, seqs, batch_size)
        features[split] = (mu, sample_gaussian(mu, logvar, rng.standard_normal(mu.shape).astype(mu.dtype)).data)
    labels = {name: (data.factors["train"][name][:probe_train], data.factors["test"][name])
              for name in data.info["factor_names"]}
    # Sentence length, a property of the text rather than a generator factor: the probing task
    # "SentLen" of Conneau et al. 2018 (ACL, "What you can cram into a single vector"), here in
    # four bins cut at the quartiles of the probe's training lengths. A z that tells the
    # decoder when to stop saves it nats that no topic, sentiment or tense label would.
    train_len = np.array([len(s) for s in data.train[:probe_train]])
    edges = np.quantile(train_len, [0.25, 0.5, 0.75])
    labels["length"] = tuple(np.searchsorted(edges, lengths, side="right")
                             for lengths in (train_len, np.array([len(s) for s in data.test])))
    scores["factor_accuracy"] = {}
    for name, (train_y, test_y) in labels.items():
        on_mu, on_z = (factor_probe(features["train"][k], train_y, features["test"][k], test_y) for k in (0, 1))
        scores["factor_accuracy"][name] = {"accuracy": on_mu["accuracy"], "accuracy_z": on_z["accuracy"],
                                           "chance": on_mu["chance"], "n": len(test_y)}
    return scores


def write_text_outputs(model, vocab, seqs, folder, rng, n=10, max_len=40):
    """samples.txt, reconstructions.txt and interpolations.txt in `folder`, decoded from a trained model.

    samples: n codes z ~ N(0, I) (from rng), each decoded greedily, by sampling at temperature 1
    and by beam search (width 5); reconstructions: the first n sentences of `seqs` (id lists)
    with the greedy and beam decodings of their posterior means; interpolations: greedy
    decodings along the line between the posterior means of up to three pairs of them.
    """
    show = lambda ids: " ".join(vocab.decode(ids)) or "(empty)"  # noqa: E731
    z = rng.standard_normal((n, model.latent))
    with atomic_writer(os.path.join(folder, "samples.txt"), "w") as f:
        for method, kwargs in (("greedy", {}), ("sample, temperature 1", {"method": "sample", "rng": rng}),
                               ("beam search, width 5", {"method": "beam", "beam_width": 5})):
            f.write(f"# z ~ N(0, I), {method} decoding\n")
            f.writelines(show(ids) + "\n" for ids in generate(model, z, max_len=max_len, **kwargs))
            f.write("\n")
    greedy = reconstruct(model, seqs[:n], max_len=max_len)
    beam = reconstruct(model, seqs[:n], method="beam", beam_width=5, max_len=max_len)
    with atomic_writer(os.path.join(folder, "reconstructions.txt"), "w") as f:
        f.write("# test sentence / greedy decoding of its posterior mean / beam search (width 5)\n\n")
        for s, g, b in zip(seqs[:n], greedy, beam):
            f.write(f"input:  {show(s)}\ngreedy: {show(g)}\nbeam:   {show(b)}\n\n")
    with atomic_writer(os.path.join(folder, "interpolations.txt"), "w") as f:
        f.write("# greedy decodings along the line between the posterior means of two test sentences\n\n")
        for i in range(min(3, len(seqs) // 2)):
            a, b = seqs[2 * i], seqs[2 * i + 1]
            f.write(f"from: {show(a)}\n")
            f.writelines(f"  {k}: {show(ids)}\n" for k, ids in
                         enumerate(interpolate(model, a, b, n_steps=6, max_len=max_len)))
            f.write(f"to:   {show(b)}\n\n")
