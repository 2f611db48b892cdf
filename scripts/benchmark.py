"""Time minivae against HIPS autograd and PyTorch (if installed) on two VAE training workloads.

    python scripts/benchmark.py --out runs/benchmark.json
    python scripts/benchmark.py --quick --threads 1 --frameworks minivae torch

Besides the three frameworks, `numpy` is the same two models written by hand in plain NumPy:
gradients derived on paper, no graph, no array the maths does not need, minivae's Adam. It is
the floor for an autodiff engine on NumPy (minivae's time minus its time is the engine's
overhead), and its Adam time is reported apart, so the floor without the optimiser is printed too.

Workloads, identical in every framework: the same initial weights (minivae's, copied into the
others), data order, noise (eps and word-dropout masks are drawn once and passed in), batch
size, float32 arithmetic and thread count.
  mlp  The MNIST VAE recipe: 784-400-20 ReLU, Bernoulli ("BCE") likelihood + analytic KL,
       Adam 1e-3 (each framework's usual Adam), batch 128, over the 60,000 Fashion-MNIST
       training images (--data-dir), or a synthetic set of the same size when they are absent.
       Reported as seconds per epoch.
  gru  A sentence VAE: shared embedding (vocab 2,000, size 64) -> GRU encoder (128) -> mu,
       logvar (16) -> z -> h0 = tanh(Dense(z)) -> GRU decoder (128) -> vocabulary logits ->
       masked cross-entropy + KL; batch 32, word dropout 0.25, length-bucketed batches of the
       toy corpus (minivae.text.load_toy_data). Reported as training tokens per second, where
       tokens are the decoder's targets (the words and <eos>: what perplexity counts).
Every framework runs each workload in a fresh Python process whose BLAS thread variables are
set before NumPy is imported (and torch.set_num_threads), so its peak memory is that process's
ru_maxrss. The first --check-steps losses of every framework are compared (they must agree to
float32 accuracy: the programs compute the same function). A GEMM-only lower bound times just
the matrix products one training step needs, in NumPy float32, on the same shapes.
`--frameworks` picks among minivae, numpy, autograd and torch (all by default).

Timings leave out the first --warmup steps and are scaled to a full epoch (mlp) or reported
per token (gru); --quick times fewer steps and says so. The machine's load average is
printed: other busy processes (on a 2-core machine, even one) make every number here slower
and noisier, multithreaded BLAS most of all.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np  # a worker's BLAS threads are set in its environment, before it starts

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)  # run from a checkout

from minivae import data, fused, layers, ops, text  # noqa: E402
from minivae.distributions import kl_standard_normal, sample_gaussian  # noqa: E402
from minivae.train import reuse_freed_memory  # noqa: E402
from minivae.fileio import write_json  # noqa: E402
from minivae.models import MLPVAE  # noqa: E402
from minivae.optim import Adam  # noqa: E402

FRAMEWORKS = ("minivae", "numpy", "autograd", "torch")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
MLP = {"n_in": 784, "hidden": 400, "latent": 20, "batch_size": 128, "lr": 1e-3}
GRU = {"vocab": 2000, "embed": 64, "hidden": 128, "latent": 16, "batch_size": 32, "lr": 1e-3,
       "word_dropout": 0.25, "bucket": 50}
DEFAULT_DATA_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "fashion-mnist"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads, the same for every "
                   "framework (default 2)")
    p.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                   help="which to run; minivae always runs (the others are compared with it); "
                   "one that is not installed is reported as null")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR if os.path.isdir(DEFAULT_DATA_DIR) else None,
                   help="folder with the Fashion-MNIST IDX files (default ../shared/data/fashion-mnist "
                   "if it exists); without it the mlp workload uses synthetic images")
    p.add_argument("--synthetic", action="store_true", help="synthetic images even if --data-dir exists")
    p.add_argument("--mlp-examples", type=int, default=60000, help="training images per epoch")
    p.add_argument("--sentences", type=int, default=20000, help="toy corpus size (90%% train)")
    p.add_argument("--quick", action="store_true", help="time 100 mlp and 30 gru steps and "
                   "extrapolate (well under two minutes in all)")
    p.add_argument("--mlp-steps", type=int, help="mlp steps to run (default: one epoch; 100 with --quick)")
    p.add_argument("--gru-steps", type=int, help="gru steps to run (default 300; 30 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--check-steps", type=int, default=10, help="first steps whose losses are compared")
    p.add_argument("--rtol", type=float, default=2e-3, help="largest relative loss difference "
                   "accepted as agreement (float32 and different summation orders)")
    p.add_argument("--torch-gru", choices=["padded", "packed"], default="padded", help="how torch's "
                   "nn.GRU sees a padded batch: as is (faster here; the same function, since padding "
                   "follows each sentence and the encoder state is taken at its last token), or "
                   "through pack_padded_sequence")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's allocator settings as "
                   "they are; by default every framework's worker calls "
                   "minivae.train.reuse_freed_memory() first, as the training scripts do (it saves "
                   "large temporaries from page faults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one job in this process
    args = p.parse_args(argv)
    if args.worker:
        return args
    n_epoch = -(-args.mlp_examples // MLP["batch_size"])
    args.mlp_steps = args.mlp_steps or (min(100, n_epoch) if args.quick else n_epoch)
    args.gru_steps = args.gru_steps or (30 if args.quick else 300)
    for name in ("threads", "mlp_examples", "sentences", "mlp_steps", "gru_steps", "check_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.warmup >= min(args.mlp_steps, args.gru_steps):
        p.error("--warmup must be >= 0 and smaller than --mlp-steps and --gru-steps")
    if args.check_steps > min(args.mlp_steps, args.gru_steps):
        p.error("--check-steps cannot exceed --mlp-steps or --gru-steps")
    if args.data_dir and not os.path.isdir(args.data_dir):
        p.error(f"--data-dir {args.data_dir} is not a folder (leave it out for synthetic images)")
    if "minivae" not in args.frameworks:
        args.frameworks.insert(0, "minivae")
    return args


# ============================================================================ the workloads
def mlp_workload(job):
    """Training images, and per step: the batch's indices and its eps, drawn once for everyone."""
    if job["data_dir"]:
        x, _ = data.load_dataset("fashion-mnist", "train", data_dir=job["data_dir"], download=False)
        x = x[:job["mlp_examples"]]
        source = f"Fashion-MNIST training images from {job['data_dir']}"
    else:  # mostly dark pixels, like a real digit or garment
        rng = np.random.default_rng([job["seed"], 0])
        x = rng.random((job["mlp_examples"], MLP["n_in"]), dtype=np.float32) ** 3
        source = "synthetic images (uniform**3 grey levels)"
    rng = np.random.default_rng([job["seed"], 1])
    steps = []
    while len(steps) < job["n_steps"]:
        for idx in data.batches(len(x), MLP["batch_size"], rng):
            eps = rng.standard_normal((len(idx), MLP["latent"])).astype(np.float32)
            steps.append((idx, eps))
    return x, steps[:job["n_steps"]], source


