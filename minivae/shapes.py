"""A generated dSprites-like image set with known factors, and the mutual information gap (MIG)
that scores how well a code separates those factors.

In the spirit of dSprites (Matthey et al. 2017): binary 32x32 images of one white shape each --
a square, an ellipse or a heart, at 6 scales, 6 orientations and 16 x 16 positions: 27,648
images, every combination of the factors exactly once, drawn at run time (about a second), so no
download is needed and the true factors of every image are known. The images are a pure function
of the factor values. As in dSprites, a small turn of a small shape can leave its pixels as they
were: at the smallest scale, two orientations of the ellipse and two of the heart look alike, so
the grid holds 27,136 distinct images. A fixed set of 5,000 combinations (the same for every
seed) is held out for scoring; a run trains on the other 22,648, in an order its seed shuffles.

The MIG needs the information I(z_j; v_k) each latent dimension shares with each factor, estimated
here two ways: from a histogram of the posterior means (mutual_information_gap, as Locatello et
al. 2019 do), and from the posteriors q(z|x) themselves (posterior_mig, Chen et al. 2018's own
estimator). They differ on a switched-off dimension: its posterior is N(0, 1) for every image, so
it shares nothing with any factor, yet its mean may still drift a little with the image, and the
histogram of means counts that drift as information.
"""
import numpy as np

SIZE = 32  # images are SIZE x SIZE pixels
SHAPES = ("square", "ellipse", "heart")
SCALES = tuple(np.linspace(0.5, 1.0, 6))  # dSprites' six scales, relative to RADIUS
# Degrees, counterclockwise on screen. Within 0..45 no turn repeats another: a square looks the
# same after 90 degrees and mirrored at 90 - angle, an ellipse after 180.
ORIENTATIONS = (0.0, 8.0, 16.0, 24.0, 32.0, 40.0)
POSITIONS = tuple(np.arange(16) + 8.25)  # 16 centres, a quarter pixel off the pixel grid (see below)
FACTORS = ("shape", "scale", "orientation", "x", "y")
RADIUS = 8.0  # pixels from the centre to the shapes' far ends at scale 1
N_TEST = 5000  # held-out combinations, scored by the MIG
TEST_SEED = 2017  # chooses them once: the scoring set is one and the same for every run


def inside(shape, u, w):
    """Whether the points (u, w) (unit coordinates, w pointing up) lie inside `shape` at scale 1."""
    if shape == "square":  # half-side 0.75: its corners reach 1.06 when turned
        return (np.abs(u) <= 0.75) & (np.abs(w) <= 0.75)
    if shape == "ellipse":  # twice as wide as tall, so its orientation shows
        return u ** 2 + (w / 0.5) ** 2 <= 1
    if shape == "heart":  # (a^2 + b^2 - 1)^3 <= a^2 b^3, the classic heart curve, centred and fitted
        a, b = 1.25 * u, 1.25 * w + 0.2
        return (a ** 2 + b ** 2 - 1) ** 3 <= a ** 2 * b ** 3
    raise ValueError(f"unknown shape '{shape}'; choose from {SHAPES}")


def draw(v):
    """Binary images (N, SIZE*SIZE) of the factor indices v (N, 5), in the order of FACTORS.

    Each pixel is white when its centre, moved to the shape's frame (shifted by the position,
    turned back by the orientation, divided by RADIUS * scale), lies inside the shape.
    """
    v = np.asarray(v)
    if v.ndim != 2 or v.shape[1] != len(FACTORS) or v.dtype.kind not in "iu":
        raise ValueError(f"v must be integer factor indices (N, {len(FACTORS)}) in the order {FACTORS}, "
                         f"got {v.dtype} of shape {v.shape}")
    rows, cols = (np.mgrid[0:SIZE, 0:SIZE] + 0.5).astype(np.float32)  # pixel centres, rows pointing down
    images = np.zeros((len(v), SIZE * SIZE), dtype=bool)
    for start in range(0, len(v), 2048):  # in chunks, to bound the (chunk, SIZE, SIZE) temporaries
        part = slice(start, start + 2048)
        _, k, o, i, j = (v[part, f, None, None] for f in range(len(FACTORS)))
        angle = np.radians(np.take(np.float32(ORIENTATIONS), o))
        radius = RADIUS * np.take(np.float32(SCALES), k)
        dx, dy = cols - np.take(np.float32(POSITIONS), i), np.take(np.float32(POSITIONS), j) - rows  # dy points up
        u = (np.cos(angle) * dx + np.sin(angle) * dy) / radius  # (chunk, SIZE, SIZE): the inverse rotation
        w = (np.cos(angle) * dy - np.sin(angle) * dx) / radius
        for n, shape in enumerate(SHAPES):
            mine = np.flatnonzero(v[part, 0] == n)
            images[start + mine] = inside(shape, u[mine], w[mine]).reshape(len(mine), SIZE * SIZE)
    return images


def factor_grid():
    """Every combination of the factors as integer indices, (N, 5) in the order of FACTORS."""
    sizes = [len(SHAPES), len(SCALES), len(ORIENTATIONS), len(POSITIONS), len(POSITIONS)]
    return np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


