"""minivae: variational autoencoders from scratch on NumPy.

Reading order (each module builds only on the ones before it):
  engine.py    Tensor, the primitive registry and the iterative backward pass
  ops.py       every primitive with its VJP beside it, then composites (mean, softmax, ...)
  gradcheck.py finite-difference gradient checks (random projections and full gradients)
"""
from .engine import Tensor, no_grad, PRIMITIVES

__all__ = ["Tensor", "no_grad", "PRIMITIVES"]
__version__ = "0.1.0"
