"""PNG plots for the training scripts: image grids, training curves, β schedules and latent spaces.

Every function takes plain NumPy arrays or lists (pass `tensor.data`, never a Tensor), writes one
PNG atomically with minivae.fileio.atomic_writer, and returns the path. Losses are in nats per
example. Images must lie in [0, 1], unless `clip=True` is passed: then values outside are shown
clipped (a Gaussian decoder's means are unbounded) and the title says so.

matplotlib is optional (pip install "minivae[plot]") and imported only when a plot is drawn. We
draw on a bare matplotlib.figure.Figure with the Agg canvas instead of pyplot: this needs no
display, leaves the user's pyplot backend alone, and registers nothing with pyplot, so no figure
can leak even when drawing fails.
"""
import io
import math
import os
import statistics

import numpy as np

from minivae.fileio import atomic_writer

# (panel title, record keys drawn in it, y-axis label) for curves().
MNIST_PANELS = [
    ("-ELBO", ["train_neg_elbo", "test_neg_elbo"], "nats per example"),
    ("Reconstruction -log p(x|z)", ["train_rec", "test_rec"], "nats per example"),
    ("KL(q(z|x) || p(z))", ["train_kl", "test_kl"], "nats per example"),
    ("KL weight β", ["beta"], "β"),
]
TEXT_PANELS = [
    ("Reconstruction NLL", ["train_nll", "valid_nll"], "nats per example"),
    ("KL(q(z|x) || p(z))", ["train_kl", "valid_kl"], "nats per example"),
    ("KL weight β", ["beta"], "β"),
    ("Active units", ["active_units"], "number of latent dimensions"),
    ("Mutual information I(x; z)", ["mi"], "nats"),
]