def gru_workload(job):
    """Per step: a padded batch of the toy corpus with its word-dropped decoder input and eps."""
    corpus = text.load_toy_data(job["sentences"], seed=job["seed"], max_size=GRU["vocab"])
    rng = np.random.default_rng([job["seed"], 2])
    steps = []
    while len(steps) < job["n_steps"]:
        for b in text.text_batches(corpus.train, GRU["batch_size"], rng, bucket=GRU["bucket"]):
            b["dec_in"] = text.word_dropout(b["dec_in"], GRU["word_dropout"], rng)
            b["eps"] = rng.standard_normal((len(b["lengths"]), GRU["latent"])).astype(np.float32)
            steps.append(b)
    return len(corpus.vocab), steps[:job["n_steps"]], f"toy corpus, {len(corpus.train)} training sentences"


def minivae_mlp(seed):
    """minivae's MLP VAE: the initial weights every framework starts from."""
    return MLPVAE(MLP["n_in"], (MLP["hidden"],), MLP["latent"], rng=np.random.default_rng([seed, 3]))


def minivae_sentence_vae(n_vocab, seed):
    """The sentence VAE from minivae.layers: the initial weights every framework starts from."""

    class SentenceVAE(layers.Module):
        def __init__(self, rng):
            E, H, d = GRU["embed"], GRU["hidden"], GRU["latent"]
            self.embedding = layers.Embedding(n_vocab, E, rng)  # shared by encoder and decoder
            self.encoder = layers.GRU(E, H, rng)
            self.to_latent = layers.Dense(H, 2 * d, rng)
            self.to_state = layers.Dense(d, H, rng)
            self.decoder = layers.GRU(E, H, rng)
            self.to_vocab = layers.Dense(H, n_vocab, rng)

        def loss(self, b):
            """Negative ELBO per sentence: masked cross-entropy summed over tokens, plus KL."""
            B, T1 = b["dec_in"].shape
            _, h = self.encoder(self.embedding(b["enc_in"]), b["lengths"])     # (B, H)
            stats = self.to_latent(h)                                            # (B, 2d)
            mu, logvar = stats[:, :GRU["latent"]], stats[:, GRU["latent"]:]
            z = sample_gaussian(mu, logvar, b["eps"])                            # (B, d)
            h0 = ops.tanh(self.to_state(z))                                      # (B, H)
            out, _ = self.decoder(self.embedding(b["dec_in"]), b["lengths"] + 1, h0)  # (B, T+1, H)
            logits = self.to_vocab(out)                                          # (B, T+1, V)
            target = logits[np.arange(B)[:, None], np.arange(T1), b["dec_target"]]  # (B, T+1)
            nll = ops.logsumexp(logits, axis=-1) - target                        # -log softmax
            rec = ops.sum(nll * b["mask"]) / B
            return rec + ops.mean(kl_standard_normal(mu, logvar))

    return SentenceVAE(np.random.default_rng([seed, 4]))


