"""The image VAE: an MLP encoder and decoder around a Gaussian latent (the sentence VAE is sentence_vae.py).

One class covers the variants the MNIST script offers: a Bernoulli or a Gaussian decoder (whose
log-variance is learned, one scalar or one per pixel, or fixed), and the conditional VAE, whose
encoder and decoder are also given the one-hot class label. `make_model` builds it from a run's
flags, so the training script and `saved.load_model` construct it the same way.

In the conditional VAE the label can join the decoder's input only, or the input of every decoder
layer (`label_into="every-layer"`): then each layer computes act(W [h, y] + b), so the label
reaches the output through a one-layer path as well as through the hidden units. Whether prior
samples obey their label is decided by the latent size, not by where the label enters: a small
z has room for the style only (docs/guide.md, section 7, measures both).
"""
import numpy as np

from . import ops
from .distributions import bernoulli_log_likelihood, gaussian_log_likelihood, sample_gaussian
from .elbo import iw_objective, vae_objective
from .engine import Tensor
from .layers import ACTIVATIONS, MLP, Dense, Module, parameter

LIKELIHOODS = ("bernoulli", "gaussian")
LEARNED_X_LOGVAR = ("learned-scalar", "learned-pixel")  # else x_logvar is a fixed number
LABEL_INTO = ("input", "every-layer")  # where the conditional decoder reads the one-hot label


