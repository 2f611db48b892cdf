"""The sentence VAE: a GRU encoder, a Gaussian latent z and a GRU language model given z.

Its objective is elbo.vae_objective (reconstruction + beta * floored KL) with two optional
terms added on top in `SentenceVAE.loss`: MDR's Lagrangian term and the bag-of-words loss
(collapse.py). Generating sentences (greedy, sampling, beam search) is in decoding.py.
"""
import numpy as np

from . import ops
from .collapse import BNVAEMean, TauBatchNorm, bag_of_words_nll, historyless_inputs
from .distributions import kl_standard_normal, sample_gaussian
from .elbo import vae_objective
from .fused import softmax_cross_entropy
from .layers import GRU, MLP, Dense, Embedding, Module
from .text import bag_of_words

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
    from text.pad_batch: dec_in = <sos> w_1..w_n, dec_target = w_1..w_n <eos>. Word dropout and
    embedding dropout are applied by the caller, who passes the corrupted dec_in and the dropout
    mask to `loss`, so the loss stays a deterministic function. historyless=True makes the decoder
    Bowman et al.'s inputless one: it reads <unk> in place of every word (collapse.historyless_inputs),
    in training, in evaluation and in generation (decoding.decoder_step), so it is always scored
    on the inputs it was trained with.
    Default sizes are the benchmark configuration: embedding 64, GRU 128, latent 16.
    Reference: Bowman et al. 2016, CoNLL, arXiv:1511.06349, Sec. 3 (model) and 3.1 (optimisation).
    """

    def __init__(self, vocab_size, embedding=64, hidden=128, latent=16, bidirectional=False,
                 z_to_every_step=False, posterior_norm=None, bn_gamma=0.5, bn_tau=0.5, bow_hidden=0,
                 historyless=False, rng=None, dtype=np.float32):
        if posterior_norm not in POSTERIOR_NORMS:
            raise ValueError(f"posterior_norm must be one of {POSTERIOR_NORMS}, got {posterior_norm!r}")
        for name, value in (("vocab_size", vocab_size), ("embedding", embedding), ("hidden", hidden),
                            ("latent", latent)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.vocab_size, self.latent, self.hidden = int(vocab_size), int(latent), int(hidden)
        self.bidirectional, self.z_to_every_step = bool(bidirectional), bool(z_to_every_step)
        self.historyless = bool(historyless)
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
        """What the decoder GRU reads: embedded dec_in (B, T, E), times the dropout mask, [+ z].

        The historyless decoder reads <unk> in place of every word of dec_in.
        """
        if self.historyless:
            dec_in = historyless_inputs(dec_in)
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
        # One (B*T, H) @ (H, V) product, one BLAS call; NumPy runs a (B, T, H) @ (H, V) matmul as B products.
        return self.to_logits(h.reshape(B * T, H)).reshape(B, T, self.vocab_size)   # (B, T, V)

    def log_likelihood(self, logits, dec_target, mask):
        """log p(x|z) per sentence (B,): sum_t mask_t * log_softmax(logits_t)[target_t].

        -log_softmax at the target is fused.softmax_cross_entropy, one node whose backward reuses
        the forward's softmax; fused.softmax_cross_entropy_composed is the same number from ops.
        """
        nll = softmax_cross_entropy(logits, target=dec_target)        # (B, T)
        return -ops.sum(nll * mask.astype(logits.dtype), axis=1)      # (B,)

    # ----------------------------------------------------------------- objective
    def loss(self, batch, eps, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim", ha_bits=0.0,
             mdr_rate=0.0, mdr_multiplier=0.0, bow_weight=0.0, dec_in=None, emb_mask=None, training=True):
        """(objective, stats) for a text.pad_batch batch, with reparameterisation noise eps (B, d).

            objective = rec + beta * kl_term                      elbo.vae_objective
                        [+ mdr_multiplier * (mdr_rate - kl)]      MDR (collapse.MDR)
                        [+ bow_weight * bow]                      bag-of-words loss
        kl_term is the KL floored by free bits (any mode) or HA bits (elbo.kl_term). Soft free
        bits are a beta chosen by collapse.SoftFreeBits; MDR's multiplier comes from collapse.MDR.
        dec_in replaces batch["dec_in"] (word-dropped or historyless inputs); emb_mask (B, T+1, E)
        is an embedding dropout mask from layers.dropout_mask. training: batch or running BN
        statistics. stats (nats per SENTENCE): those of elbo.vae_objective (objective, rec, kl,
        elbo, neg_elbo, kl_term, beta, kl_per_dim), plus bow, mdr_multiplier, and n_sentences and
        n_tokens (predicted tokens, <eos> included) for per-token NLL and perplexity.
        """
        if bow_weight and not hasattr(self, "bow"):
            raise ValueError("bow_weight > 0 needs a bag-of-words head: build the model with bow_hidden > 0")
        enc_in, lengths, mask = batch["enc_in"], batch["lengths"], batch["mask"]
        mu, logvar = self.encode(enc_in, lengths, training)           # (B, d) each
        z = sample_gaussian(mu, logvar, eps)                          # (B, d)
        dec_in = batch["dec_in"] if dec_in is None else dec_in
        logits = self.decode(z, dec_in, lengths + 1, emb_mask)        # (B, T+1, V)
        log_px_z = self.log_likelihood(logits, batch["dec_target"], mask)   # (B,)
        objective, stats = vae_objective(log_px_z, mu, logvar, beta, free_bits, free_bits_mode, ha_bits)

        if mdr_multiplier:  # the Lagrangian term of the constraint KL >= mdr_rate
            kl = ops.mean(kl_standard_normal(mu, logvar))
            objective = objective + mdr_multiplier * (mdr_rate - kl)
        bow = None
        if bow_weight:
            counts = bag_of_words(batch["dec_target"], mask, self.vocab_size)   # (B, V)
            bow = ops.mean(bag_of_words_nll(self.bow(z), counts))
            objective = objective + bow_weight * bow
        stats.update(objective=float(objective.data), bow=None if bow is None else float(bow.data),
                     mdr_multiplier=float(mdr_multiplier), n_sentences=len(lengths), n_tokens=float(np.sum(mask)))
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