# ============================================================================ one framework each
def train_minivae(workload, job):
    """(step function, describe) for minivae: its models and its Adam."""
    if workload == "mlp":
        model = minivae_mlp(job["seed"])
        x = job["x"]

        def loss(step):
            idx, eps = step
            return model.loss(x[idx], eps)[0]
    else:
        model = minivae_sentence_vae(job["n_vocab"], job["seed"])
        loss = model.loss
    optimizer = Adam(model.parameters(), lr=job["lr"])

    def step(batch):
        objective = loss(batch)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        return objective.data
    assert all(p.dtype == np.float32 for p in model.parameters())
    return step


def train_numpy(workload, job):
    """(step function) for hand-written NumPy: each model's gradients derived by hand, no autodiff.

    What a program with no graph, no per-op bookkeeping and no intermediate array it does not need
    costs: a floor for any autodiff engine built on NumPy (minivae minus this is the engine's
    overhead). It calls minivae's own NumPy kernels where they are plain functions (the GRU's
    forward and backward through time) and updates with minivae's Adam, so the optimiser is the
    same; the seconds spent in Adam are reported separately.
    """
    if workload == "mlp":
        model = minivae_mlp(job["seed"])
        forward_backward = _hand_mlp(job["x"], [p.data.copy() for p in model.parameters()])
    else:
        model = minivae_sentence_vae(job["n_vocab"], job["seed"])
        forward_backward = _hand_sentence_vae({n: p.data.copy() for n, p in model.named_parameters()})
    params, adam_seconds = None, []

    def step(batch):
        nonlocal params
        loss, grads = forward_backward(batch)
        if params is None:  # Adam only needs .data and .grad: the arrays updated in place
            params = [SimpleNamespace(data=w, grad=None) for w, _ in grads]
            step.optimizer = Adam(params, lr=job["lr"])
        for p, (_, g) in zip(params, grads):
            p.grad = g
        t0 = time.perf_counter()
        step.optimizer.step()
        adam_seconds.append(time.perf_counter() - t0)
        return loss
    step.adam_seconds = adam_seconds
    return step


def _latent_gradient(g_z, mu, std, eps, n):
    """d loss / d [mu, logvar] (B, 2d) by hand: through z = mu + std * eps, plus KL's own, KL averaged over n."""
    g_mu = g_z + mu / n
    g_logvar = g_z * eps * (0.5 * std) + (0.5 / n) * (std * std - 1)
    return np.concatenate([g_mu, g_logvar], axis=1)


def _hand_mlp(x, weights):
    """loss and [(weight, gradient)] of the MLP VAE for one (indices, eps) step, derived by hand."""
    W1, b1, W2, b2, W3, b3, W4, b4 = weights
    d = MLP["latent"]

    def forward_backward(batch):
        idx, eps = batch
        xb, n = x[idx], len(idx)
        h1 = xb @ W1
        h1 += b1
        np.maximum(h1, 0, out=h1)                                         # encoder ReLU
        stats = h1 @ W2 + b2
        mu, logvar = stats[:, :d], stats[:, d:]
        std = np.exp(0.5 * logvar)
        z = mu + std * eps
        h2 = z @ W3
        h2 += b3
        np.maximum(h2, 0, out=h2)                                         # decoder ReLU
        logits = h2 @ W4
        logits += b4
        e = np.exp(-np.abs(logits))                           # softplus and sigmoid both use it
        softplus = np.log1p(e)
        softplus += np.maximum(logits, 0)
        rec = softplus.sum() - np.vdot(xb, logits)            # -sum log p(x|z) (Bernoulli)
        kl = 0.5 * np.sum(mu * mu + std * std - logvar - 1)
        loss = (rec + kl) / np.float32(n)
        # backward: d loss / d logits = (sigmoid(logits) - x) / n, and so on down the layers
        g = np.where(logits >= 0, np.float32(1), e)
        g /= 1 + e
        g -= xb
        g /= n
        g_h2 = g @ W4.T
        g_h2 *= h2 > 0
        g_z = g_h2 @ W3.T
        g_stats = _latent_gradient(g_z, mu, std, eps, n)
        g_h1 = g_stats @ W2.T
        g_h1 *= h1 > 0
        grads = [xb.T @ g_h1, g_h1.sum(axis=0), h1.T @ g_stats, g_stats.sum(axis=0),
                 z.T @ g_h2, g_h2.sum(axis=0), h2.T @ g, g.sum(axis=0)]
        return loss, list(zip(weights, grads))
    return forward_backward


