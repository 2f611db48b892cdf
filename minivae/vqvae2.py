"""VQ-VAE-2: two levels of discrete codes, a global top level and a local bottom level, with a
learned autoregressive prior over each.

Stage 1 trains the hierarchical autoencoder (paper's Algorithm 1), on 28 x 28 images cut into a
4 x 4 grid of non-overlapping 7 x 7 patches:

    h       = enc_b(patches(x))            (B, 16, F)  one MLP shared by all 16 patches: exactly a
                                                        convolution with kernel 7 and stride 7
    z_e,t   = enc_t(h flattened)           (B, L_t, D) the top codes are computed from the whole image
    k_t     = nearest code in E_t          (B, L_t)    z_q,t = E_t[k_t]
    c       = dec_t(z_q,t)                 (B, 16, F)  what the top level says about each patch
    z_e,b   = W [h, c] + b                 (B, 16, D)  the bottom quantiser reads the decoded top
    k_b     = nearest code in E_b          (B, 16)     z_q,b = E_b[k_b]
    x_logits = unpatch(decoder([z_q,b, c]))  (B, 784)  each patch from its own bottom code and the
                                                        top's account of it ("patch", the default)

The "patch" decoder is one MLP shared by the 16 patches: a transposed convolution with kernel 7
and stride 7 over the bottom map and the top map brought to the bottom's grid, as the paper's
decoder reads [upsample(top), bottom]. A bottom code can only draw its own 7 x 7 patch; what the
patches share must come from the top. The "dense" decoder instead reads all codes at once,
decoder([z_q,b, z_q,t]) -> (B, 784), so the 16 bottom codes together can describe the whole
digit without the top (docs/autoencoders.md measures both).

Both quantisers are the VQ-VAE's (vqvae.py): the straight-through estimator, a commitment term
beta * ||z_e - sg(z_q)||^2 per level, and the codebooks moved by EMA (vqvae.EMACodebook, the
training script's default for this model) or by the codebook loss, with dead-code restarts.
    objective = BCE(x, x_logits) + beta * (commit_t + commit_b)      [+ codebook_t + codebook_b]
                [+ w * ||c - sg(h)||^2, the optional top reconstruction term]
Because z_e,b is computed from the top's quantised vectors, the bottom codes only have to carry
what the top codes leave out: the top holds the global shape, the bottom the local detail. The
optional term (weight w, top_reconstruction) makes the top's account c regress the patch
features, the wiring of public VQ-VAE-2 code (A. Nichol's vq-vae-2; EugenHotaj/pytorch-generative),
not of the paper: it pushes the top to describe the whole image, so "top only" decodes are digits.

Stage 2 fits the priors (paper's Algorithm 2) to the codes of the training images:
    p(k_t)        TopPrior = vqvae.CodePrior, a GRU over the L_t top codes
    p(k_b | k_t)  BottomPrior, a GRU over the 16 bottom codes in raster order, told the top codes
                  at every step
The paper uses a PixelCNN with self-attention for the top and a conditional PixelCNN for the
bottom; a GRU in raster order is our stand-in for both: the same factorisation
p(k) = prod_i p(k_i | k_<i, ...), with a recurrent state instead of masked convolutions.
A third prior, p(k_b) without the top (an ablation), measures what the top tells the bottom.
Sampling is ancestral: k_t ~ p(k_t), then k_b ~ p(k_b | k_t), then the decoder's mean image.
Reference: Razavi, van den Oord & Vinyals 2019, arXiv:1906.00446, Sec. 3.1-3.2, Algorithms 1-2;
the quantiser, loss and EMA: van den Oord et al. 2017, arXiv:1711.00937, eq. 3 and Appendix A.1.
"""
import numpy as np

from . import ops
from .distributions import bernoulli_log_likelihood
from .engine import Tensor, no_grad
from .layers import MLP, Dense, Embedding, Module
from .vqvae import Codebook, CodePrior

SIDE, PATCH = 28, 7
GRID = SIDE // PATCH  # 4: patches per row and per column
N_BOTTOM = GRID * GRID  # 16 bottom codes per image
DECODERS = ("patch", "dense")


def patches(x):
    """Images (B, 784) as their 16 non-overlapping 7 x 7 patches in raster order, (B, 16, 49)."""
    B = len(x)
    return x.reshape(B, GRID, PATCH, GRID, PATCH).transpose(0, 1, 3, 2, 4).reshape(B, N_BOTTOM, PATCH * PATCH)


def unpatch(p):
    """The inverse of patches: (B, 16, 49) patches, arrays or Tensors, as (B, 784) images."""
    return p.reshape(-1, GRID, GRID, PATCH, PATCH).transpose(0, 1, 3, 2, 4).reshape(-1, SIDE * SIDE)


