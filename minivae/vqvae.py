"""VQ-VAE: a discrete code, learned by nearest-neighbour quantisation, and a GRU prior over it.

    z_e = encoder(x)                      (B, L, D): a short sequence of L code vectors
    k_l = argmin_k ||z_e,l - E_k||^2      (B, L): the nearest of K codebook vectors E (K, D)
    z_q = E[k]                            (B, L, D)
    x_out = decoder(z_e + stop_gradient(z_q - z_e))     the straight-through estimator

The argmin has no gradient, so the decoder's gradient with respect to z_q is copied onto z_e
unchanged (ops.straight_through). Two terms train what that copy cannot:
    codebook   = ||stop_gradient(z_e) - z_q||^2       moves the chosen codes towards the encoder
    commitment = beta * ||z_e - stop_gradient(z_q)||^2  keeps the encoder near its codes
(each summed over L and D, averaged over the batch). With ema=True the codebook term is dropped
and EMACodebook moves each code to a running average of the encoder outputs assigned to it.
A code that no encoder output is near gets no gradient and no EMA update, so it stays unused
for good: restart_dead_codes moves such codes onto encoder outputs (the training script starts
the whole codebook there and restarts the unused codes every few dozen steps, more often in a
short run: restart_due).
The prior is learned afterwards: CodePrior, a GRU over the L code indices, so that sampling
codes from it and decoding them generates new images.
Reference: van den Oord et al. 2017, arXiv:1711.00937, eq. 3 (loss), Appendix A.1 (EMA).
"""
import numpy as np

from . import ops
from .autoencoders import Autoencoder
from .engine import Tensor
from .fused import softmax_cross_entropy
from .layers import GRU, Dense, Embedding, Module, parameter


class Codebook(Module):
    """K code vectors E (K, D), initialised ~ Uniform(-1/K, 1/K) as in the reference implementations."""

    def __init__(self, n_codes, dim, rng, dtype=np.float32):
        self.E = parameter(rng.uniform(-1 / n_codes, 1 / n_codes, (n_codes, dim)).astype(dtype))

    def nearest(self, z_e):
        """Index of the nearest code of each vector of the array z_e (..., D): integers (...)."""
        E = self.E.data
        # ||z - E_k||^2 = ||z||^2 - 2 z.E_k + ||E_k||^2; ||z||^2 is the same for every k
        return np.argmin((E ** 2).sum(1) - 2 * z_e @ E.T, axis=-1)

    def __call__(self, idx):
        return self.E[idx]  # (..., D); the gradient scatter-adds into the rows used


def perplexity(idx, n_codes):
    """exp(entropy of code usage) in [1, K]: how many codes are used, as if uniformly."""
    p = np.bincount(np.ravel(idx), minlength=n_codes) / np.size(idx)
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def code_usage(idx, n_codes):
    """How the codes idx (N, L) of N images use a codebook of n_codes, per position and over all of them.

    A pooled histogram hides a collapsed code: if position l always takes code k_l, the L codes
    are used equally often and the pooled perplexity is L, yet every image has the same code. So:
    codes_used_per_position[l], perplexity_per_position[l]: position l's distinct codes and
    exp(entropy) over the N images; codes_used, perplexity: the same pooled over all N * L codes;
    distinct_sequences: how many different whole codes (k_1..k_L) the N images have.
    """
    idx = np.asarray(idx)
    return {"codes_used_per_position": [int(np.unique(column).size) for column in idx.T],
            "perplexity_per_position": [perplexity(column, n_codes) for column in idx.T],
            "codes_used": int(np.unique(idx).size), "perplexity": perplexity(idx, n_codes),
            "distinct_sequences": int(len(np.unique(idx, axis=0)))}


