"""Turning latent codes into sentences with a trained SentenceVAE: greedy, sampling, beam search.

Every function takes the model first and runs without recording a graph:
    decoding.generate(model, z, method="beam", beam_width=5)
    decoding.reconstruct(model, seqs)          # encode -> posterior mean -> generate
Reading order: decoder_step (one step of the decoder), generate with its two loops
(_decode_left_to_right for greedy and sampling, _beam_search), then sample, encode_mean,
reconstruct and interpolate.
"""
import numpy as np

from . import ops
from .collapse import historyless_inputs
from .engine import Tensor, no_grad
from .text import EOS_ID, PAD_ID, SOS_ID, pad_batch

METHODS = ("greedy", "sample", "beam")


def decoder_step(model, z, tokens, h):
    """One decoder step: previous tokens (B,) and state h (B, H) -> (logits (B, V), new h).

    The same ops as `model.decode` at one time step, so it gives the training path's logits; a
    historyless decoder reads <unk> in place of the previous word, as in training.
    """
    tokens = np.asarray(tokens)
    if model.historyless:
        tokens = historyless_inputs(tokens)
    x = model.embedding(tokens.reshape(-1, 1))                          # (B, 1, E)
    if model.z_to_every_step:
        x = ops.concatenate([x, z.reshape(len(tokens), 1, model.latent)], axis=2)   # (B, 1, E + d)
    h = model.decoder_rnn.cell(x[:, 0], h)                               # (B, H)
    return model.to_logits(h), h


def generate(model, z, method="greedy", max_len=30, temperature=1.0, beam_width=5, length_norm=True,
             rng=None):
    """Decode latent codes z (n, d) into id lists, each ending in <eos> or max_len ids long.

    method: "greedy" (argmax each step), "sample" (softmax(logits / temperature), needs rng),
    or "beam" (beam search with beam_width hypotheses per sentence; with length_norm the
    finished hypotheses are ranked by log-probability / length (ids generated, <eos>
    included), which stops short sentences winning just by having fewer terms; without it
    by total log-probability). <pad> and <sos> are never generated. beam_width=1 is greedy
    decoding.
    """
    if method not in METHODS:
        raise ValueError(f"method must be 'greedy', 'sample' or 'beam', got {method!r}")
    if method == "sample" and (rng is None or not temperature > 0):
        raise ValueError("sampling needs an rng (np.random.Generator) and a temperature > 0")
    if int(max_len) < 1 or int(beam_width) < 1:
        raise ValueError(f"max_len and beam_width must be >= 1, got {max_len}, {beam_width}")
    z = np.asarray(z.data if isinstance(z, Tensor) else z, dtype=model.to_logits.W.dtype)
    with no_grad():
        if method == "beam":
            return [_beam_search(model, z[i:i + 1], max_len, beam_width, length_norm) for i in range(len(z))]
        return _decode_left_to_right(model, z, method, max_len, temperature, rng)


def _generation_scores(logits):
    """float64 logits with <pad> and <sos> ruled out (-inf): the decoder is never trained to emit them."""
    scores = logits.astype(np.float64)
    scores[:, [PAD_ID, SOS_ID]] = -np.inf
    return scores


def _decode_left_to_right(model, z, method, max_len, temperature, rng):
    """Greedy or sampled decoding of z (n, d), all n sentences one step at a time."""
    n = len(z)
    zt = Tensor(z)
    h = model.initial_state(zt)
    tokens = np.full(n, SOS_ID)
    out, done = [[] for _ in range(n)], np.zeros(n, dtype=bool)
    for _ in range(max_len):
        logits, h = decoder_step(model, zt, tokens, h)
        scores = _generation_scores(logits.data)                       # (n, V) float64
        if method == "greedy":
            tokens = np.argmax(scores, axis=1)
        else:  # inverse-CDF sampling: the first token whose cumulative probability exceeds u
            p = ops.softmax(scores / temperature).data
            u = rng.random((n, 1))
            tokens = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), model.vocab_size - 1)
        for i in np.flatnonzero(~done):
            out[i].append(int(tokens[i]))
        done |= tokens == EOS_ID
        if done.all():
            break
    return out


def _beam_search(model, z, max_len, beam_width, length_norm):
    """Beam search for one latent code z (1, d); returns the best id list.

    Each step extends every live hypothesis by every token and keeps the beam_width -
    len(finished) best extensions by total log-probability; an extension ending in <eos> is
    finished. Finished hypotheses are preferred over ones cut off at max_len.
    """
    zt = Tensor(z)
    live = [(0.0, [], model.initial_state(zt).data)]                   # (log-prob, ids, state (1, H))
    finished = []
    for _ in range(max_len):
        prev = np.array([ids[-1] if ids else SOS_ID for _, ids, _ in live])
        states = Tensor(np.concatenate([h for _, _, h in live]))         # (k, H)
        logits, h_new = decoder_step(model, Tensor(np.repeat(z, len(live), axis=0)), prev, states)
        log_p = ops.log_softmax(_generation_scores(logits.data)).data   # (k, V)
        total = np.array([[s] for s, _, _ in live]) + log_p              # (k, V)
        best = np.argsort(-total, axis=None, kind="stable")[:beam_width - len(finished)]
        extended = []
        for r, c in zip(*np.unravel_index(best, total.shape)):
            hyp = (float(total[r, c]), live[r][1] + [int(c)], h_new.data[r:r + 1])
            (finished if c == EOS_ID else extended).append(hyp)
        live = extended
        if not live:
            break
    rank = (lambda hyp: hyp[0] / len(hyp[1])) if length_norm else (lambda hyp: hyp[0])
    return max(finished or live, key=rank)[1]


def sample(model, n, rng, **generate_kwargs):
    """n sentences (id lists) decoded from z ~ N(0, I); generate_kwargs as `generate`."""
    z = rng.standard_normal((n, model.latent)).astype(model.to_logits.W.dtype)
    return generate(model, z, rng=rng, **generate_kwargs)


def encode_mean(model, seqs):
    """Posterior means (n, d) of id lists (no <sos>/<eos>), in evaluation mode."""
    batch = pad_batch(seqs, mask_dtype=model.to_logits.W.dtype)
    with no_grad():
        mu, _ = model.encode(batch["enc_in"], batch["lengths"], training=False)
    return mu.data


def reconstruct(model, seqs, **generate_kwargs):
    """Decode each sentence's posterior mean: encode -> mu -> generate (greedy by default)."""
    return generate(model, encode_mean(model, seqs), **generate_kwargs)


def interpolate(model, seq_a, seq_b, n_steps=5, **generate_kwargs):
    """Sentences decoded along the line from mu(seq_a) to mu(seq_b), both ends included."""
    mu = encode_mean(model, [seq_a, seq_b])                               # (2, d)
    t = np.linspace(0, 1, n_steps, dtype=mu.dtype)[:, None]               # (n_steps, 1)
    return generate(model, (1 - t) * mu[0] + t * mu[1], **generate_kwargs)