def one_hot(labels, n_classes, dtype=np.float32):
    """Integer labels (B,) -> one-hot rows (B, n_classes); a label outside 0..n_classes-1 is refused."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (len(labels) and not
                                                             0 <= labels.min() <= labels.max() < n_classes):
        raise ValueError(f"labels must be a 1-D array of integers in 0..{n_classes - 1}, got {labels!r:.80}")
    return np.eye(n_classes, dtype=dtype)[labels]


class LabelledMLP(Module):
    """An MLP that reads a vector y (B, C), e.g. a one-hot label, at every layer.

    h_0 = x;  h_{l+1} = act(W_l [h_l, y] + b_l);  the last layer has no activation.
    sizes = [n_in, h1, ..., n_out] as for layers.MLP; layer l has sizes[l] + C inputs.
    """

    def __init__(self, sizes, n_extra, activation, rng, dtype=np.float32):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose from {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.layers = [Dense(a + n_extra, b, rng, dtype) for a, b in zip(sizes[:-1], sizes[1:])]

    def __call__(self, h, y):
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            h = layer(ops.concatenate([h, y], axis=1))  # (B, n_l + C) -> (B, n_{l+1})
            if i < len(self.layers) - 1:
                h = act(h)
        return h


class MLPVAE(Module):
    """A VAE with MLP encoder and decoder for flat inputs such as 28x28 images.

    encoder: x (B, n_in) [+ one-hot y (B, C)] -> MLP -> (mu, logvar), each (B, latent)
    decoder: z (B, latent) [+ one-hot y (B, C)] -> MLP -> x_logits (B, n_in)  [bernoulli: p = sigmoid]
                                                        -> x_mean   (B, n_in)  [gaussian, with x_logvar]
    The defaults are the PyTorch VAE example (pytorch/examples vae/main.py): 784-400-20 with ReLU,
    Bernoulli decoder; its mean and log-variance heads are one Dense layer here, split in two.

    x_logvar (Gaussian decoder only): "learned-scalar" (None means this too), "learned-pixel"
    (one log-variance per input dimension), or a number (fixed). The Gaussian's normalising
    constant is part of log p(x|z), so the ELBO is in true nats (of a density: it can be positive).
    n_classes > 0 makes it a conditional VAE: every method that runs the encoder or the decoder
    then needs the integer labels y (B,), and the ELBO bounds log p(x|y); the prior stays N(0, I).
    label_into says where the decoder reads the label: "input" (appended to z) or "every-layer"
    (appended to the input of each of its layers, LabelledMLP); the encoder reads it with x.
    Reference: Sohn et al. 2015, "Learning Structured Output Representation using Deep Conditional
    Generative Models" (NeurIPS), Sec. 3 (here with an input-independent prior).
    """

    def __init__(self, n_in=784, hidden=(400,), latent=20, activation="relu", likelihood="bernoulli",
                 x_logvar=None, rng=None, dtype=np.float32, n_classes=0, label_into="input"):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood '{likelihood}'; choose from {LIKELIHOODS}")
        if int(latent) < 1 or int(n_classes) < 0:
            raise ValueError(f"need latent >= 1 and n_classes >= 0, got latent={latent}, n_classes={n_classes}")
        x_logvar = "learned-scalar" if x_logvar is None else x_logvar
        if isinstance(x_logvar, str) and x_logvar not in LEARNED_X_LOGVAR:
            raise ValueError(f"x_logvar must be one of {LEARNED_X_LOGVAR} or a number, got {x_logvar!r}")
        if label_into not in LABEL_INTO:
            raise ValueError(f"label_into must be one of {LABEL_INTO}, got {label_into!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.latent, self.likelihood, self.n_classes = int(latent), likelihood, int(n_classes)
        self.label_into = label_into if self.n_classes else "input"  # an unconditional VAE reads no label
        self.encoder = MLP([n_in + self.n_classes, *hidden, 2 * self.latent], activation, rng, dtype)
        if self.label_into == "every-layer":
            self.decoder = LabelledMLP([self.latent, *reversed(hidden), n_in], self.n_classes, activation, rng, dtype)
        else:
            self.decoder = MLP([self.latent + self.n_classes, *reversed(hidden), n_in], activation, rng, dtype)
        if likelihood == "gaussian":  # a learned log-variance (a scalar, or one per pixel), or a fixed one
            shape = (n_in,) if x_logvar == "learned-pixel" else ()
            self.x_logvar = (parameter(np.zeros(shape, dtype)) if x_logvar in LEARNED_X_LOGVAR
                             else np.asarray(float(x_logvar), dtype))

    def _one_hot(self, y, dtype):
        """The labels y (B,) as a one-hot Tensor (B, C); None in an unconditional VAE (which refuses labels)."""
        if not self.n_classes:
            if y is not None:
                raise ValueError("this VAE is not conditional: call it without labels y")
            return None
        if y is None:
            raise ValueError(f"this conditional VAE needs the labels y (B,), integers in 0..{self.n_classes - 1}")
        return Tensor(one_hot(y, self.n_classes, dtype))

    def _with_label(self, a, y):
        """a (B, k) with the one-hot label appended (B, k + C) in a conditional VAE; else a itself."""
        y_onehot = self._one_hot(y, a.dtype)
        return a if y_onehot is None else ops.concatenate([a, y_onehot], axis=1)

    def encode(self, x, y=None):
        """q(z|x) [or q(z|x, y)]: (mu, logvar), each (B, latent)."""
        h = self.encoder(self._with_label(x if isinstance(x, Tensor) else Tensor(x), y))  # (B, 2*latent)
        return h[:, :self.latent], h[:, self.latent:]

    def decode(self, z, y=None):
        """Decoder output for z [and y]: Bernoulli logits, or Gaussian means, (B, n_in)."""
        z = z if isinstance(z, Tensor) else Tensor(z)
        if self.label_into == "every-layer":
            return self.decoder(z, self._one_hot(y, z.dtype))
        return self.decoder(self._with_label(z, y))

    def log_likelihood(self, x, x_out):
        """log p(x|z) per example (B,), from the decoder output for z."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, x_out)
        return gaussian_log_likelihood(x, x_out, self.x_logvar)

    def loss(self, x, eps, beta=1.0, free_bits=0.0, free_bits_mode="batch_dim", y=None):
        """(objective, stats) for a batch x [with labels y], the reparameterisation noise eps (B, latent) given."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        mu, logvar = self.encode(x, y)
        z = sample_gaussian(mu, logvar, eps)
        return vae_objective(self.log_likelihood(x, self.decode(z, y)), mu, logvar, beta, free_bits,
                             free_bits_mode)

    def iw_loss(self, x, eps, beta=1.0, y=None):
        """(objective, stats) of the K-sample importance-weighted bound (elbo.iw_objective).

        eps (K, B, latent): K reparameterisation draws per example. The encoder runs once; the
        decoder on all K*B samples at once. K = 1 gives the ELBO with the analytic KL replaced by
        its one-sample estimate.
        """
        x = x if isinstance(x, Tensor) else Tensor(x)
        K, B, d = eps.shape
        mu, logvar = self.encode(x, y)  # (B, d) each
        z = sample_gaussian(mu, logvar, eps)  # (K, B, d)
        y_k = None if y is None else np.tile(y, K)  # the labels of every sample, for the CVAE
        x_out = self.decode(ops.reshape(z, shape=(K * B, d)), y_k)  # (K*B, n_in)
        log_px_z = self.log_likelihood(x, ops.reshape(x_out, shape=(K, B, -1)))  # (K, B): x broadcasts over K
        return iw_objective(log_px_z, z, mu, logvar, beta)

    def init_output_bias(self, x_mean):
        """Start the decoder's output bias at the data's average image x_mean (n_in,): its log-odds
        (Bernoulli, the mean clipped to [1e-3, 1 - 1e-3]) or the mean itself (Gaussian), so the first
        steps need not learn what every image shares. The weights keep their random start.
        """
        x_mean = np.asarray(x_mean, dtype=np.float64)
        if self.likelihood == "bernoulli":
            p = np.clip(x_mean, 1e-3, 1 - 1e-3)
            x_mean = np.log(p) - np.log1p(-p)
        bias = self.decoder.layers[-1].b
        bias.data[...] = x_mean.astype(bias.dtype)

    def mean_image(self, x_out):
        """E[x|z] as an array: sigmoid of the logits, or the Gaussian mean (unbounded: not clipped)."""
        return ops.sigmoid(x_out).data if self.likelihood == "bernoulli" else x_out.data

    def sample(self, n, rng, y=None):
        """n new images [of classes y]: decode z ~ N(0, I). Returns E[x|z] (n, n_in) as an array."""
        dtype = self.encoder.layers[0].W.dtype
        return self.mean_image(self.decode(Tensor(rng.standard_normal((n, self.latent)).astype(dtype)), y))

    def reconstruct(self, x, y=None):
        """E[x|z=mu(x)]: the decoder's image for the posterior mean of each input."""
        mu, _ = self.encode(Tensor(x), y)
        return self.mean_image(self.decode(mu, y))


def make_model(config, rng=None):
    """The MLPVAE that a run of scripts/train_mnist_vae.py with these flags (a dict, as saved) trains.

    Reads hidden, latent, activation, likelihood, x_logvar, conditional, label_into and dtype; a
    config without x_logvar, conditional, label_into or dtype gets its default (learned-scalar,
    unconditional, input, float32).
    """
    n_classes = 10 if config.get("conditional") else 0  # MNIST and Fashion-MNIST both have 10 classes
    return MLPVAE(784, config["hidden"], config["latent"], config["activation"], config["likelihood"],
                  config.get("x_logvar"), rng=rng, dtype=np.dtype(config.get("dtype", "float32")),
                  n_classes=n_classes, label_into=config.get("label_into", "input"))