class VQVAE(Autoencoder):
    """Encoder MLP -> L code vectors of size D -> quantised against a Codebook of K -> decoder MLP."""

    def __init__(self, n_in=784, hidden=(400,), n_latents=8, code_dim=16, n_codes=64, activation="relu",
                 likelihood="bernoulli", commitment=0.25, ema=False, rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        super().__init__(n_in, hidden, n_latents * code_dim, activation, likelihood, "linear", rng, dtype)
        self.n_latents, self.code_dim, self.n_codes = int(n_latents), int(code_dim), int(n_codes)
        self.codebook = Codebook(n_codes, code_dim, rng, dtype)
        self.commitment, self.ema = float(commitment), bool(ema)

    def encode(self, x):
        """z_e (B, L, D)."""
        return self.encoder(x).reshape(-1, self.n_latents, self.code_dim)

    def decode_codes(self, idx):
        """Decoder output for code indices (B, L)."""
        return self.decode(self.codebook(idx).reshape(len(idx), -1))

    def loss(self, x, noise=None):
        """(objective, stats); stats also carry the arrays "codes" (B, L) and "z_e" for EMA and restarts."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        z_e = self.encode(x)  # (B, L, D)
        idx = self.codebook.nearest(z_e.data)  # (B, L)
        z_q = self.codebook(idx)  # (B, L, D)
        x_out = self.decode(ops.straight_through(z_e, z_q).reshape(len(idx), -1))
        rec = ops.mean(self.reconstruction_error(x, x_out))
        commit = self.commitment * ops.mean(ops.sum(ops.square(z_e - ops.stop_gradient(z_q)), axis=(1, 2)))
        codebook = ops.mean(ops.sum(ops.square(ops.stop_gradient(z_e) - z_q), axis=(1, 2)))
        objective = rec + commit if self.ema else rec + commit + codebook
        stats = {"objective": float(objective.data), "rec": float(rec.data), "commitment": float(commit.data),
                 "codebook": float(codebook.data), "perplexity": perplexity(idx, self.n_codes),
                 "codes": idx, "z_e": z_e.data}
        return objective, stats

    def reconstruct(self, x):
        return self.mean_image(self.decode_codes(self.codebook.nearest(self.encode(Tensor(x)).data)))

    def codes(self, x, batch_size=1000):
        """Code indices (N, L) of every row of the array x."""
        return np.concatenate([self.codebook.nearest(self.encode(Tensor(x[i:i + batch_size])).data)
                               for i in range(0, len(x), batch_size)])


class EMACodebook:
    """The exponential-moving-average codebook update, used instead of the codebook loss.

        N_k <- decay * N_k + (1 - decay) * n_k             n_k: vectors assigned to code k now
        m_k <- decay * m_k + (1 - decay) * sum_{i: k_i = k} z_e,i
        E_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j

    N~ is N with Laplace smoothing, so an unused code never divides by zero. Like an optimiser,
    it holds running state (N, m) that a checkpoint saves; it starts at N = 1, m = E (E unchanged).
    Reference: van den Oord et al. 2017, arXiv:1711.00937, Appendix A.1, eqs. 6-8.
    """

    def __init__(self, codebook, decay=0.99, eps=1e-5):
        self.codebook, self.decay, self.eps = codebook, float(decay), float(eps)
        self.counts = np.ones(len(codebook.E.data))
        self.sums = codebook.E.data.astype(np.float64)

    def step(self, z_e, idx):
        """Update N, m from the encoder outputs z_e (..., D) and their codes idx (...), then set E."""
        K, z = len(self.counts), z_e.reshape(-1, z_e.shape[-1]).astype(np.float64)
        onehot = np.eye(K)[np.ravel(idx)]  # (N, K)
        self.counts = self.decay * self.counts + (1 - self.decay) * onehot.sum(0)
        self.sums = self.decay * self.sums + (1 - self.decay) * onehot.T @ z
        total = self.counts.sum()
        smoothed = (self.counts + self.eps) / (total + K * self.eps) * total
        self.codebook.E.data[...] = self.sums / smoothed[:, None]

    def state_dict(self):
        return {"counts": self.counts.copy(), "sums": self.sums.copy()}

    def load_state_dict(self, state):
        self.counts, self.sums = np.array(state["counts"]), np.array(state["sums"])


def restart_dead_codes(codebook, usage, z_e, rng, ema=None):
    """Move every code with usage == 0 onto a random encoder output from z_e (..., D); return how many.

    A code that no encoder output is near gets no gradient (and no EMA update) ever again; placing
    it where the encoder's outputs are gives it a chance. Reference: Dhariwal et al. 2020,
    arXiv:2005.00341 (Jukebox), Sec. 3.1 ("random restarts" of codes below a usage threshold).
    """
    dead = np.flatnonzero(np.asarray(usage) == 0)
    if len(dead):
        z = z_e.reshape(-1, z_e.shape[-1])
        codebook.E.data[dead] = z[rng.integers(0, len(z), len(dead))]
        if ema is not None:
            ema.counts[dead], ema.sums[dead] = 1.0, codebook.E.data[dead]
    return len(dead)


def restart_due(step, restart_every, steps_per_epoch):
    """Whether dead codes are restarted after training step `step` (0-based, counted over the run).

    Every restart_every steps within each epoch (0: never), but at least every steps_per_epoch // 4
    steps, so that short runs restart too (with restart_every = 50, a run of two 16-step epochs
    would never restart and its codebook would stay collapsed), and never within an epoch's last
    interval, so that every restarted code is trained before the epoch, and the run, ends. A pure
    function of the step: a resumed run restarts exactly where an uninterrupted one does.
    """
    every = min(restart_every, max(1, steps_per_epoch // 4))
    in_epoch = step % steps_per_epoch + 1  # steps done in this epoch, this one included
    return restart_every > 0 and in_epoch % every == 0 and in_epoch + every <= steps_per_epoch


class CodePrior(Module):
    """An autoregressive prior p(k_1..k_L) = prod_l p(k_l | k_<l): a GRU over the code sequence.

    Input at step l is the embedding of k_{l-1} (a start token K at l = 1); the GRU state gives
    the logits of k_l through a Dense layer. With n_context > 0 it is a conditional prior
    p(k | c): a context vector c joins every step's input (vqvae2.py conditions the bottom codes
    on the top ones this way). Reference: van den Oord et al. 2017, Sec. 3.2 (they use a
    PixelCNN over a grid; a GRU over our short sequence is the same idea).
    """

    def __init__(self, n_codes, n_latents, embed=32, hidden=128, rng=None, dtype=np.float32, n_context=0):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.n_codes, self.n_latents, self.n_context = int(n_codes), int(n_latents), int(n_context)
        self.embedding = Embedding(n_codes + 1, embed, rng, dtype)  # row K is the start token
        self.gru = GRU(embed + self.n_context, hidden, rng, dtype)
        self.out = Dense(hidden, n_codes, rng, dtype)

    def _inputs(self, tokens, context):
        """The GRU's inputs (B, T, E + C): the embeddings of tokens (B, T), each followed by the context (B, C)."""
        x = self.embedding(tokens)  # (B, T, E)
        if context is None:
            return x
        return ops.concatenate([x, ops.stack([context] * tokens.shape[1], axis=1)], axis=2)

    def log_prob(self, idx, context=None):
        """log p(k | context) per sequence (B,), nats, for code indices idx (B, L).

        context (B, n_context), a Tensor, is what the distribution is conditioned on: it joins the
        input at every step (None for the unconditional prior).
        """
        B, L = idx.shape
        inputs = np.concatenate([np.full((B, 1), self.n_codes), idx[:, :-1]], axis=1)
        h, _ = self.gru(self._inputs(inputs, context), np.full(B, L))  # (B, L, H)
        # -log softmax(logits)[k] per step, fused: its backward reuses the forward's softmax
        return -ops.sum(softmax_cross_entropy(self.out(h), target=idx), axis=1)  # (B, L, K) logits -> (B,)

    def loss(self, idx, context=None):
        nll = -ops.mean(self.log_prob(idx, context))
        return nll, {"objective": float(nll.data), "nll": float(nll.data)}

    def sample(self, n, rng, context=None):
        """n code sequences (n, L), each code drawn from p(k_l | k_<l, context) in turn."""
        cell, token = self.gru.cell, np.full(n, self.n_codes)
        h = Tensor(np.zeros((n, cell.n_hidden), cell.W_h.dtype))
        codes = []
        for _ in range(self.n_latents):
            h = cell(self._inputs(token[:, None], context).reshape(n, -1), h)
            p = ops.softmax(self.out(h)).data.astype(np.float64)  # (n, K)
            token = (p.cumsum(1) < rng.random((n, 1))).sum(1).clip(0, self.n_codes - 1)
            codes.append(token)
        return np.stack(codes, axis=1)
