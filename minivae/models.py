"""VAE models: an MLP VAE for images (and, later in this file, a sentence VAE)."""
import numpy as np

from . import ops
from .collapse import BNVAEMean, TauBatchNorm, bag_of_words_nll, ha_bits_kl
from .distributions import (bernoulli_log_likelihood, gaussian_log_likelihood, kl_standard_normal_per_dim,
                            sample_gaussian)
from .elbo import free_bits_kl, vae_objective
from .engine import Tensor, no_grad
from .layers import GRU, MLP, Dense, Embedding, Module, parameter
from .text import EOS_ID, PAD_ID, SOS_ID, bag_of_words, pad_batch

LIKELIHOODS = ("bernoulli", "gaussian")


class MLPVAE(Module):
    """A VAE with MLP encoder and decoder for flat inputs such as 28x28 images.

    encoder: x (B, n_in) -> MLP -> (mu, logvar), each (B, latent)
    decoder: z (B, latent) -> MLP -> x_logits (B, n_in)   [bernoulli: p = sigmoid(x_logits)]
                                   -> x_mean   (B, n_in)   [gaussian: with logvar x_logvar]
    The defaults are the PyTorch VAE example (pytorch/examples vae/main.py): 784-400-20 with ReLU,
    Bernoulli decoder; its mean and log-variance heads are one Dense layer here, split in two.
    """

    def __init__(self, n_in=784, hidden=(400,), latent=20, activation="relu", likelihood="bernoulli",
                 x_logvar=None, rng=None, dtype=np.float32):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood '{likelihood}'; choose from {LIKELIHOODS}")
        if int(latent) < 1:
            raise ValueError(f"latent size must be >= 1, got {latent}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.latent, self.likelihood = int(latent), likelihood
        self.encoder = MLP([n_in, *hidden, 2 * self.latent], activation, rng, dtype)
        self.decoder = MLP([self.latent, *reversed(hidden), n_in], activation, rng, dtype)
        if likelihood == "gaussian":  # a learned scalar log-variance, or a fixed one if given
            self.x_logvar = parameter(np.zeros((), dtype)) if x_logvar is None else np.asarray(x_logvar, dtype)

    def encode(self, x):
        """q(z|x): (mu, logvar), each (B, latent)."""
        h = self.encoder(x)  # (B, 2*latent)
        return h[:, :self.latent], h[:, self.latent:]

    def decode(self, z):
        """Decoder output for z: Bernoulli logits, or Gaussian means."""
        return self.decoder(z)  # (B, n_in)

    def log_likelihood(self, x, x_out):
        """log p(x|z) per example (B,), from the decoder output for z."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, x_out)
        return gaussian_log_likelihood(x, x_out, self.x_logvar)

    def loss(self, x, eps, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim"):
        """(objective, stats) for a batch x, with the reparameterisation noise eps (B, latent) given."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        mu, logvar = self.encode(x)
        z = sample_gaussian(mu, logvar, eps)
        return vae_objective(self.log_likelihood(x, self.decode(z)), mu, logvar, beta, free_bits,
                             free_bits_mode)

    def mean_image(self, x_out):
        """E[x|z] as an array: sigmoid of the logits, or the Gaussian mean."""
        return ops.sigmoid(x_out).data if self.likelihood == "bernoulli" else x_out.data

    def sample(self, n, rng):
        """n new images: decode z ~ N(0, I). Returns E[x|z] (n, n_in) as an array."""
        dtype = self.encoder.layers[0].W.dtype
        return self.mean_image(self.decode(Tensor(rng.standard_normal((n, self.latent)).astype(dtype))))

    def reconstruct(self, x):
        """E[x|z=mu(x)]: the decoder's image for the posterior mean of each input."""
        mu, _ = self.encode(Tensor(x))
        return self.mean_image(self.decode(mu))


# ============================================================================= sentence VAE

POSTERIOR_NORMS = (None, "bn", "tau")


class SentenceVAE(Module):
    """A VAE for sentences: a GRU encoder, a Gaussian latent z, and a GRU language model given z.

        encoder:  enc_in (B, T) -> embedding (B, T, E) -> GRU [bidirectional] -> final state
                  (B, H or 2H) -> Dense -> mu, logvar (B, d)     [BN-VAE: mu through BNVAEMean;
                  tau: both heads through TauBatchNorm, the second head being a std, not logvar]
        decoder:  h0 = tanh(Dense(z)) (B, H);  inputs = embedding(dec_in) (B, T+1, E),
                  [with z concatenated at every step: (B, T+1, E + d)] -> GRU -> Dense -> logits
                  (B, T+1, V);   log p(x|z) = sum_t mask_t * log_softmax(logits_t)[target_t]
        bag of words (optional, bow_hidden > 0): MLP z -> tanh -> V logits, see collapse.py.

    One embedding table is shared by encoder and decoder (as timbmg/Sentence-VAE). Batches come
    from text.pad_batch: dec_in = <sos> w_1..w_n, dec_target = w_1..w_n <eos>. Word dropout,
    historyless decoding and embedding dropout are applied by the caller, who passes the corrupted
    dec_in and the dropout mask to `loss`, so the loss stays a deterministic function.
    Default sizes are the benchmark configuration: embedding 64, GRU 128, latent 16.
    Reference: Bowman et al. 2016, CoNLL, arXiv:1511.06349, Sec. 3 (model) and 3.1 (optimisation).
    """

    def __init__(self, vocab_size, embedding=64, hidden=128, latent=16, bidirectional=False,
                 z_to_every_step=False, posterior_norm=None, bn_gamma=0.5, bn_tau=0.5, bow_hidden=0,
                 rng=None, dtype=np.float32):
        if posterior_norm not in POSTERIOR_NORMS:
            raise ValueError(f"posterior_norm must be one of {POSTERIOR_NORMS}, got {posterior_norm!r}")
        for name, value in (("vocab_size", vocab_size), ("embedding", embedding), ("hidden", hidden),
                            ("latent", latent)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.vocab_size, self.latent, self.hidden = int(vocab_size), int(latent), int(hidden)
        self.bidirectional, self.z_to_every_step = bool(bidirectional), bool(z_to_every_step)
        self.posterior_norm = posterior_norm
        self.embedding = Embedding(vocab_size, embedding, rng, dtype)
        self.encoder_rnn = GRU(embedding, hidden, rng, dtype, bidirectional=bidirectional)
        self.to_posterior = Dense(hidden * (1 + self.bidirectional), 2 * self.latent, rng, dtype)
        if posterior_norm == "bn":
            self.posterior_bn = BNVAEMean(self.latent, bn_gamma, dtype=dtype)
        elif posterior_norm == "tau":
            self.posterior_bn = TauBatchNorm(self.latent, bn_tau, dtype=dtype)
        self.to_initial_state = Dense(self.latent, hidden, rng, dtype)
        self.decoder_rnn = GRU(embedding + self.latent * self.z_to_every_step, hidden, rng, dtype)
        self.to_logits = Dense(hidden, vocab_size, rng, dtype)
        if bow_hidden:
            self.bow = MLP([self.latent, int(bow_hidden), vocab_size], "tanh", rng, dtype)

    # ----------------------------------------------------------------- the one place a GRU runs
    def _run_rnn(self, rnn, x, lengths, h0=None):
        """Run a GRU layer over a padded batch: (outputs (B, T, H'), final state (B, H')).

        Every recurrent computation of the model goes through here (generation steps through the
        decoder's cell directly), so a faster GRU implementation is swapped in at this one line.
        """
        return rnn(x, lengths, h0)

    # ----------------------------------------------------------------- encoder
    def encode(self, enc_in, lengths, training=False):
        """q(z|x): (mu, logvar), each (B, d), for padded word ids enc_in (B, T) and lengths (B,).

        training selects batch statistics (True) or running statistics (False) in the BN-VAE
        variants, and updates the running ones when True; without batch norm it changes nothing.
        """
        e = self.embedding(enc_in)                                    # (B, T, E)
        _, h = self._run_rnn(self.encoder_rnn, e, lengths)            # (B, H) or (B, 2H)
        out = self.to_posterior(h)                                    # (B, 2d)
        first, second = out[:, :self.latent], out[:, self.latent:]    # (B, d) each
        if self.posterior_norm == "bn":
            return self.posterior_bn(first, training), second
        if self.posterior_norm == "tau":
            return self.posterior_bn(first, second, training)         # second is a std head here
        return first, second

    # ----------------------------------------------------------------- decoder
    def initial_state(self, z):
        """The decoder's first hidden state: tanh(Dense(z)), (B, H)."""
        return ops.tanh(self.to_initial_state(z))

    def decoder_inputs(self, z, dec_in, emb_mask=None):
        """What the decoder GRU reads: embedded dec_in (B, T, E), times the dropout mask, [+ z]."""
        x = self.embedding(dec_in)                                    # (B, T, E)
        if emb_mask is not None:
            x = x * emb_mask
        if self.z_to_every_step:
            B, T = dec_in.shape
            every = z.reshape(B, 1, self.latent) * np.ones((1, T, 1), x.dtype)   # (B, T, d)
            x = ops.concatenate([x, every], axis=2)                  # (B, T, E + d)
        return x

    def decode(self, z, dec_in, lengths, emb_mask=None):
        """Teacher-forced next-token logits (B, T, V) for decoder inputs dec_in (B, T).

        lengths (B,) counts the real decoder steps (words + 1 for <sos>); padded steps give
        logits too (from a carried state), which the mask of the likelihood ignores.
        """
        x = self.decoder_inputs(z, dec_in, emb_mask)
        h, _ = self._run_rnn(self.decoder_rnn, x, lengths, self.initial_state(z))   # (B, T, H)
        B, T, H = h.shape
        # One (B*T, H) @ (H, V) product: a batched 3-D matmul is several times slower in NumPy.
        return self.to_logits(h.reshape(B * T, H)).reshape(B, T, self.vocab_size)   # (B, T, V)

    def log_likelihood(self, logits, dec_target, mask):
        """log p(x|z) per sentence (B,): sum_t mask_t * log_softmax(logits_t)[target_t].

        log_softmax at the target is written logits[target] - logsumexp(logits): the same number,
        without materialising a second (B, T, V) array.
        """
        B, T = dec_target.shape
        picked = logits[np.arange(B)[:, None], np.arange(T)[None, :], dec_target]   # (B, T)
        log_p = picked - ops.logsumexp(logits, axis=-1)                # (B, T)
        return ops.sum(log_p * mask.astype(logits.dtype), axis=1)     # (B,)

    # ----------------------------------------------------------------- objective
    def loss(self, batch, eps, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim", ha_bits=0.0,
             mdr_rate=0.0, mdr_multiplier=0.0, bow_weight=0.0, dec_in=None, emb_mask=None, training=True):
        """(objective, stats) for a text.pad_batch batch, with reparameterisation noise eps (B, d).

            objective = rec + beta * kl_term [+ mdr_multiplier * (mdr_rate - kl)] [+ bow_weight * bow]
        kl_term is mean_i sum_j KL_ij, floored by free bits (elbo.free_bits_kl, any mode) or by
        HA bits (d * collapse.ha_bits_kl; not both). Soft free bits are a beta chosen by
        collapse.SoftFreeBits; MDR's multiplier comes from collapse.MDR. dec_in replaces
        batch["dec_in"] (word-dropped or historyless inputs); emb_mask (B, T+1, E) is an embedding
        dropout mask from layers.dropout_mask. training: batch or running BN statistics.
        stats (floats, nats per SENTENCE): objective, rec (= -log p(x|z)), kl, elbo, neg_elbo,
        kl_term, beta, bow, mdr_multiplier; kl_per_dim (d,) array; n_sentences and n_tokens
        (predicted tokens, <eos> included) for per-token NLL and perplexity.
        """
        if free_bits and ha_bits:
            raise ValueError("use free bits or HA bits, not both (both floor the KL term)")
        enc_in, lengths, mask = batch["enc_in"], batch["lengths"], batch["mask"]
        mu, logvar = self.encode(enc_in, lengths, training)           # (B, d) each
        z = sample_gaussian(mu, logvar, eps)                          # (B, d)
        dec_in = batch["dec_in"] if dec_in is None else dec_in
        logits = self.decode(z, dec_in, lengths + 1, emb_mask)        # (B, T+1, V)
        log_px_z = self.log_likelihood(logits, batch["dec_target"], mask)   # (B,)

        kl_per_dim = kl_standard_normal_per_dim(mu, logvar)           # (B, d)
        kl = ops.mean(ops.sum(kl_per_dim, axis=1))
        rec = -ops.mean(log_px_z)
        if ha_bits:
            kl_term = self.latent * ha_bits_kl(kl_per_dim, ha_bits)
        else:
            kl_term = free_bits_kl(kl_per_dim, free_bits, free_bits_mode)
        objective = rec + beta * kl_term
        if mdr_multiplier:
            objective = objective + mdr_multiplier * (mdr_rate - kl)
        bow = None
        if bow_weight:
            if not hasattr(self, "bow"):
                raise ValueError("bow_weight > 0 needs a bag-of-words head: build the model with bow_hidden > 0")
            counts = bag_of_words(batch["dec_target"], mask, self.vocab_size)   # (B, V)
            bow = ops.mean(bag_of_words_nll(self.bow(z), counts))
            objective = objective + bow_weight * bow
        stats = {"objective": float(objective.data), "rec": float(rec.data), "kl": float(kl.data),
                 "elbo": -float(rec.data) - float(kl.data), "neg_elbo": float(rec.data) + float(kl.data),
                 "kl_term": float(kl_term.data), "beta": float(beta),
                 "bow": None if bow is None else float(bow.data), "mdr_multiplier": float(mdr_multiplier),
                 "kl_per_dim": kl_per_dim.data.mean(axis=0),
                 "n_sentences": len(lengths), "n_tokens": float(np.sum(mask))}
        return objective, stats

    # ----------------------------------------------------------------- batch-norm running statistics
    def named_buffers(self):
        """(name, array) of the non-trainable state: the BN running statistics, if any."""
        if self.posterior_norm is None:
            return []
        return [(f"posterior_bn.{k}", v) for k, v in self.posterior_bn.buffers().items()]

    def state_dict(self):
        """Parameters and BN running statistics, {name: array copy}."""
        return {**super().state_dict(), **{name: a.copy() for name, a in self.named_buffers()}}

    def load_state_dict(self, state):
        buffers = dict(self.named_buffers())
        missing = sorted(set(buffers) - set(state))
        if missing:
            raise ValueError(f"state has no batch-norm statistics {missing} (saved from a model without "
                             "BN-VAE?)")
        super().load_state_dict({k: v for k, v in state.items() if k not in buffers})
        for name, a in buffers.items():
            a[...] = np.asarray(state[name], dtype=a.dtype)

    # ----------------------------------------------------------------- generation
    def decoder_step(self, z, tokens, h):
        """One decoder step: previous tokens (B,) and state h (B, H) -> (logits (B, V), new h).

        The same ops as `decode` at one time step, so it gives the training path's logits.
        """
        x = self.embedding(np.asarray(tokens).reshape(-1, 1))          # (B, 1, E)
        if self.z_to_every_step:
            x = ops.concatenate([x, z.reshape(len(tokens), 1, self.latent)], axis=2)   # (B, 1, E + d)
        h = self.decoder_rnn.cell(x[:, 0], h)                          # (B, H)
        return self.to_logits(h), h

    def generate(self, z, method="greedy", max_len=30, temperature=1.0, beam_width=5,
                 length_norm=True, rng=None):
        """Decode latent codes z (n, d) into id lists, each ending in <eos> or max_len ids long.

        method: "greedy" (argmax each step), "sample" (softmax(logits / temperature), needs rng),
        or "beam" (beam search with beam_width hypotheses per sentence; with length_norm the
        finished hypotheses are ranked by log-probability / length (ids generated, <eos>
        included), which stops short sentences winning just by having fewer terms; without it
        by total log-probability). <pad> and
        <sos> are never generated. beam_width=1 is greedy decoding. Runs without a graph.
        """
        if method not in ("greedy", "sample", "beam"):
            raise ValueError(f"method must be 'greedy', 'sample' or 'beam', got {method!r}")
        if method == "sample" and (rng is None or not temperature > 0):
            raise ValueError("sampling needs an rng (np.random.Generator) and a temperature > 0")
        if int(max_len) < 1 or int(beam_width) < 1:
            raise ValueError(f"max_len and beam_width must be >= 1, got {max_len}, {beam_width}")
        dtype = self.to_logits.W.dtype
        z = np.asarray(z.data if isinstance(z, Tensor) else z, dtype=dtype)
        with no_grad():
            if method == "beam":
                return [self._beam_search(z[i:i + 1], max_len, beam_width, length_norm) for i in range(len(z))]
            return self._decode_left_to_right(z, method, max_len, temperature, rng)

    def _decode_left_to_right(self, z, method, max_len, temperature, rng):
        n = len(z)
        zt = Tensor(z)
        h = self.initial_state(zt)
        tokens = np.full(n, SOS_ID)
        out, done = [[] for _ in range(n)], np.zeros(n, dtype=bool)
        for _ in range(max_len):
            logits, h = self.decoder_step(zt, tokens, h)
            scores = _generation_scores(logits.data)                   # (n, V) float64
            if method == "greedy":
                tokens = np.argmax(scores, axis=1)
            else:
                p = np.exp(_log_softmax(scores / temperature))
                u = rng.random((n, 1))
                tokens = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), self.vocab_size - 1)
            for i in np.flatnonzero(~done):
                out[i].append(int(tokens[i]))
            done |= tokens == EOS_ID
            if done.all():
                break
        return out

    def _beam_search(self, z, max_len, beam_width, length_norm):
        """Beam search for one latent code z (1, d); returns the best id list.

        Each step extends every live hypothesis by every token and keeps the beam_width -
        len(finished) best extensions by total log-probability; an extension ending in <eos> is
        finished. Finished hypotheses are preferred over ones cut off at max_len.
        """
        zt = Tensor(z)
        live = [(0.0, [], self.initial_state(zt).data)]                  # (log-prob, ids, state (1, H))
        finished = []
        for _ in range(max_len):
            prev = np.array([ids[-1] if ids else SOS_ID for _, ids, _ in live])
            states = Tensor(np.concatenate([h for _, _, h in live]))      # (k, H)
            logits, h_new = self.decoder_step(Tensor(np.repeat(z, len(live), axis=0)), prev, states)
            total = np.array([[s] for s, _, _ in live]) + _log_softmax(_generation_scores(logits.data))  # (k, V)
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

    def sample(self, n, rng, **generate_kwargs):
        """n sentences (id lists) decoded from z ~ N(0, I); generate_kwargs as `generate`."""
        z = rng.standard_normal((n, self.latent)).astype(self.to_logits.W.dtype)
        return self.generate(z, rng=rng, **generate_kwargs)

    def encode_mean(self, seqs):
        """Posterior means (n, d) of id lists (no <sos>/<eos>), in evaluation mode."""
        batch = pad_batch(seqs, mask_dtype=self.to_logits.W.dtype)
        with no_grad():
            mu, _ = self.encode(batch["enc_in"], batch["lengths"], training=False)
        return mu.data

    def reconstruct(self, seqs, **generate_kwargs):
        """Decode each sentence's posterior mean: encode -> mu -> generate (greedy by default)."""
        return self.generate(self.encode_mean(seqs), **generate_kwargs)

    def interpolate(self, seq_a, seq_b, n_steps=5, **generate_kwargs):
        """Sentences decoded along the line from mu(seq_a) to mu(seq_b), both ends included."""
        mu = self.encode_mean([seq_a, seq_b])                              # (2, d)
        t = np.linspace(0, 1, n_steps, dtype=mu.dtype)[:, None]            # (n_steps, 1)
        return self.generate((1 - t) * mu[0] + t * mu[1], **generate_kwargs)


def _generation_scores(logits):
    """float64 logits with <pad> and <sos> ruled out (-inf): the decoder is never trained to emit them."""
    scores = logits.astype(np.float64)
    scores[:, [PAD_ID, SOS_ID]] = -np.inf
    return scores


def _log_softmax(scores):
    """log softmax over the last axis of a NumPy array (entries of -inf allowed)."""
    m = np.max(scores, axis=-1, keepdims=True)
    return scores - (m + np.log(np.sum(np.exp(scores - m), axis=-1, keepdims=True)))
