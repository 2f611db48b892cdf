"""Sequences with known dynamics for the TD-VAE, and the measures of its rollouts.

Two tasks of Gregor et al. (2019), shrunk to a laptop:
  oscillator      a 1-D harmonic oscillator with random frequency, amplitude and phase, noise on
                  its dynamics and on the observed position (the paper's Sec. 5.3)
  moving_digits   one 14x14 MNIST digit moving one pixel per frame left or right with wrap-around
                  (the paper's Sec. 5.2 at a quarter of the pixels)
and what a rollout is scored by: a sinusoid fitted to a predicted stretch (frequency, amplitude,
phase), the best circular shift between two frames (direction and jump size), and the
binary cross-entropy against a digit at its best shift (identity, whatever the position).
Plain NumPy: nothing here is trained.
Reference: Gregor, Papamakarios, Besse, Buesing & Weber 2019, arXiv:1806.03107, Sec. 5.2-5.3.
"""
import numpy as np

OMEGA = (0.3, 0.6)  # angular frequency range (radians per step): periods of 10.5 to 21 steps
AMPLITUDE = (0.5, 1.5)


# ------------------------------------------------------------------ task A: the noisy oscillator
def oscillator_step(x, v, omega, noise_x=0.0, noise_v=0.0):
    """One step of symplectic (semi-implicit) Euler with dt = 1: v' = v - omega**2 * x; x' = x + v'.

    Symplectic, so energy does not drift: the modified energy (see energy) is conserved exactly,
    the physical one oscillates by a few per cent. noise_x, noise_v are added after the step.
    """
    v = v - omega ** 2 * x + noise_v
    return x + v + noise_x, v


def energy(x, v, omega, modified=False):
    """E = 0.5 * (v**2 + omega**2 * x**2), or with modified=True the quantity symplectic Euler
    conserves exactly: 0.5 * (v**2 + omega**2 * x**2 - omega**2 * x * v)."""
    extra = -omega ** 2 * x * v if modified else 0.0
    return 0.5 * (v ** 2 + omega ** 2 * x ** 2 + extra)


def oscillator(n, length, rng, process_noise=0.01, obs_noise=0.1):
    """n noisy oscillator sequences: (obs (n, length, 1), state) with state a dict of the truth.

    omega ~ U(OMEGA); amplitude ~ U(AMPLITUDE); phase ~ U(0, 2 pi) set x_0 = A cos(phase),
    v_0 = -A omega sin(phase). Each step adds N(0, process_noise**2) to x and v; the observation
    is x_t + N(0, obs_noise**2). state holds x, v (n, length) and omega, amplitude (n,).
    """
    omega = rng.uniform(*OMEGA, n)
    amplitude = rng.uniform(*AMPLITUDE, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    x, v = np.empty((n, length)), np.empty((n, length))
    x[:, 0], v[:, 0] = amplitude * np.cos(phase), -amplitude * omega * np.sin(phase)
    noise = rng.normal(0.0, process_noise, (2, n, length))
    for t in range(1, length):
        x[:, t], v[:, t] = oscillator_step(x[:, t - 1], v[:, t - 1], omega, noise[0, :, t], noise[1, :, t])
    obs = x + rng.normal(0.0, obs_noise, x.shape)
    return obs[..., None], {"x": x, "v": v, "omega": omega, "amplitude": amplitude}


def continuation(x, v, omega, steps):
    """Noiseless positions for `steps` steps after the state (x, v): (n, steps), step 1 first."""
    out = np.empty((len(x), steps))
    for k in range(steps):
        x, v = oscillator_step(x, v, omega)
        out[:, k] = x
    return out


def fit_sinusoid(y, omegas=np.linspace(0.05, 1.5, 1451)):
    """Least-squares fit y_k ~ a cos(omega k) + b sin(omega k) + c, omega on a grid, per row of y (n, L).

    Returns omega, amplitude sqrt(a**2 + b**2) and phase atan2(-b, a) (the phase at k = 0), each (n,).
    """
    k = np.arange(y.shape[1])
    best_err, best = np.full(len(y), np.inf), [np.zeros(len(y)) for _ in range(4)]
    for w in omegas:
        basis = np.stack([np.cos(w * k), np.sin(w * k), np.ones_like(k, dtype=float)], axis=1)  # (L, 3)
        coef, *_ = np.linalg.lstsq(basis, y.T, rcond=None)  # (3, n)
        err = ((basis @ coef - y.T) ** 2).sum(axis=0)
        better = err < best_err
        best_err[better] = err[better]
        for arr, value in zip(best, (np.full(len(y), w), coef[0], coef[1], coef[2])):
            arr[better] = value[better]
    omega, a, b, _ = best
    return omega, np.hypot(a, b), np.arctan2(-b, a)


def phase_error(phase_a, phase_b):
    """|phase_a - phase_b| wrapped to [0, pi]: pi/2 on average for unrelated phases."""
    return np.abs(np.angle(np.exp(1j * (phase_a - phase_b))))


# ------------------------------------------------------------------ task B: the moving digit
def shrink(images):
    """28x28 images (N, 784) to 14x14 (N, 196) by averaging each 2x2 block."""
    return images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196)


def moving_digits(images, length, rng, side=14):
    """Sequences of one digit moving one pixel per frame with wrap-around: (frames (n, length,
    side*side), direction (n,) of +1 (right) or -1 (left)). The start shift is uniform."""
    n = len(images)
    direction = rng.choice([-1, 1], n)
    start = rng.integers(0, side, n)
    pictures = images.reshape(n, side, side)
    frames = np.empty((n, length, side * side), images.dtype)
    for i in range(n):
        for t in range(length):
            frames[i, t] = np.roll(pictures[i], start[i] + direction[i] * t, axis=1).ravel()
    return frames, direction


def best_shift(a, b, side=14):
    """The circular column shift s in [-side/2 + 1, side/2] that best maps frame a onto frame b
    (largest correlation of roll(a, s) with b), for frames (..., side*side); the answer (...,)."""
    a = a.reshape(*a.shape[:-1], side, side) - a.mean(axis=-1)[..., None, None]
    b = b.reshape(*b.shape[:-1], side, side) - b.mean(axis=-1)[..., None, None]
    shifts = np.arange(-side // 2 + 1, side // 2 + 1)
    scores = np.stack([(np.roll(a, s, axis=-1) * b).sum(axis=(-2, -1)) for s in shifts], axis=-1)
    return shifts[scores.argmax(axis=-1)]


def aligned_bce(prob, image, side=14, eps=1e-3):
    """Binary cross-entropy (nats per frame) of the target `image` (..., side*side) under pixel
    probabilities prob (..., side*side), at the circular shift of the image that fits best.

    Probabilities are clipped to [eps, 1 - eps] so that a copied frame of 0s and 1s stays finite.
    """
    p = np.clip(prob, eps, 1 - eps)
    picture = image.reshape(*image.shape[:-1], side, side)
    losses = []
    for s in range(side):
        target = np.roll(picture, s, axis=-1).reshape(image.shape)
        losses.append(-(target * np.log(p) + (1 - target) * np.log(1 - p)).sum(axis=-1))
    return np.min(losses, axis=0)