def held_out():
    """Grid row numbers of the fixed scoring set: N_TEST of them, sorted, the same for every run."""
    return np.sort(np.random.default_rng(TEST_SEED).choice(len(factor_grid()), N_TEST, replace=False))


def make_shapes(seed=0, dtype=np.float32):
    """(x_train, v_train, x_test, v_test): flat binary images (N, SIZE*SIZE) and their factor indices (N, 5).

    The test part is the fixed scoring set (held_out(), in grid order, whatever the seed); the
    training part is every other combination, shuffled by `seed`.
    """
    v = factor_grid()
    test = np.zeros(len(v), dtype=bool)
    test[held_out()] = True
    v_train = np.random.default_rng(seed).permutation(v[~test])
    return draw(v_train).astype(dtype), v_train, draw(v[test]).astype(dtype), v[test]


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
    return (*mig_from_information(mi, v), mi)


def log_mean_density(z, mu, logvar, chunk=500):
    """log q(z_s) = log (1/N) sum_n N(z_s; mu_n, exp(logvar_n)) per dimension: (S, d) for samples
    z (S, d) and the N posteriors mu, logvar (N, d); a stable log-sum-exp over n, S in chunks."""
    out = np.empty(z.shape)
    for start in range(0, len(z), chunk):
        diff = z[start:start + chunk, None, :] - mu[None, :, :]  # (chunk, N, d)
        log_q = -0.5 * (np.log(2 * np.pi) + logvar[None] + diff ** 2 / np.exp(logvar[None]))  # log q(z_s|x_n)
        top = log_q.max(axis=1)  # (chunk, d): subtracted before exp so that nothing underflows to 0
        out[start:start + chunk] = top + np.log(np.mean(np.exp(log_q - top[:, None, :]), axis=1))
    return out


def posterior_mutual_information(mu, logvar, v, rng):
    """I(z_j; v_k) = H(z_j) - H(z_j | v_k) in nats, (d, K), with z_j ~ q(z_j|x) and q(z_j) the
    average of the N posteriors q(z_j|x_n) (one sample z_n ~ q(z|x_n) per image, no binning).

    H(z_j) = -mean_n log q(z_nj); H(z_j | v_k) = sum_a p(v_k = a) H(z_j | v_k = a), where the entropy
    within the slice v_k = a uses only that slice's images, q(z_j | v_k = a) = their posteriors'
    average. A dimension whose posterior is the same for every image shares 0 nats with every factor.
    Reference: Chen et al. 2018, arXiv:1802.04942, Sec. 4 (their estimate of the I in the MIG, eq. 6).
    """
    mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)  # (N, d): z_n ~ q(z|x_n)
    h_z = -log_mean_density(z, mu, logvar).mean(0)  # (d,)
    mi = np.zeros((mu.shape[1], v.shape[1]))
    for k in range(v.shape[1]):
        for a in np.unique(v[:, k]):
            rows = v[:, k] == a
            h_slice = -log_mean_density(z[rows], mu[rows], logvar[rows]).mean(0)  # (d,): H(z | v_k = a)
            mi[:, k] -= rows.mean() * h_slice
        mi[:, k] += h_z
    return mi


def mig_from_information(mi, v):
    """MIG and the gaps per factor from the (d, K) information matrix mi of the codes with v (N, K)."""
    entropy = np.array([discrete_mutual_information(v[:, k], v[:, k]) for k in range(v.shape[1])])
    top2 = np.sort(mi, axis=0)[::-1][:2]  # (2, K): largest and second largest per factor
    gaps = (top2[0] - top2[1]) / entropy
    return float(gaps.mean()), gaps


def posterior_mig(mu, logvar, v, rng):
    """MIG with I(z_j; v_k) estimated from the posteriors q(z|x) = N(mu, exp(logvar)) (Chen et al.'s
    own estimator, posterior_mutual_information) instead of a histogram of the means.
    Returns (mig, gaps per factor, the (d, K) matrix of I(z_j; v_k)).
    Reference: Chen et al. 2018, arXiv:1802.04942, Sec. 4 (eq. 6)."""
    mi = posterior_mutual_information(mu, logvar, v, rng)
    return (*mig_from_information(mi, v), mi)


def kl_per_dimension(mu, logvar):
    """Each latent dimension's KL(q(z_j|x) || N(0, 1)) averaged over the rows of mu, logvar (N, d):
    0.5 * mean_x(mu_j**2 + exp(logvar_j) - logvar_j - 1), nats, (d,). Near 0: an unused dimension."""
    mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    return 0.5 * np.mean(mu ** 2 + np.exp(logvar) - logvar - 1, axis=0)


def traversal(decode, mu, dims, values):
    """Rows of images: for each latent dimension in `dims`, mu with that dimension set to each of
    `values` in turn, decoded. decode(z (n, d)) -> images (n, n_pixels). Returns (len(dims), len(values), n_pixels)."""
    rows = []
    for j in dims:
        z = np.repeat(np.asarray(mu)[None, :], len(values), axis=0)
        z[:, j] = values
        rows.append(decode(z))
    return np.stack(rows)