class BottomPrior(Module):
    """p(k_b | k_t): a CodePrior over the 16 bottom codes whose context is made from the top codes.

    context = tanh(Dense(concatenated embeddings of the L_t top codes))   (B, E)
    joins the GRU's input at every step, so each bottom code is drawn knowing the whole top level
    (the role of the paper's conditioning stack in its conditional PixelCNN).
    """

    def __init__(self, n_codes, n_top_codes, n_top, embed=32, hidden=128, rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.top_embedding = Embedding(n_top_codes, embed, rng, dtype)
        self.context = Dense(n_top * embed, embed, rng, dtype)
        self.prior = CodePrior(n_codes, N_BOTTOM, embed, hidden, rng, dtype, n_context=embed)

    def _context(self, top):
        return ops.tanh(self.context(self.top_embedding(top).reshape(len(top), -1)))  # (B, C)

    def log_prob(self, bottom, top):
        """log p(k_b | k_t) per image (B,), nats, for bottom codes (B, 16) and top codes (B, L_t)."""
        return self.prior.log_prob(bottom, self._context(top))

    def loss(self, bottom, top):
        nll = -ops.mean(self.log_prob(bottom, top))
        return nll, {"objective": float(nll.data), "nll": float(nll.data)}

    def sample(self, top, rng):
        """Bottom codes (B, 16) drawn from p(k_b | k_t) for each row of the top codes (B, L_t)."""
        return self.prior.sample(len(top), rng, self._context(top))


class VQVAE2(Module):
    """The two-level VQ-VAE with its three priors (top, bottom given top, bottom alone).

    n_top top codes and 16 bottom codes, each a D-vector from its own codebook (n_codes_top and
    n_codes_bottom entries): n_top * log2(K_t) + 16 * log2(K_b) bits per image. Grayscale pixels
    with the Bernoulli likelihood (BCE), as vqvae.VQVAE. decoder: "patch" (each patch from its own
    bottom code and the top's account of it) or "dense" (one MLP over all codes); top_reconstruction:
    the weight w of the optional term of the module docstring (0: the paper's loss).
    """

    likelihood = "bernoulli"

    def __init__(self, hidden=(400,), n_top=4, code_dim=16, n_codes_top=512, n_codes_bottom=512,
                 patch_hidden=128, patch_features=32, top_hidden=256, prior_hidden=64,
                 commitment=0.25, ema=True, top_reconstruction=0.0, decoder="patch", rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        D, F = int(code_dim), int(patch_features)
        self.n_top, self.code_dim, self.commitment, self.ema = int(n_top), D, float(commitment), bool(ema)
        self.n_codes_top, self.n_codes_bottom = int(n_codes_top), int(n_codes_bottom)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        self.top_reconstruction, self.decoder_kind = float(top_reconstruction), decoder
        self.enc_b = MLP([PATCH * PATCH, patch_hidden, F], "relu", rng, dtype)
        self.enc_t = MLP([N_BOTTOM * F, top_hidden, self.n_top * D], "relu", rng, dtype)
        self.dec_t = MLP([self.n_top * D, top_hidden, N_BOTTOM * F], "relu", rng, dtype)
        self.pre_quantise = Dense(2 * F, D, rng, dtype)
        if decoder == "patch":  # each patch from its own bottom code and the top's account of it
            self.decoder = MLP([D + F, *reversed(hidden), PATCH * PATCH], "relu", rng, dtype)
        else:
            self.decoder = MLP([(N_BOTTOM + self.n_top) * D, *reversed(hidden), SIDE * SIDE], "relu", rng, dtype)
        self.codebook_top = Codebook(n_codes_top, D, rng, dtype)
        self.codebook_bottom = Codebook(n_codes_bottom, D, rng, dtype)
        self.top_prior = CodePrior(n_codes_top, self.n_top, hidden=prior_hidden, rng=rng, dtype=dtype)
        self.bottom_prior = BottomPrior(n_codes_bottom, n_codes_top, self.n_top, hidden=prior_hidden,
                                        rng=rng, dtype=dtype)
        self.bottom_prior_alone = CodePrior(n_codes_bottom, N_BOTTOM, hidden=prior_hidden, rng=rng, dtype=dtype)

    def priors(self):
        """The three stage-2 modules, by name."""
        return {"top_prior": self.top_prior, "bottom_prior": self.bottom_prior,
                "bottom_prior_alone": self.bottom_prior_alone}

    def autoencoder_parameters(self):
        """Stage 1's parameters: all but the priors' (and but the codebooks', which EMA moves, if ema)."""
        skip = tuple(f"{name}." for name in self.priors())
        skip += ("codebook_top.", "codebook_bottom.") if self.ema else ()
        return [p for name, p in self.named_parameters() if not name.startswith(skip)]

    def encode(self, x, features=False):
        """Quantise both levels of the images x (B, 784): [(z_e, codes), ...] for top then bottom.

        z_e (B, L, D) are Tensors; codes (B, L) integer arrays. The bottom's z_e is computed from
        the top's quantised vectors through the straight-through estimator, so the decoder's
        gradient reaches the top encoder along that path too. With features=True, also the patch
        features h and the top's account of them c, both (B, 16, F) Tensors: (levels, h, c).
        """
        B = len(x)
        h = self.enc_b(Tensor(patches(x)))  # (B, 16, F)
        z_e_top = self.enc_t(h.reshape(B, -1)).reshape(B, self.n_top, self.code_dim)
        top = self.codebook_top.nearest(z_e_top.data)  # (B, L_t)
        z_top = ops.straight_through(z_e_top, self.codebook_top(top))
        c = self.dec_t(z_top.reshape(B, -1)).reshape(B, N_BOTTOM, -1)  # (B, 16, F)
        z_e_bottom = self.pre_quantise(ops.concatenate([h, c], axis=2))  # (B, 16, D)
        levels = [(z_e_top, top), (z_e_bottom, self.codebook_bottom.nearest(z_e_bottom.data))]
        return (levels, h, c) if features else levels

    def decode(self, z_top, z_bottom):
        """Bernoulli logits (B, 784) from the quantised vectors of both levels, (B, L_t, D) and (B, 16, D)."""
        B = len(z_top.data)
        if self.decoder_kind == "patch":
            c = self.dec_t(z_top.reshape(B, -1)).reshape(B, N_BOTTOM, -1)
            return unpatch(self.decoder(ops.concatenate([z_bottom, c], axis=2)))
        return self.decoder(ops.concatenate([z_bottom.reshape(B, -1), z_top.reshape(B, -1)], axis=1))

    def decode_codes(self, top, bottom):
        """Bernoulli logits (B, 784) for top codes (B, L_t) and bottom codes (B, 16)."""
        return self.decode(self.codebook_top(top), self.codebook_bottom(bottom))

    def reconstruction_error(self, x, x_logits):
        """-log p(x | codes) per image (B,): binary cross-entropy summed over pixels, nats."""
        return -bernoulli_log_likelihood(x, x_logits)

    def loss(self, x, noise=None):
        """(objective, stats); stats also carry each level's codes and z_e arrays, for EMA and restarts."""
        x = np.asarray(x.data if isinstance(x, Tensor) else x)
        levels, h, c = self.encode(x, features=True)
        books = (self.codebook_top, self.codebook_bottom)
        z_q = [book(codes) for book, (_, codes) in zip(books, levels)]
        x_logits = self.decode(*[ops.straight_through(z_e, q) for (z_e, _), q in zip(levels, z_q)])
        rec = ops.mean(self.reconstruction_error(Tensor(x), x_logits))
        sq = lambda a, b: ops.mean(ops.sum(ops.square(a - b), axis=(1, 2)))  # noqa: E731
        commit = self.commitment * sum(sq(z_e, ops.stop_gradient(q)) for (z_e, _), q in zip(levels, z_q))
        codebook = sum(sq(ops.stop_gradient(z_e), q) for (z_e, _), q in zip(levels, z_q))
        objective = rec + commit if self.ema else rec + commit + codebook
        top_rec = sq(c, ops.stop_gradient(h))  # how far the top's account of the patch features is from them
        if self.top_reconstruction:
            objective = objective + self.top_reconstruction * top_rec
        stats = {"objective": float(objective.data), "rec": float(rec.data), "commitment": float(commit.data),
                 "codebook": float(codebook.data), "top_rec": float(top_rec.data)}
        for name, (z_e, codes) in zip(("top", "bottom"), levels):
            stats.update({f"codes_{name}": codes, f"z_e_{name}": z_e.data})
        return objective, stats

    def codes(self, x, batch_size=1000):
        """Top codes (N, L_t) and bottom codes (N, 16) of every row of the array x."""
        with no_grad():
            levels = [self.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return tuple(np.concatenate([lv[j][1] for lv in levels]) for j in range(2))

    def mean_image(self, x_logits):
        """E[x | codes] as an array."""
        return ops.sigmoid(x_logits).data

    def reconstruct(self, x):
        """Mean images (B, 784) decoded from both levels' codes of x."""
        with no_grad():
            return self.mean_image(self.decode_codes(*self.codes(x)))

    def sample_codes(self, n, rng):
        """Ancestral sampling of n code pairs: top (n, L_t) ~ p(k_t), then bottom (n, 16) ~ p(k_b | k_t)."""
        with no_grad():
            top = self.top_prior.sample(n, rng)
            return top, self.bottom_prior.sample(top, rng)

    def sample(self, n, rng):
        """n images (n, 784): the decoder's mean images of ancestrally sampled codes."""
        with no_grad():
            return self.mean_image(self.decode_codes(*self.sample_codes(n, rng)))


def make_model(config, rng=None):
    """The VQVAE2 that scripts/train_autoencoder.py --model vqvae2 builds from its flags (a dict, as saved).

    A config without n_codes_bottom or decoder comes from the first version of this model: one K
    for both levels and the dense decoder.
    """
    return VQVAE2(hidden=tuple(config["hidden"]), n_top=config["latent"], code_dim=config["code_dim"],
                  n_codes_top=config["n_codes"], n_codes_bottom=config.get("n_codes_bottom") or config["n_codes"],
                  commitment=config["commitment"], ema=True, top_reconstruction=config.get("top_reconstruction", 0.0),
                  decoder=config.get("decoder", "dense"), rng=rng, dtype=np.dtype(config["dtype"]))
