"""A generated image set with known factors (shape x scale x x-position x y-position), and the
mutual information gap (MIG) that scores how well a code separates those factors.

In the spirit of dSprites (Matthey et al. 2017): binary 28x28 images of one white shape each,
every combination of the factors exactly once, drawn by this module, so no download is needed
and the true factors of every image are known. The images are a pure function of the factor
values; the seed only shuffles them and chooses the held-out split.
"""
import numpy as np

SHAPES = ("square", "ellipse", "triangle")
SCALES = (3.0, 4.0, 5.0, 6.0)
POSITIONS = tuple(np.linspace(7.0, 21.0, 15))  # centre coordinates, pixels
FACTORS = ("shape", "scale", "x", "y")


def draw(shape, scale, cx, cy, size=28):
    """One binary image (size, size) of `shape` with half-width `scale` centred at (cx, cy)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    dx, dy = x - cx, y - cy
    if shape == "square":
        inside = (np.abs(dx) <= scale) & (np.abs(dy) <= scale)
    elif shape == "ellipse":  # wider than tall, so an ellipse and a square of one scale differ
        inside = (dx / scale) ** 2 + (dy / (0.6 * scale)) ** 2 <= 1
    elif shape == "triangle":  # apex up: the half-width grows from 0 at the top to scale at the base
        inside = (dy >= -scale) & (dy <= scale) & (np.abs(dx) <= (dy + scale) / 2)
    else:
        raise ValueError(f"unknown shape '{shape}'; choose from {SHAPES}")
    return inside


def factor_grid():
    """Every combination of the factors as integer indices, (N, 4) in the order of FACTORS."""
    sizes = [len(SHAPES), len(SCALES), len(POSITIONS), len(POSITIONS)]
    return np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1).reshape(-1, 4)


def make_shapes(seed=0, test_fraction=0.2, dtype=np.float32):
    """(x_train, v_train, x_test, v_test): flat binary images (N, 784) and their factor indices (N, 4).

    All 3 * 4 * 15 * 15 = 2,700 images, shuffled by `seed`, the last `test_fraction` held out.
    """
    v = factor_grid()
    x = np.stack([draw(SHAPES[s], SCALES[k], POSITIONS[i], POSITIONS[j]).ravel() for s, k, i, j in v])
    order = np.random.default_rng(seed).permutation(len(v))
    x, v = x[order].astype(dtype), v[order]
    n_test = int(round(test_fraction * len(v)))
    return x[n_test:], v[n_test:], x[:n_test], v[:n_test]


def discrete_mutual_information(a, b):
    """I(a; b) in nats of two integer arrays (N,), from their joint histogram (plug-in estimate)."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))


def discretize(z, bins=20):
    """Each column of z (N, d) cut into `bins` equal-width bins over its range: integers (N, d)."""
    lo, hi = z.min(0), z.max(0)
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    return np.clip(((z - lo) / width).astype(int), 0, bins - 1)


def mutual_information_gap(z, v, bins=20):
    """MIG: the mean over factors k of (I(z_j*; v_k) - I(z_j'; v_k)) / H(v_k), where j* and j' are
    the latent dimensions sharing the most and the second most information with v_k.

    z: (N, d) codes (e.g. posterior means); v: (N, K) integer factor values. 0 when each factor is
    spread over several dimensions equally, 1 when each is captured wholly by one dimension.
    Returns (mig, gaps per factor, the (d, K) matrix of I(z_j; v_k)).
    Reference: Chen et al. 2018, arXiv:1802.04942, Sec. 4.1 (eq. 6); the histogram estimate of
    I(z_j; v_k) follows Locatello et al. 2019, arXiv:1811.12359 (20 bins).
    """
    zd = discretize(np.asarray(z, dtype=np.float64), bins)
    mi = np.array([[discrete_mutual_information(zd[:, j], v[:, k]) for k in range(v.shape[1])]
                   for j in range(zd.shape[1])])  # (d, K)
    entropy = np.array([discrete_mutual_information(v[:, k], v[:, k]) for k in range(v.shape[1])])
    top2 = np.sort(mi, axis=0)[::-1][:2]  # (2, K): largest and second largest per factor
    gaps = (top2[0] - top2[1]) / entropy
    return float(gaps.mean()), gaps, mi


def traversal(decode, mu, dims, values):
    """Rows of images: for each latent dimension in `dims`, mu with that dimension set to each of
    `values` in turn, decoded. decode(z (n, d)) -> images (n, n_pixels). Returns (len(dims), len(values), n_pixels)."""
    rows = []
    for j in dims:
        z = np.repeat(np.asarray(mu)[None, :], len(values), axis=0)
        z[:, j] = values
        rows.append(decode(z))
    return np.stack(rows)
