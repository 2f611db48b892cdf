"""minivae: variational autoencoders from scratch on NumPy.

Reading order (each module builds only on the ones before it):
  engine.py        Tensor, the primitive registry and the iterative backward pass
  ops.py           every primitive with its VJP beside it, then composites (mean, softmax, ...)
  gradcheck.py     finite-difference gradient checks (random projections and full gradients)
  layers.py        Module, Dense, MLP, Embedding, GRUCell, GRU
  distributions.py reparameterised Gaussian sampling, analytic KL, log-likelihoods
  elbo.py          the ELBO, beta and free bits
  schedules.py     KL annealing schedules as pure functions of the step
  optim.py         SGD and Adam
  models.py        the image VAE and the sentence VAE
  collapse.py      the posterior-collapse toolkit (BN-VAE, MDR, soft free bits, bag of words)
  diagnostics.py   held-out ELBO, importance-weighted likelihood, active units, mutual information
  data.py, text.py real images (with an offline fallback) and text corpora
  checkpoint.py, fileio.py, plot.py   saving, atomic writes, figures
"""
from .engine import PRIMITIVES, Tensor, no_grad

__all__ = ["Tensor", "no_grad", "PRIMITIVES"]
__version__ = "0.1.0"
