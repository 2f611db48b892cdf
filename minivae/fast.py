"""Fast forms of two textbook computations, each tested equal to the form it stands beside.

  iw_log_likelihood  diagnostics.iw_log_likelihood on every core: chunks of samples in threads
                     (NumPy releases the GIL inside its loops and BLAS calls), OpenBLAS held to
                     one thread meanwhile, and the float32 Bernoulli term in fewer passes.
  FusedAdam          optim.Adam's update in place, in cache-sized blocks spread over threads,
                     with moments that never go subnormal.
Both keep the textbook arithmetic, so they give the textbook's numbers (FusedAdam bit for bit
while no moment is subnormal); tests/test_fast.py checks both. docs/speed.md gives what each
buys, with the command that measures it.
"""
import contextlib
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .diagnostics import _log_weights, log_mean_exp
from .engine import Tensor, no_grad
from .optim import Adam

THREADS = min(4, os.cpu_count() or 1)  # threads of iw_log_likelihood and FusedAdam
BLOCK = 1 << 15  # entries per block of FusedAdam's update: its seven arrays of blocks fit in L2 cache


# ============================================================================ importance-weighted evaluation
def iw_log_likelihood(model, x, K, rng, batch_size=None, chunk=500, progress=None, threads=THREADS,
                      bernoulli_in_products=True):
    """diagnostics.iw_log_likelihood(model, x, K, rng, batch_size, chunk, progress), on `threads` threads.

    Each batch's chunks of samples are drawn first, in order, so the numbers do not depend on the
    threads; then each thread decodes its chunks with one BLAS thread. With bernoulli_in_products
    a float32 Bernoulli decoder's log p(x|z) is bernoulli_log_likelihood_in_products.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1 importance samples, got {K}")
    batch_size = batch_size or max(1, 4000 // min(K, chunk))
    fast_term = bernoulli_in_products and getattr(model, "likelihood", None) == "bernoulli"
    starts = range(0, len(x), batch_size)
    out = []
    with no_grad(), ThreadPoolExecutor(threads) as pool, blas_threads(1 if threads > 1 else None):
        for start in (progress(starts, len(starts)) if progress else starts):
            xb = x[start:start + batch_size]  # (b, n_in)
            mu, logvar = (t.data for t in model.encode(Tensor(xb)))  # (b, d) each
            log_likelihood = bernoulli_log_likelihood_in_products if fast_term and mu.dtype == np.float32 else None
            eps = [rng.standard_normal((min(chunk, K - k0), *mu.shape)).astype(mu.dtype) for k0 in range(0, K, chunk)]
            log_w = pool.map(lambda e: _log_weights(model, xb, mu, logvar, e, log_likelihood), eps)
            out.append(log_mean_exp(np.concatenate(list(log_w))))
    return np.concatenate(out)


def bernoulli_log_likelihood_in_products(x, x_logits):
    """distributions.bernoulli_log_likelihood(x, x_logits) for float32 logits (k, b, n) and x (b, n).

    The same sum(x*l - softplus(l)) in fewer passes over the logits, with no log1p (slow in float32):
        sum softplus(l) = sum max(l, 0) + sum log(1 + exp(-|l|)),  sum max(l, 0) = (sum l + sum |l|) / 2
    and x*l summed by einsum. The last sum is the log of products of 16 factors, each in (1, 2]: one
    log per 16 pixels, never overflowing. log(1 + e) drops e < 6e-8: at most 5e-5 nats over 784 pixels.
    """
    tail = np.abs(x_logits)
    sum_abs = tail.sum(axis=-1)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    tail += 1.0
    n = tail.shape[-1] // 16 * 16
    products = tail[..., :n].reshape(*tail.shape[:-1], 16, n // 16).prod(axis=-2)  # each at most 2**16
    log_tail = np.log(products).sum(axis=-1) + np.log(tail[..., n:]).sum(axis=-1)
    softplus_sum = 0.5 * (x_logits.sum(axis=-1) + sum_abs) + log_tail
    return np.einsum("kbn,bn->kb", x_logits, x) - softplus_sum


@contextlib.contextmanager
def blas_threads(n):
    """Inside the block, OpenBLAS (the BLAS of NumPy's wheels) runs n threads, restored after. With
    n None, another BLAS, or no /proc/self/maps to find the library in (not Linux): no change."""
    found = _openblas_thread_functions() if n is not None else None
    if found is None:
        yield
        return
    get_threads, set_threads = found
    before = get_threads()
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)


def _openblas_thread_functions():
    """(get, set) of the loaded OpenBLAS's thread count, or None: found through ctypes, by the
    names NumPy's wheels (scipy_openblas, 64-bit integers) and other builds export."""
    if not os.path.exists("/proc/self/maps"):
        return None
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
            get_threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_threads = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get_threads is not None and set_threads is not None:
                return get_threads, set_threads
    return None


# ============================================================================ Adam in fused passes
class FusedAdam(Adam):
    """optim.Adam with the same update, written in place over blocks of BLOCK entries in threads.

    Each block of p, g, m and v is updated by a few in-place passes that reuse two scratch
    blocks, while it sits in cache; blocks go to a pool of `threads` threads, as NumPy releases
    the GIL inside each pass. The arithmetic is optim.Adam's, operation for operation, so the
    results are bitwise the same, except that moments below np.finfo(dtype).tiny (subnormal:
    computed many times more slowly on x86, and a moment that decays without a gradient gets
    there) are set to 0. Its state_dict is Adam's: checkpoints resume with either.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, nonfinite="raise",
                 threads=THREADS, block=BLOCK):
        super().__init__(params, lr, betas, eps, weight_decay, nonfinite)
        self.threads, self.block = int(threads), int(block)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def step(self):
        """Update every parameter whose grad is not None."""
        if not self._gradients_are_finite():
            return
        blocks = []
        for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
            if p.grad is None:
                continue
            if not (p.data.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
                raise ValueError(f"params[{i}]: FusedAdam updates contiguous arrays only; use optim.Adam")
            g = np.ascontiguousarray(self._gradient(i, p)).reshape(-1)
            t = int(self.steps[i]) + 1  # this parameter's own step count, as in optim.Adam
            self.steps[i] = t
            arrays = (p.data.reshape(-1), g, m.reshape(-1), v.reshape(-1))
            for start in range(0, g.size, self.block):
                blocks.append(([a[start:start + self.block] for a in arrays], t))
        if self._pool is None:
            for block, t in blocks:
                self._update(*block, t)
        else:
            list(self._pool.map(lambda job: self._update(*job[0], job[1]), blocks))

    def _update(self, p, g, m, v, t):
        """Adam's update of one block, in place: optim.Adam.step's lines, operation for operation."""
        b1, b2 = self.beta1, self.beta2
        tmp, denom = np.empty_like(g), np.empty_like(g)
        m *= b1                                            # m = b1 * m + (1 - b1) * g
        np.multiply(g, 1 - b1, out=tmp)
        m += tmp
        v *= b2                                            # v = b2 * v + (1 - b2) * g * g
        np.multiply(g, 1 - b2, out=tmp)
        tmp *= g
        v += tmp
        tiny = np.finfo(m.dtype).tiny
        np.copyto(v, 0, where=v < tiny)                    # v >= 0: flush its subnormals
        np.abs(m, out=tmp)
        np.copyto(m, 0, where=tmp < tiny)
        np.divide(v, 1 - b2 ** t, out=denom)               # sqrt(v_hat) + eps
        np.sqrt(denom, out=denom)
        denom += self.eps
        np.divide(m, 1 - b1 ** t, out=tmp)                 # lr * m_hat / (sqrt(v_hat) + eps)
        tmp *= self.lr
        tmp /= denom
        p -= tmp

    def state_dict(self):
        return {**super().state_dict(), "optimizer": "Adam"}  # the same state as Adam's

    def load_state_dict(self, state):
        kind = str(state.get("optimizer"))
        super().load_state_dict({**state, "optimizer": type(self).__name__} if kind == "Adam" else state)
