"""minivae: variational autoencoders from scratch on NumPy.

Reading order (each module builds only on the ones before it):
  engine.py            Tensor, the primitive registry, no_grad and the iterative backward pass
  ops.py               every primitive with its VJP beside it, then composites (mean, softmax,
                       ...); at the bottom, Tensor's operators (+, *, @, .sum(), .T, ...)
  fused.py             fused primitives: gru_sequence, a whole GRU with its backward through time;
                       softmax_cross_entropy, whose backward reuses the softmax its forward saves
  gradcheck.py         finite-difference gradient checks, and the debugger that names the wrong op
  graph.py             pictures of the recorded graph (matplotlib PNG, or Graphviz text)
  layers.py            Module, Dense, MLP, Embedding, dropout_mask, GRUCell (textbook), GRU
  distributions.py     reparameterised sample, analytic KL, Gaussian and Bernoulli log densities
  elbo.py              the ELBO, the training objective, every KL floor (free bits), the NaN check
  schedules.py         KL annealing schedules as pure functions of the step
  optim.py             SGD, Adam, clip_grad_norm
  models.py            the image VAE (MLPVAE)
  diagnostics.py       held-out ELBO, importance-weighted likelihood, active units, mutual information
  fast.py              fast forms tested equal to the textbook ones: the IW likelihood on every
                       core, FusedAdam (Adam in place, in blocks, over threads)
  autoencoders.py      deterministic autoencoders: plain, denoising, sparse, k-sparse, contractive
  shapes.py            generated images with known factors; the mutual information gap (MIG)
  vqvae.py             VQ-VAE: codebook, straight-through, EMA update, dead-code restarts, GRU prior
  vqvae2.py            VQ-VAE-2: a global top code, patch codes conditioned on it, a patch decoder,
                       a GRU prior per level
  sequences.py         sequences with known dynamics (noisy oscillator, moving digit), rollout measures
  tdvae.py             TD-VAE: belief GRU, D blocks, smoothing posterior, jumpy transition, eq. 6 loss
  iaf.py               MADE masked layers and the VAE with an inverse-autoregressive-flow posterior
  fileio.py, checkpoint.py   atomic writes, saving and resuming training
  data.py              image datasets (with an offline fallback)
  toy_language.py      a toy grammar with known latent factors
  text.py              vocabulary, corpora, padded batches, bag of words, perplexity
  collapse.py          posterior-collapse remedies (BN-VAE, soft free bits, MDR, bag of words,
                       word dropout)
  sentence_vae.py      the sentence VAE and its loss
  decoding.py          greedy, sampling and beam-search decoding, reconstruction, interpolation
  text_diagnostics.py  sentence diagnostics: reconstruction scores, probes
  plot.py              figures
  charts.py            line panels and bar charts, on plot.py's helpers
  flags.py             the flags the training scripts share, checked before any data is read
  run.py               a training run: output folder, progress, checkpoints, resume, clean stops
  allocator.py         reuse_freed_memory, the training scripts' C allocator setting
  saved.py             load_model: a trained model rebuilt from its checkpoint
  workers.py           a run's child process: started, stopped, or run on a Dask worker
  runner.py            grids of training runs: local worker processes, or a Dask cluster
"""
__all__ = ["Tensor", "no_grad", "PRIMITIVES", "load_model"]
__version__ = "0.1.0"


def __getattr__(name):
    """`from minivae import Tensor` loads the engine and ops (which gives Tensor its operators);
    `minivae.load_model` loads saved.py and the modules it needs.

    Imported lazily (PEP 562) so that `import minivae.engine` loads the engine alone.
    """
    if name == "load_model":
        from .saved import load_model
        return load_model
    if name in __all__:
        from . import engine, ops  # noqa: F401
        return getattr(engine, name)
    raise AttributeError(f"module 'minivae' has no attribute {name!r}")