def _new_figure(figsize):
    """A Figure attached to the Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('minivae.plot needs matplotlib: pip install "minivae[plot]"') from err
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Render `fig` to PNG in memory, then write it atomically; the old file survives any failure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    with atomic_writer(path, "wb") as f:
        f.write(buffer.getvalue())
    return os.fspath(path)


def _array(a, name):
    """`a` as a float64 ndarray, with a clear error for engine Tensors."""
    if hasattr(a, "data") and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or list, not {type(a).__name__}; pass tensor.data")
    return np.asarray(a, dtype=np.float64)


CLIPPED = " (values clipped to [0, 1])"  # the title note of a picture drawn with clip=True


def _as_images(images, image_shape, name="images", clip=False):
    """Check and reshape images (N, H*W) or (N, H, W) with values in [0, 1] to (N, H, W).

    With clip, finite values outside [0, 1] are clipped instead of refused.
    """
    images = _array(images, name)
    if clip and np.all(np.isfinite(images)):
        images = np.clip(images, 0.0, 1.0)
    h, w = image_shape
    if images.ndim == 3 and images.shape[1:] == (h, w):
        images = images.reshape(len(images), h * w)
    if images.ndim != 2 or images.shape[1] != h * w or len(images) == 0:
        raise ValueError(f"{name} must have shape (N, {h * w}) or (N, {h}, {w}) for image_shape={image_shape}, "
                         f"got {images.shape}; pass the right image_shape")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name} must be finite and in [0, 1] (got min {images.min():.3g}, max "
                         f"{images.max():.3g}); pass probabilities such as sigmoid(x_logits), not logits; "
                         "clip=True shows unbounded values, e.g. Gaussian means, clipped")
    return images.reshape(-1, h, w)


def _tile(images, ncol, pad=1):
    """Tile images (N, H, W) into one 2-D array, `ncol` per row, separated by white lines."""
    n, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = np.ones((pad + nrow * (h + pad), pad + ncol * (w + pad)))
    for k, image in enumerate(images):
        top, left = pad + (k // ncol) * (h + pad), pad + (k % ncol) * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def _tile_centres(indices, size, pad=1):
    """Pixel coordinate of the centre of tiles number `indices` along an axis of a _tile grid."""
    return pad + np.asarray(indices) * (size + pad) + (size - 1) / 2


def _image_figure(grid, title, width=6.0):
    """A figure showing a _tile grid in grayscale (0 black, 1 white); returns (fig, ax)."""
    fig = _new_figure((width, max(1.0, width * grid.shape[0] / grid.shape[1])))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig, ax


def image_grid(images, path, nrow=None, title=None, image_shape=(28, 28), clip=False):
    """Save images (N, H*W) in [0, 1] as a grayscale grid with `nrow` images per row (default ~sqrt(N))."""
    images = _as_images(images, image_shape, clip=clip)
    ncol = nrow or math.ceil(math.sqrt(len(images)))
    fig, _ = _image_figure(_tile(images, ncol), (title or f"{len(images)} images") + CLIPPED * clip)
    return _save(fig, path)


def interpolation_grid(images_rows, path, row_labels=None, title=None, image_shape=(28, 28), clip=False):
    """Save rows of images (R, K, H*W), e.g. interpolations or latent traversals, one row per row."""
    rows = [_as_images(row, image_shape, f"images_rows[{i}]", clip) for i, row in enumerate(images_rows)]
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError(f"images_rows must be a non-empty list of rows with equal lengths, got lengths "
                         f"{[len(row) for row in rows]}")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"got {len(row_labels)} row_labels for {len(rows)} rows")
    fig, ax = _image_figure(_tile(np.concatenate(rows), ncol=len(rows[0])),
                            (title or f"{len(rows)} rows of {len(rows[0])} images") + CLIPPED * clip)
    if row_labels is not None:
        ax.set_yticks(_tile_centres(range(len(rows)), image_shape[0]), [str(s) for s in row_labels])
    return _save(fig, path)


def reconstructions(x, x_recon, path, n=8, title=None, image_shape=(28, 28), clip=False):
    """Save the first `n` inputs x (top row) above their reconstructions x_recon (bottom row)."""
    x = _as_images(x, image_shape, "x", clip)
    x_recon = _as_images(x_recon, image_shape, "x_recon", clip)
    if x.shape != x_recon.shape:
        raise ValueError(f"x and x_recon must have the same shape, got {x.shape} and {x_recon.shape}")
    return interpolation_grid([x[:n], x_recon[:n]], path, row_labels=["input", "reconstruction"],
                              title=title or "Inputs and their reconstructions", image_shape=image_shape, clip=clip)


def _tick(v):
    return f"{round(v, 2) + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def latent_grid(decode_fn, path, n=15, quantiles=(0.05, 0.95), title=None, image_shape=(28, 28), clip=False):
    """Decode an n x n grid of a 2-D latent space, spaced evenly in probability under p(z) = N(0, I).

    decode_fn maps z (n*n, 2) float64 to images (n*n, H*W) in [0, 1]. Grid coordinates are Gaussian
    quantiles, z = Phi^-1(p) for p evenly spaced over `quantiles`, so every tile covers equal prior mass.
    Reference: Kingma & Welling 2013, arXiv:1312.6114, Figure 4.
    """
    lo, hi = quantiles
    if not 0 < lo < hi < 1:
        raise ValueError(f"quantiles must satisfy 0 < low < high < 1, got {quantiles}")
    z_axis = np.array([statistics.NormalDist().inv_cdf(p) for p in np.linspace(lo, hi, n)])
    z1, z2 = np.meshgrid(z_axis, z_axis[::-1])  # z2 grows upwards, as on a plot
    z = np.stack([z1.ravel(), z2.ravel()], axis=1)  # (n*n, 2)
    images = _as_images(decode_fn(z), image_shape, "decode_fn(z)", clip)
    if len(images) != n * n:
        raise ValueError(f"decode_fn returned {len(images)} images for {n * n} latent points")
    fig, ax = _image_figure(_tile(images, ncol=n), (title or "Decoded 2-D latent grid") + CLIPPED * clip)
    shown = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))  # label at most 5 tiles
    ax.set_xticks(_tile_centres(shown, image_shape[1]), [_tick(v) for v in z_axis[shown]])
    ax.set_yticks(_tile_centres(shown, image_shape[0]), [_tick(v) for v in z_axis[::-1][shown]])
    span = f"Gaussian quantiles {lo:.0%} to {hi:.0%}"
    ax.set_xlabel(f"z1 ({span})")
    ax.set_ylabel(f"z2 ({span})")
    return _save(fig, path)


def _value(record, key):
    value = record.get(key)
    return np.nan if value is None else float(value)


def curves(records, path, panels, x_key=None, title=None):
    """Save one subplot per panel (title, keys, ylabel) of per-epoch/step record dicts.

    x_key defaults to "epoch", else "step", whichever every record has, else the record number.
    Missing or None values leave gaps; keys absent from every record, and empty panels, are skipped.
    """
    records = list(records)
    if not records:
        raise ValueError("records is empty; nothing to plot")
    if x_key is None:
        x_key = next((k for k in ("epoch", "step") if all(r.get(k) is not None for r in records)), None)
    x = [_value(r, x_key) for r in records] if x_key else np.arange(1, len(records) + 1)
    drawn = [(t, [k for k in keys if any(r.get(k) is not None for r in records)], ylabel) for t, keys, ylabel in panels]
    drawn = [(t, keys, ylabel) for t, keys, ylabel in drawn if keys]
    if not drawn:
        wanted = sorted({k for _, keys, _ in panels for k in keys})
        raise ValueError(f"none of the keys {wanted} appear in the records (keys found: {sorted(records[0])})")
    ncol = 2 if len(drawn) <= 4 else 3
    nrow = math.ceil(len(drawn) / ncol)
    fig = _new_figure((4.0 * ncol, 3.0 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (panel_title, keys, ylabel) in zip(axes, drawn):
        for key in keys:
            ax.plot(x, [_value(r, key) for r in records], marker=".", label=key)
        ax.set_title(panel_title)
        ax.set_xlabel(x_key or "record")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")  # names the record key, so a lone test_rec is not mistaken for train
    for ax in axes[len(drawn):]:
        ax.remove()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def training_curves(records, path, title=None):
    """Save -ELBO (train and test), reconstruction, KL and β of the image VAE's per-epoch records."""
    return curves(records, path, MNIST_PANELS, title=title or "Image VAE training")