def _hand_sentence_vae(w):
    """loss and [(weight, gradient)] of the sentence VAE for one batch, derived by hand."""
    gru_forward, gru_backward = fused.gru_sequence.forward, fused._gru_sequence_vjp
    H, d = GRU["hidden"], GRU["latent"]
    emb = w["embedding.W"]

    def projection(name, tokens):  # the embeddings of `tokens` and their GRU input projection
        x = emb[tokens].reshape(tokens.size, -1)
        return x, (x @ w[f"{name}.cell.W_x"] + w[f"{name}.cell.b_x"]).reshape(*tokens.shape, 3 * H)

    def forward_backward(b):
        B, T1 = b["dec_in"].shape
        lengths, rows = b["lengths"], np.arange(B)
        enc_mask = np.arange(T1 - 1) < lengths[:, None]
        dec_mask = np.arange(T1) < lengths[:, None] + 1
        x_enc, proj_enc = projection("encoder", b["enc_in"])
        h0_enc = np.zeros((B, H), np.float32)
        out_enc = gru_forward(proj_enc, h0_enc, w["encoder.cell.W_h"], w["encoder.cell.b_h"], mask=enc_mask)
        h = out_enc[rows, lengths - 1]
        stats = h @ w["to_latent.W"] + w["to_latent.b"]
        mu, logvar = stats[:, :d], stats[:, d:]
        std = np.exp(0.5 * logvar)
        z = mu + std * b["eps"]
        h0 = np.tanh(z @ w["to_state.W"] + w["to_state.b"])
        x_dec, proj_dec = projection("decoder", b["dec_in"])
        out_dec = gru_forward(proj_dec, h0, w["decoder.cell.W_h"], w["decoder.cell.b_h"], mask=dec_mask)
        out = out_dec.reshape(B * T1, H)
        p = out @ w["to_vocab.W"]                    # logits, turned in place into softmax below
        p += w["to_vocab.b"]
        target = b["dec_target"].reshape(-1)
        target_logit = p[np.arange(B * T1), target]
        m = p.max(axis=1, keepdims=True)
        p -= m
        np.exp(p, out=p)
        total = p.sum(axis=1, keepdims=True)
        nll = np.log(total[:, 0]) + m[:, 0] - target_logit                   # -log softmax at target
        kl = 0.5 * np.sum(mu * mu + std * std - logvar - 1, axis=1)
        weight = b["mask"].reshape(-1, 1) / np.float32(B)
        loss = np.sum(nll * weight[:, 0]) + kl.mean()
        # backward: d loss / d logits = weight * (softmax - onehot(target)), from the kept exp
        p *= weight / total
        p[np.arange(B * T1), target] -= weight[:, 0]
        g = {"to_vocab.W": out.T @ p, "to_vocab.b": p.sum(axis=0)}
        g_proj, g_h0, g["decoder.cell.W_h"], g["decoder.cell.b_h"] = gru_backward(
            (p @ w["to_vocab.W"].T).reshape(B, T1, H), out_dec, proj_dec, h0, w["decoder.cell.W_h"],
            w["decoder.cell.b_h"], dec_mask, False)
        g_proj = g_proj.reshape(B * T1, 3 * H)
        g["decoder.cell.W_x"], g["decoder.cell.b_x"] = x_dec.T @ g_proj, g_proj.sum(axis=0)
        g_x_dec = g_proj @ w["decoder.cell.W_x"].T
        g_a = g_h0 * (1 - h0 * h0)                                            # through tanh
        g["to_state.W"], g["to_state.b"] = z.T @ g_a, g_a.sum(axis=0)
        g_z = g_a @ w["to_state.W"].T
        g_stats = _latent_gradient(g_z, mu, std, b["eps"], B)
        g["to_latent.W"], g["to_latent.b"] = h.T @ g_stats, g_stats.sum(axis=0)
        g_out_enc = np.zeros_like(out_enc)
        g_out_enc[rows, lengths - 1] = g_stats @ w["to_latent.W"].T
        g_proj, _, g["encoder.cell.W_h"], g["encoder.cell.b_h"] = gru_backward(
            g_out_enc, out_enc, proj_enc, h0_enc, w["encoder.cell.W_h"], w["encoder.cell.b_h"], enc_mask,
            False)
        g_proj = g_proj.reshape(-1, 3 * H)
        g["encoder.cell.W_x"], g["encoder.cell.b_x"] = x_enc.T @ g_proj, g_proj.sum(axis=0)
        g_emb = np.zeros_like(emb)
        np.add.at(g_emb, b["enc_in"].reshape(-1), g_proj @ w["encoder.cell.W_x"].T)
        np.add.at(g_emb, b["dec_in"].reshape(-1), g_x_dec)
        g["embedding.W"] = g_emb
        return loss, [(w[name], g[name]) for name in w]
    return forward_backward


