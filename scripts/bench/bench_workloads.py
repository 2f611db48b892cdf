"""The benchmark's three workloads: their sizes, their batches, and minivae's models of them.

scripts/bench/benchmark.py imports this file; it is not a script of its own. Every batch, its noise
(eps) and its word-dropout mask are drawn here once, so each framework's worker trains on the
same steps; the initial weights are minivae's (built here), copied by the other frameworks.
  mlp        the MNIST VAE recipe over Fashion-MNIST (or synthetic) images
  gru        a small sentence VAE on the toy corpus, length-bucketed batches
  gru_large  the sentence VAE at the size of Bowman et al. 2016 (arXiv:1511.06349), as the
             public re-implementation timbmg/Sentence-VAE sets it: vocabulary 10,000,
             embedding 300, GRU 256, latent 16, batch 32, word dropout 0.5; on the toy language
             with all 10 topics and sentences of 4 to 40 tokens (or a text file, --corpus)
"""
import numpy as np

from minivae import collapse, data, layers, ops, text
from minivae.distributions import kl_standard_normal, sample_gaussian
from minivae.fused import softmax_cross_entropy, softmax_cross_entropy_composed
from minivae.fast import FusedAdam
from minivae.models import MLPVAE
from minivae.optim import Adam

MLP = {"n_in": 784, "hidden": 400, "latent": 20, "batch_size": 128, "lr": 1e-3}
GRU = {"vocab": 2000, "embed": 64, "hidden": 128, "latent": 16, "batch_size": 32, "lr": 1e-3,
       "word_dropout": 0.25, "bucket": 50}
GRU_LARGE = {"vocab": 10000, "embed": 300, "hidden": 256, "latent": 16, "batch_size": 32, "lr": 1e-3,
             "word_dropout": 0.5, "bucket": 50, "toy_topics": 10, "toy_lengths": (4, 40), "max_len": 60}
CONFIGS = {"mlp": MLP, "gru": GRU, "gru_large": GRU_LARGE}
ADAMS = ("fused", "textbook")  # --adam: fast.FusedAdam, or optim.Adam as written in the textbook


def make_adam(params, job):
    """The Adam of minivae's models and of the hand-written ones: --adam picks which form."""
    if job.get("adam", "fused") == "textbook":
        return Adam(params, lr=job["lr"])
    return FusedAdam(params, lr=job["lr"], threads=job["threads"])


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


def text_corpus(job):
    """(training sentences, the model's vocabulary size, where they come from) for gru or gru_large."""
    config = CONFIGS[job["workload"]]
    if job["workload"] == "gru":
        corpus = text.load_toy_data(job["sentences"], seed=job["seed"], max_size=config["vocab"])
        return corpus.train, len(corpus.vocab), f"toy corpus, {len(corpus.train)} training sentences"
    if job.get("corpus"):
        corpus = text.load_text_data(job["corpus"], seed=job["seed"], max_size=config["vocab"],
                                     max_len=config["max_len"])
        source = f"{job['corpus']}, {len(corpus.train)} training sentences"
    else:
        corpus = text.load_toy_data(job["sentences"], seed=job["seed"], max_size=config["vocab"],
                                    n_topics=config["toy_topics"], length_range=config["toy_lengths"])
        source = f"toy corpus with {config['toy_topics']} topics, {len(corpus.train)} training sentences"
    # The output layer has the paper's 10,000 words even when the corpus has fewer types.
    return corpus.train, config["vocab"], f"{source}, {len(corpus.vocab)} word types"


def text_workload(job):
    """Per step: a padded batch with its word-dropped decoder input and eps, drawn once for everyone."""
    config = CONFIGS[job["workload"]]
    sentences, n_vocab, source = text_corpus(job)
    bucket = job.get("bucket", config["bucket"]) if job["workload"] == "gru_large" else config["bucket"]
    rng = np.random.default_rng([job["seed"], 2])
    steps = []
    while len(steps) < job["n_steps"]:
        for b in text.text_batches(sentences, config["batch_size"], rng, bucket=bucket):
            b["dec_in"] = collapse.word_dropout(b["dec_in"], config["word_dropout"], rng)
            b["eps"] = rng.standard_normal((len(b["lengths"]), config["latent"])).astype(np.float32)
            steps.append(b)
    batching = f"length-bucketed (pools of {bucket} batches)" if bucket else "random (not length-bucketed)"
    return n_vocab, steps[:job["n_steps"]], f"{source}; {batching} batches"


def minivae_mlp(seed):
    """minivae's MLP VAE: the initial weights every framework starts from."""
    return MLPVAE(MLP["n_in"], (MLP["hidden"],), MLP["latent"], rng=np.random.default_rng([seed, 3]))


def minivae_sentence_vae(n_vocab, seed, config=GRU, job_options=None):
    """The sentence VAE from minivae.layers: the initial weights every framework starts from.

    job_options: {"cross_entropy": "fused" (fused.softmax_cross_entropy) or "composed" (its composed
    form), "gru": "fused" (fused.gru_sequence) or "unrolled" (layers.GRUCell step by step)}.
    """
    job_options = job_options or {}

    class SentenceVAE(layers.Module):
        def __init__(self, rng):
            E, H, d = config["embed"], config["hidden"], config["latent"]
            self.embedding = layers.Embedding(n_vocab, E, rng)  # shared by encoder and decoder
            fused = job_options.get("gru", "fused") == "fused"  # "unrolled": layers.GRUCell step by step
            self.encoder = layers.GRU(E, H, rng, fused=fused)
            self.to_latent = layers.Dense(H, 2 * d, rng)
            self.to_state = layers.Dense(d, H, rng)
            self.decoder = layers.GRU(E, H, rng, fused=fused)
            self.to_vocab = layers.Dense(H, n_vocab, rng)

        def loss(self, b):
            """Negative ELBO per sentence: cross-entropy summed over the real tokens, plus KL."""
            B = len(b["lengths"])
            _, h = self.encoder(self.embedding(b["enc_in"]), b["lengths"])     # (B, H)
            stats = self.to_latent(h)                                            # (B, 2d)
            mu, logvar = stats[:, :config["latent"]], stats[:, config["latent"]:]
            z = sample_gaussian(mu, logvar, b["eps"])                            # (B, d)
            h0 = ops.tanh(self.to_state(z))                                      # (B, H)
            out, _ = self.decoder(self.embedding(b["dec_in"]), b["lengths"] + 1, h0)  # (B, T+1, H)
            # the vocabulary layer on the real targets only, not the padded grid (as PyTorch over packed sequences)
            real = np.nonzero(b["mask"])                                         # N (row, step) pairs
            logits = self.to_vocab(out[real])                                    # (N, V)
            target = b["dec_target"][real]
            if job_options.get("cross_entropy", "fused") == "composed":                # --cross-entropy composed
                nll = softmax_cross_entropy_composed(logits, target)
            else:
                nll = softmax_cross_entropy(logits, target=target)               # -log softmax, (N,)
            return ops.sum(nll) / B + ops.mean(kl_standard_normal(mu, logvar))

    return SentenceVAE(np.random.default_rng([seed, 4]))


def train_minivae(workload, job, model):
    """A step function (batch -> float32 loss) training `model` with minivae's engine and Adam (--adam)."""
    assert all(p.dtype == np.float32 for p in model.parameters())
    if workload == "mlp":
        x = job["x"]

        def loss(step):
            idx, eps = step
            return model.loss(x[idx], eps)[0]
    else:
        loss = model.loss
    optimizer = make_adam(model.parameters(), job)

    def step(batch):
        objective = loss(batch)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        return objective.data
    return step