def text_curves(records, path, title=None):
    """Save NLL, KL, β, active units and mutual information of the text VAE's records."""
    return curves(records, path, TEXT_PANELS, title=title or "Text VAE training")


def beta_schedule(beta_fn, total_steps, path, title=None):
    """Save β = beta_fn(step) for step = 0 .. total_steps - 1."""
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    steps = np.arange(int(total_steps))
    beta = np.array([float(beta_fn(int(s))) for s in steps])
    fig = _new_figure((6.0, 3.0))
    ax = fig.add_subplot()
    ax.plot(steps, beta)
    ax.set_ylim(bottom=min(0.0, beta.min()))
    ax.set_xlabel("training step")
    ax.set_ylabel("β (KL weight)")
    ax.set_title(title or "KL annealing schedule")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pca_2d(mu):
    """Project mu (N, d) onto its top two principal components; return (N, 2) and each one's variance share."""
    centred = mu - mu.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = np.sum(s ** 2)
    share = s[:2] ** 2 / total if total > 0 else np.zeros(2)
    return centred @ vt[:2].T, share


def latent_scatter(mu, labels, path, title=None):
    """Save a scatter of latent means mu (N, d), coloured by label; d > 2 is shown on its top two PCs."""
    mu = _array(mu, "mu")
    if mu.ndim != 2 or mu.shape[1] < 2 or len(mu) < 2:
        raise ValueError(f"mu must have shape (N, d) with N >= 2 and d >= 2, got {mu.shape}")
    if mu.shape[1] == 2:
        points, xlabel, ylabel = mu, "z1", "z2"
    else:
        points, share = pca_2d(mu)
        xlabel, ylabel = (f"PC {i + 1} of mu, SVD ({share[i]:.0%} of variance)" for i in range(2))
    fig = _new_figure((6.0, 5.0))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(mu),):
            raise ValueError(f"labels must have shape ({len(mu)},) to match mu, got {labels.shape}")
        classes, index = np.unique(labels, return_inverse=True)
        if labels.dtype.kind in "iubUS" and len(classes) <= 10:  # few classes: one colour each
            for c in classes:
                keep = labels == c
                ax.scatter(points[keep, 0], points[keep, 1], s=4, alpha=0.6, label=str(c))
            # outside the axes: loc="best" is slow on thousands of points and may hide some
            ax.legend(title="label", markerscale=3, fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
        else:
            dots = ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, cmap="viridis",
                              c=labels.astype(float) if labels.dtype.kind in "iufb" else index)
            fig.colorbar(dots, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"Latent means mu ({len(mu)} points, d = {mu.shape[1]})")
    return _save(fig, path)


def kl_per_dim(kl_values, path, threshold=None, threshold_label="threshold", title=None):
    """Save a bar chart of KL per latent dimension (nats per example), with an optional line at `threshold`."""
    kl = _array(kl_values, "kl_values")
    if kl.ndim != 1 or len(kl) == 0:
        raise ValueError(f"kl_values must be a non-empty 1-D array (one KL per latent dimension), got {kl.shape}")
    fig = _new_figure((max(4.0, 0.3 * len(kl) + 2.0), 3.5))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(kl)), kl)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"{threshold_label} = {threshold:g} nats")
        ax.legend()
    ax.set_xticks(np.arange(0, len(kl), math.ceil(len(kl) / 20)))  # whole numbers, at most 20
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats per example)")
    ax.set_title(title or f"KL per latent dimension (total {kl.sum():.2f} nats)")
    return _save(fig, path)


def bars(table_rows, key, path, label_key="method", xlabel=None, title=None):
    """Save a horizontal bar chart of `key` across the rows of a table (dicts with `label_key` and `key`).

    Rows without a value for `key` get no bar and an "n/a" note.
    """
    rows = list(table_rows)
    if not rows or not any(r.get(key) is not None for r in rows):
        raise ValueError(f"no row has a value for {key!r} (keys found: {sorted(rows[0]) if rows else []})")
    names = [str(r.get(label_key, i)) for i, r in enumerate(rows)]
    values = np.array([_value(r, key) for r in rows])
    fig = _new_figure((6.0, 1.0 + 0.4 * len(rows)))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.barh(positions, np.nan_to_num(values))
    ax.set_yticks(positions, names)
    ax.invert_yaxis()  # first row on top, as in the table
    for y, v in zip(positions, values):
        ax.annotate("n/a" if np.isnan(v) else f"{v:.3g}", (0 if np.isnan(v) else v, y),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")
    ax.margins(x=0.12)  # room for the value labels
    ax.set_xlabel(xlabel or key)
    ax.set_title(title or f"{key} by {label_key}")
    return _save(fig, path)