def _numpy_adam(params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as an autograd user writes it: NumPy expressions on a list of arrays, updated in place."""
    m, v, t = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params], [0]

    def update(grads):
        t[0] += 1
        for p, g, m_i, v_i in zip(params, grads, m, v):
            m_i[...] = b1 * m_i + (1 - b1) * g
            v_i[...] = b2 * v_i + (1 - b2) * g * g
            p -= lr * (m_i / (1 - b1 ** t[0])) / (np.sqrt(v_i / (1 - b2 ** t[0])) + eps)
    return update


def train_autograd(workload, job):
    """(step function) for HIPS autograd: the same models as NumPy functions, a NumPy Adam."""
    import autograd
    import autograd.numpy as anp
    from autograd.tracer import getval

    def sigmoid(a):
        return 0.5 * (anp.tanh(0.5 * a) + 1)  # stable for any a

    if workload == "mlp":
        model = minivae_mlp(job["seed"])
        params = [p.data.copy() for p in model.parameters()]  # W1 b1 W2 b2 (encoder), W3 b3 W4 b4
        x, d = job["x"], MLP["latent"]

        def objective(params, batch):
            idx, eps = batch
            W1, b1, W2, b2, W3, b3, W4, b4 = params
            xb = x[idx]
            stats = anp.dot(anp.maximum(anp.dot(xb, W1) + b1, 0), W2) + b2
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + anp.exp(0.5 * logvar) * eps
            logits = anp.dot(anp.maximum(anp.dot(z, W3) + b3, 0), W4) + b4
            log_px = anp.sum(xb * logits - anp.logaddexp(0, logits), axis=1)
            kl = 0.5 * anp.sum(mu * mu + anp.exp(logvar) - logvar - 1, axis=1)
            return anp.mean(kl - log_px)
    else:
        model = minivae_sentence_vae(job["n_vocab"], job["seed"])
        names = [n for n, _ in model.named_parameters()]
        params = [p.data.copy() for p in model.parameters()]
        H, d = GRU["hidden"], GRU["latent"]

        def gru(p, prefix, x, mask, h):
            B, T, E = x.shape
            W_x, b_x, W_h, b_h = (p[f"{prefix}.cell.{k}"] for k in ("W_x", "b_x", "W_h", "b_h"))
            x_proj = anp.reshape(anp.dot(anp.reshape(x, (B * T, E)), W_x) + b_x, (B, T, 3 * H))
            outputs = []
            for t in range(T):
                a, hp = x_proj[:, t], anp.dot(h, W_h) + b_h
                r, z = sigmoid(a[:, :H] + hp[:, :H]), sigmoid(a[:, H:2 * H] + hp[:, H:2 * H])
                h_new = (1 - z) * anp.tanh(a[:, 2 * H:] + r * hp[:, 2 * H:]) + z * h
                real = mask[:, t, None]
                h = anp.where(real, h_new, h)
                outputs.append(anp.where(real, h_new, 0))
            return anp.stack(outputs, axis=1), h

        def objective(params, b):
            p = dict(zip(names, params))
            B, T1 = b["dec_in"].shape
            enc_mask = b["enc_mask"] > 0
            _, h = gru(p, "encoder", p["embedding.W"][b["enc_in"]], enc_mask, anp.zeros((B, H), "float32"))
            stats = anp.dot(h, p["to_latent.W"]) + p["to_latent.b"]
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + anp.exp(0.5 * logvar) * b["eps"]
            h0 = anp.tanh(anp.dot(z, p["to_state.W"]) + p["to_state.b"])
            out, _ = gru(p, "decoder", p["embedding.W"][b["dec_in"]], b["mask"] > 0, h0)
            logits = anp.dot(out, p["to_vocab.W"]) + p["to_vocab.b"]
            m = getval(anp.max(logits, axis=-1, keepdims=True))  # a constant shift: no gradient
            lse = anp.log(anp.sum(anp.exp(logits - m), axis=-1)) + m[..., 0]
            nll = lse - logits[np.arange(B)[:, None], np.arange(T1), b["dec_target"]]
            kl = 0.5 * anp.sum(mu * mu + anp.exp(logvar) - logvar - 1, axis=1)
            return anp.sum(nll * b["mask"]) / B + anp.mean(kl)

    gradient = autograd.value_and_grad(objective)
    adam = _numpy_adam(params, job["lr"])

    def step(batch):
        value, grads = gradient(params, batch)
        adam(grads)
        return value
    return step


def train_torch(workload, job):
    """(step function) for PyTorch: nn modules (nn.GRU), torch.optim.Adam with its defaults."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(job["threads"])
    nn, T = torch.nn, torch.from_numpy

    def load(module, weights):  # minivae stores W as (n_in, n_out), torch as (n_out, n_in)
        with torch.no_grad():
            for param, array in zip(module.parameters(), weights):
                param.copy_(T(np.ascontiguousarray(array.T if array.ndim == 2 else array)))

    if workload == "mlp":
        model = minivae_mlp(job["seed"])
        sizes = [(784, 400), (400, 40), (20, 400), (400, 784)]
        net = nn.ModuleList([nn.Linear(a, b) for a, b in sizes])
        load(net, [p.data for p in model.parameters()])
        x, d = T(job["x"]), MLP["latent"]

        def objective(batch):
            idx, eps = batch
            xb = x[T(idx)]
            stats = net[1](F.relu(net[0](xb)))
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + torch.exp(0.5 * logvar) * T(eps)
            logits = net[3](F.relu(net[2](z)))
            rec = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * torch.sum(mu * mu + logvar.exp() - logvar - 1)
            return (rec + kl) / len(idx)
    else:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        model = minivae_sentence_vae(job["n_vocab"], job["seed"])
        p = {n: q.data for n, q in model.named_parameters()}
        E, H, d, V = GRU["embed"], GRU["hidden"], GRU["latent"], job["n_vocab"]
        net = nn.ModuleDict({"embedding": nn.Embedding(V, E), "encoder": nn.GRU(E, H, batch_first=True),
                             "to_latent": nn.Linear(H, 2 * d), "to_state": nn.Linear(d, H),
                             "decoder": nn.GRU(E, H, batch_first=True), "to_vocab": nn.Linear(H, V)})
        with torch.no_grad():
            net["embedding"].weight.copy_(T(p["embedding.W"]))
        for name in ("encoder", "decoder"):  # torch's order: weight_ih, weight_hh, bias_ih, bias_hh
            load(net[name], [p[f"{name}.cell.{k}"] for k in ("W_x", "W_h", "b_x", "b_h")])
        for name in ("to_latent", "to_state", "to_vocab"):
            load(net[name], [p[f"{name}.W"], p[f"{name}.b"]])

        def run_gru(gru, x, lengths, h0=None):
            """Outputs (B, T, H) and the state after each sentence's last token (B, H)."""
            if job["torch_gru"] == "packed":
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                out, h = gru(packed, h0)
                return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h[0]
            out, _ = gru(x, h0)  # padding follows each sentence, so it cannot change earlier states
            return out, out[torch.arange(len(lengths)), lengths - 1]

        def objective(b):
            B, T1 = b["dec_in"].shape
            lengths = T(b["lengths"])
            _, h = run_gru(net["encoder"], net["embedding"](T(b["enc_in"])), lengths)     # (B, H)
            stats = net["to_latent"](h)
            mu, logvar = stats[:, :d], stats[:, d:]
            z = mu + torch.exp(0.5 * logvar) * T(b["eps"])
            h0 = torch.tanh(net["to_state"](z))[None]                           # (1, B, H)
            out, _ = run_gru(net["decoder"], net["embedding"](T(b["dec_in"])), lengths + 1, h0)
            logits = net["to_vocab"](out)                                        # (B, T+1, V)
            nll = F.cross_entropy(logits.reshape(B * T1, V), T(b["dec_target"]).reshape(-1),
                                  reduction="none").reshape(B, T1)
            kl = 0.5 * torch.sum(mu * mu + logvar.exp() - logvar - 1)
            return (torch.sum(nll * T(b["mask"])) + kl) / B

    optimizer = torch.optim.Adam(net.parameters(), lr=job["lr"])

    def step(batch):
        loss = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach().numpy()
    return step


# ============================================================================ the GEMM-only bound
def _mlp_gemms(B):
    """(m, k, n, transposed-operand) products of one mlp step: 4 forward, 4 weight and 3 input gradients."""
    layers = [(784, 400), (400, 40), (20, 400), (400, 784)]
    forward = [(B, a, b, "") for a, b in layers]
    weights = [(a, B, b, "A") for a, b in layers]                  # x.T @ g
    inputs = [(B, b, a, "B") for a, b in layers[1:]]                # g @ W.T (not for the data)
    return forward + weights + inputs


def _gru_gemms(B, T, V):
    """The products of one gru step with encoder length T: what the maths needs, nothing recomputed."""
    E, H, d = GRU["embed"], GRU["hidden"], GRU["latent"]
    out = []
    for steps in (T, T + 1):                                        # encoder, decoder
        n = B * steps
        out += [(n, E, 3 * H, "")] + [(B, H, 3 * H, "")] * steps     # input projection, recurrence
        out += [(B, 3 * H, H, "B")] * steps                          # backward through time
        out += [(H, n, 3 * H, "A"), (E, n, 3 * H, "A"), (n, 3 * H, E, "B")]  # dW_h, dW_x, d embedding
    for a, b in ((H, 2 * d), (d, H)):                               # to_latent, to_state
        out += [(B, a, b, ""), (a, B, b, "A"), (B, b, a, "B")]
    n = B * (T + 1)
    out += [(n, H, V, ""), (H, n, V, "A"), (n, V, H, "B")]          # to_vocab
    return out


def gemm_bound(workload, job):
    """Seconds spent in the matrix products of the timed steps alone (NumPy float32, preallocated)."""
    rng = np.random.default_rng(0)
    cache = {}

    def operands(m, k, n, transposed):
        if (m, k, n, transposed) not in cache:
            a = rng.standard_normal((k, m) if transposed == "A" else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if transposed == "B" else (k, n)).astype(np.float32)
            cache[m, k, n, transposed] = (a.T if transposed == "A" else a, b.T if transposed == "B" else b,
                                          np.empty((m, n), np.float32))
        return cache[m, k, n, transposed]

    if workload == "mlp":
        shapes = [_mlp_gemms(len(idx)) for idx, _ in job["steps"]]
    else:
        shapes = [_gru_gemms(len(b["lengths"]), b["enc_in"].shape[1], job["n_vocab"]) for b in job["steps"]]
    work = [[operands(*s) for s in step] for step in shapes]
    times, cpu_times = [], []
    for products in work:
        t0, c0 = time.perf_counter(), time.process_time()
        for a, b, c in products:
            np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return times, cpu_times


# ============================================================================ worker processes
def run_job(job):
    """Run one (workload, framework) in this process; return its timings, losses and memory."""
    workload = job["workload"]
    if workload == "mlp":
        job["x"], job["steps"], source = mlp_workload(job)
        job["lr"] = MLP["lr"]
    else:
        job["n_vocab"], job["steps"], source = gru_workload(job)
        job["lr"] = GRU["lr"]
    result = {"data": source}
    if job["reuse_freed_memory"]:  # every framework alike: the allocator is the process's, not minivae's
        result["reuse_freed_memory"] = reuse_freed_memory()
    if job["framework"] == "gemm":
        times, cpu_times = gemm_bound(workload, job)
        losses = []
    else:
        make = {"minivae": train_minivae, "numpy": train_numpy, "autograd": train_autograd, "torch": train_torch}[job["framework"]]
        step = make(workload, job)
        result["setup_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times, cpu_times, losses = [], [], []
        for i, batch in enumerate(job["steps"]):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(batch)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            if i < job["check_steps"]:
                if np.asarray(loss).dtype != np.float32:
                    raise TypeError(f"{job['framework']} computed a {np.asarray(loss).dtype} loss, "
                                    "not float32")
                losses.append(float(loss))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = slice(job["warmup"], None)
    result.update(seconds=sum(times[timed]), cpu_seconds=sum(cpu_times[timed]), timed_steps=len(times[timed]),
                  losses=losses)
    if job["framework"] == "numpy":  # how much of it is the optimiser (the same Adam as minivae's)
        result["optimizer_seconds"] = sum(step.adam_seconds[timed])
    if workload == "gru":
        result["tokens"] = int(sum(b["mask"].sum() for b in job["steps"][timed]))
    return result


def spawn(job, threads):
    """Run a job in a fresh interpreter whose BLAS thread variables are set before NumPy loads."""
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {job['workload']}/{job['framework']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available(framework):
    return framework in ("minivae", "numpy", "gemm") or importlib.util.find_spec(framework) is not None


def loss_agreement(losses, rtol):
    """Per framework: the largest relative difference of its losses from minivae's, step by step."""
    ref = losses["minivae"]
    out = {}
    for name, values in losses.items():
        if name == "minivae" or values is None:
            continue
        if len(values) != len(ref) or not ref:
            raise ValueError(f"{name} reported {len(values)} losses, minivae {len(ref)}")
        diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, values))
        out[name] = {"max_rel_diff": diff, "steps": len(ref), "agree": bool(diff <= rtol)}
    return out


def machine_info(threads):
    versions = {"python": platform.python_version()}
    for name in ("numpy", "autograd", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # the layout of numpy's build information changes between versions
        blas = "unknown"
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"threads": threads, "blas": blas, "versions": versions, "cpu": cpu, "cpu_count": os.cpu_count(),
            "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# ============================================================================ the run and its report
def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))))
        return None
    data_dir = None if args.synthetic else args.data_dir
    report = {"machine": machine_info(args.threads),
              "settings": {"quick": args.quick, "mlp_steps": args.mlp_steps, "gru_steps": args.gru_steps,
                           "warmup": args.warmup, "check_steps": args.check_steps, "rtol": args.rtol,
                           "mlp_examples": args.mlp_examples, "sentences": args.sentences, "seed": args.seed,
                           "torch_gru": args.torch_gru, "reuse_freed_memory": not args.default_malloc,
                           "mlp": MLP, "gru": GRU}}
    print(f"threads {args.threads}, {report['machine']['blas']}, load average "
          f"{report['machine']['load_average_before']}", flush=True)
    steps_per_epoch = -(-args.mlp_examples // MLP["batch_size"])
    for workload, n_steps in (("mlp", args.mlp_steps), ("gru", args.gru_steps)):
        job = {"workload": workload, "n_steps": n_steps, "warmup": args.warmup, "check_steps": args.check_steps,
               "seed": args.seed, "threads": args.threads, "data_dir": data_dir,
               "mlp_examples": args.mlp_examples, "sentences": args.sentences, "torch_gru": args.torch_gru,
               "reuse_freed_memory": not args.default_malloc}
        section = {name: None for name in FRAMEWORKS}  # null: not requested or not installed
        for framework in [*args.frameworks, "gemm"]:
            if not available(framework):
                print(f"{workload:4s} {framework:9s} not installed: skipped", flush=True)
                continue
            r = spawn({**job, "framework": framework}, args.threads)
            per_step = r["seconds"] / r["timed_steps"]
            if workload == "mlp":
                r["sec_per_epoch"] = per_step * steps_per_epoch
            else:
                r["tokens_per_sec"] = r["tokens"] / r["seconds"]
            section[framework] = r
            print(f"{workload:4s} {framework:9s} {per_step * 1e3:8.2f} ms/step over {r['timed_steps']} steps "
                  f"(CPU time {r['cpu_seconds'] / r['timed_steps'] * 1e3:.2f} ms/step)"
                  + (f", peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else "")
                  + (f", Adam {r['optimizer_seconds'] / r['timed_steps'] * 1e3:.2f} ms/step of it"
                     if "optimizer_seconds" in r else ""), flush=True)
        gemm = section.pop("gemm")
        key = "sec_per_epoch" if workload == "mlp" else "tokens_per_sec"
        section[f"gemm_bound_{key}"] = gemm[key]
        section["data"] = gemm["data"]
        section["loss_agreement"] = loss_agreement(
            {f: section[f]["losses"] if section[f] else None for f in args.frameworks}, args.rtol)
        report[workload] = section
    report["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["machine"]["busy"] = busy(report["machine"])
    report["targets"] = targets(report)
    print_report(report, args, steps_per_epoch)
    if args.out:
        if os.path.dirname(args.out):
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


# (name, workload, framework, how minivae is compared, bound): ratios are minivae / other for
# times and memory, minivae / other for throughput; targets from GitHub issue 6.
TARGETS = [("mlp epoch time vs torch", "mlp", "torch", "sec_per_epoch", "<=", 0.85),
           ("mlp epoch time vs autograd", "mlp", "autograd", "sec_per_epoch", "<=", 0.5),
           ("gru tokens/s vs torch", "gru", "torch", "tokens_per_sec", ">=", 1.0),
           ("gru tokens/s vs autograd", "gru", "autograd", "tokens_per_sec", ">=", 3.5),
           ("mlp peak memory vs torch", "mlp", "torch", "peak_rss_mb", "<", 1.0),
           ("gru peak memory vs torch", "gru", "torch", "peak_rss_mb", "<", 1.0)]


def targets(report):
    out = []
    for name, workload, other, key, op, bound in TARGETS:
        if not report[workload].get(other):
            continue
        ratio = report[workload]["minivae"][key] / report[workload][other][key]
        met = {"<=": ratio <= bound, ">=": ratio >= bound, "<": ratio < bound}[op]
        out.append({"name": name, "ratio": ratio, "target": f"{op} {bound}", "met": bool(met)})
    return out


def print_report(report, args, steps_per_epoch):
    names = [f for f in FRAMEWORKS if f in args.frameworks]
    print()
    print(f"mlp s/epoch: the mean of {report['mlp']['minivae']['timed_steps']} timed steps (after "
          f"{args.warmup} warm-up steps) extrapolated to an epoch of {steps_per_epoch} steps"
          + (" (--quick)" if args.quick else ""))
    print(f"gru tokens/s: decoder targets (words and <eos>) of {report['gru']['minivae']['timed_steps']} "
          f"timed steps of {GRU['batch_size']} sentences, over their time" + (" (--quick)" if args.quick else ""))
    print(f"mlp data: {report['mlp']['data']}; gru data: {report['gru']['data']}")
    header = f"{'':28s}" + "".join(f"{n:>12s}" for n in names) + f"{'GEMMs only':>12s}"
    print(header)
    rows = [("mlp  s/epoch", "mlp", "sec_per_epoch", "{:12.2f}"),
            ("mlp  peak RSS MB", "mlp", "peak_rss_mb", "{:12.0f}"),
            ("gru  tokens/s", "gru", "tokens_per_sec", "{:12.0f}"),
            ("gru  peak RSS MB", "gru", "peak_rss_mb", "{:12.0f}")]
    for label, workload, key, fmt in rows:
        line = f"{label:28s}"
        for n in names:
            r = report[workload][n]
            line += fmt.format(r[key]) if r else f"{'-':>12s}"
        bound = report[workload].get(f"gemm_bound_{key}")
        print(line + (fmt.format(bound) if bound else ""))
        if key in ("sec_per_epoch", "tokens_per_sec"):
            ratios = f"{'  minivae / framework':28s}"
            for n in names:
                r = report[workload][n]
                ratios += f"{report[workload]['minivae'][key] / r[key]:12.2f}" if r else f"{'-':>12s}"
            print(ratios)
    for workload, key in (("mlp", "sec_per_epoch"), ("gru", "tokens_per_sec")):
        r = report[workload]["numpy"]
        if r:  # the hand-written floor with its optimiser taken out: what the rest of a step costs
            rest = (r["seconds"] - r["optimizer_seconds"]) / r["seconds"]
            value = r[key] * rest if key == "sec_per_epoch" else r[key] / rest
            print(f"{workload} hand-written NumPy without its Adam: {value:.2f} {key.replace('_per_', '/')}"
                  .replace("sec/epoch", "s/epoch").replace("tokens/sec", "tokens/s"))
    for workload in ("mlp", "gru"):
        for n, a in report[workload]["loss_agreement"].items():
            print(f"{workload} losses, first {a['steps']} steps: minivae vs {n} max relative difference "
                  f"{a['max_rel_diff']:.2e} ({'agree' if a['agree'] else 'DISAGREE'} at rtol {args.rtol})")
    for t in report["targets"]:
        print(f"target {t['name']:28s} minivae/other = {t['ratio']:.3f} (want {t['target']}): "
              f"{'met' if t['met'] else 'NOT met'}")
    m = report["machine"]
    print(f"load average before {m['load_average_before']}, after {m['load_average_after']}")
    if m["busy"]:
        print(f"WARNING: other processes were keeping this machine busy (load average "
              f"{m['load_average_before'][0]:.1f} on {m['cpu_count']} CPUs, {m['threads']} wanted): the times "
              "above are inflated and noisy; compare CPU times (in the JSON) or rerun on an idle machine")


def busy(machine):
    """True if, before the run, other work left fewer idle CPUs than the benchmark's threads.

    (The load average after the run counts the benchmark's own processes.)
    """
    load = machine.get("load_average_before")
    return bool(load) and load[0] > machine["cpu_count"] - machine["threads"] + 0.5


if __name__ == "__main__":
    main()
