"""Tests for minivae.plot: every function writes one valid PNG atomically and leaks no figure."""
import inspect
import os
import statistics
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402  (only to check that no pyplot figure is left open)
from matplotlib.figure import Figure  # noqa: E402

from minivae import charts, plot  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
IMAGES = RNG.random((12, 784))
MNIST_RECORDS = [
    {"epoch": 1, "train_neg_elbo": 180.0, "test_neg_elbo": 150.0, "test_rec": 130.0, "test_kl": 20.0, "beta": 0.5},
    {"epoch": 2, "train_neg_elbo": 140.0, "test_neg_elbo": None, "test_rec": 110.0, "beta": 1.0},  # gaps
    {"epoch": 3, "train_neg_elbo": 120.0, "test_neg_elbo": 115.0, "test_rec": 95.0, "test_kl": 21.0, "beta": 1.0},
]
TEXT_RECORDS = [{"step": 100 * s, "train_nll": 90.0 - s, "train_kl": 0.5 * s, "valid_nll": 91.0 - s,
                 "valid_kl": 0.4 * s, "beta": min(1.0, s / 3), "active_units": s, "mi": 0.1 * s} for s in range(5)]
TABLE = [{"method": "vanilla", "active_units": 1}, {"method": "free bits", "active_units": 12},
         {"method": "not run yet"}]

# One row per public plotting function: name -> call writing to `path`.
CALLS = {
    "image_grid": lambda path: plot.image_grid(IMAGES, path, nrow=4, title="samples"),
    "reconstructions": lambda path: plot.reconstructions(IMAGES, IMAGES[::-1], path, n=5),
    "interpolation_grid": lambda path: plot.interpolation_grid([IMAGES[:6], IMAGES[6:]], path, row_labels=["a", "b"]),
    "latent_grid": lambda path: plot.latent_grid(lambda z: np.full((len(z), 784), 0.5), path, n=4),
    "curves": lambda path: plot.curves(MNIST_RECORDS, path, [("beta", ["beta"], "β")]),
    "training_curves": lambda path: plot.training_curves(MNIST_RECORDS, path),
    "text_curves": lambda path: plot.text_curves(TEXT_RECORDS, path),
    "beta_schedule": lambda path: plot.beta_schedule(lambda step: min(1.0, step / 50), 200, path),
    "latent_scatter": lambda path: plot.latent_scatter(RNG.normal(size=(50, 5)), RNG.integers(0, 10, 50), path),
    "kl_per_dim": lambda path: plot.kl_per_dim([0.01, 2.5, 0.3, 4.0], path, threshold=0.25),
    "bars": lambda path: plot.bars(TABLE, "active_units", path),
    "line_panels": lambda path: charts.line_panels([("a", [(np.arange(5), np.arange(5) ** 2, {"label": "x^2"})]),
                                                  ("b", [(np.arange(3), np.ones(3), {"ls": "--", "label": "1"})])], path, ncol=1),
    "bar_chart": lambda path: charts.bar_chart([0.5, 0.25, 0.0, 0.25], path, "code k", "fraction", "code usage"),
}


def test_every_public_function_has_a_row():
    public = {name for module in (plot, charts) for name, f in inspect.getmembers(module, inspect.isfunction)
              if f.__module__ == module.__name__ and not name.startswith("_")}
    assert public - {"pca_2d"} == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_writes_one_png_and_closes_everything(name, tmp_path):
    path = tmp_path / "out.png"
    returned = CALLS[name](path)
    assert returned == os.fspath(path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert os.listdir(tmp_path) == ["out.png"]  # no temporary file left behind
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_failed_render_leaves_old_file_untouched(name, tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"old picture")

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk on fire"):
        CALLS[name](path)
    assert path.read_bytes() == b"old picture"
    assert os.listdir(tmp_path) == ["out.png"]
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", ["image_grid", "training_curves"])
def test_failed_rename_removes_temporary_file(name, tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"old picture")

    def broken_replace(src, dst):
        with open(src, "rb") as f:
            assert f.read().startswith(PNG_SIGNATURE)  # the PNG was fully written first
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        CALLS[name](path)
    assert path.read_bytes() == b"old picture"
    assert os.listdir(tmp_path) == ["out.png"]


def _capture_figure(monkeypatch):
    """Make plot._save record the figure it was given instead of writing it."""
    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.append(fig) or os.fspath(path))
    return figures


@pytest.mark.parametrize("d", [2, 5])
def test_latent_scatter_projects_onto_principal_components_when_d_exceeds_2(d, tmp_path, monkeypatch):
    figures = _capture_figure(monkeypatch)
    plot.latent_scatter(RNG.normal(size=(40, d)), None, tmp_path / "out.png")
    ax = figures[0].axes[0]
    if d == 2:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z2")
    else:
        assert "PC 1" in ax.get_xlabel() and "SVD" in ax.get_xlabel() and "PC 2" in ax.get_ylabel()


def test_pca_2d_keeps_the_two_directions_of_largest_variance():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    mu = (rng.normal(size=(2000, 5)) * [5.0, 2.0, 0.3, 0.2, 0.1]) @ basis.T + 7.0  # (N, 5), off-centre
    points, share = plot.pca_2d(mu)
    top_two = np.sort(np.linalg.eigvalsh(np.cov(mu.T)))[::-1][:2]
    np.testing.assert_allclose(points.var(axis=0, ddof=1), top_two, rtol=1e-10)
    np.testing.assert_allclose(points.mean(axis=0), 0.0, atol=1e-9)
    assert share[0] > share[1] > 0 and share.sum() < 1
    assert np.all(plot.pca_2d(np.ones((4, 3)))[1] == 0)  # no variance: shares are 0, no warning


def test_curves_skip_missing_keys_and_keep_gaps(tmp_path, monkeypatch):
    figures = _capture_figure(monkeypatch)
    records = [{key: value for key, value in r.items() if not key.endswith("kl")} for r in MNIST_RECORDS]
    plot.training_curves(records, tmp_path / "out.png")
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles == ["-ELBO", "Reconstruction -log p(x|z)", "KL weight β"]
    test_line = [line for line in figures[0].axes[0].get_lines() if line.get_label() == "test_neg_elbo"][0]
    assert list(test_line.get_xdata()) == [1, 2, 3]
    assert np.isnan(test_line.get_ydata()[1])


def test_latent_grid_decodes_gaussian_quantiles_with_z2_growing_upwards(tmp_path):
    seen = []

    def decode(z):
        seen.append(z)
        return np.zeros((len(z), 784))

    plot.latent_grid(decode, tmp_path / "out.png", n=5, quantiles=(0.05, 0.95))
    z = seen[0]  # (25, 2), row-major from the top-left tile
    q95 = statistics.NormalDist().inv_cdf(0.95)
    assert z.shape == (25, 2)
    np.testing.assert_allclose(q95, 1.6448536269514722, rtol=1e-12)
    np.testing.assert_allclose(z[0], [-q95, q95])
    np.testing.assert_allclose(z[-1], [q95, -q95])
    np.testing.assert_allclose(z[12], [0.0, 0.0], atol=1e-12)


def test_tile_places_images_row_by_row_with_white_separators():
    images = np.arange(3 * 2 * 2, dtype=float).reshape(3, 2, 2) / 12  # three 2x2 images
    grid = plot._tile(images, ncol=2)
    assert grid.shape == (7, 7)
    np.testing.assert_array_equal(grid[1:3, 4:6], images[1])
    np.testing.assert_array_equal(grid[4:6, 1:3], images[2])
    assert np.all(grid[4:6, 4:6] == 1.0) and np.all(grid[0] == 1.0)


class FakeTensor:
    data = np.zeros((2, 784))


@pytest.mark.parametrize("call, error, message", [
    (lambda p: plot.image_grid(IMAGES, p, image_shape=(14, 14)), ValueError, r"\(N, 196\).*image_shape"),
    (lambda p: plot.image_grid(IMAGES * 10 - 5, p), ValueError, r"\[0, 1\].*logits"),
    (lambda p: plot.image_grid(FakeTensor(), p), TypeError, "tensor.data"),
    (lambda p: plot.reconstructions(IMAGES, IMAGES[:3], p), ValueError, "same shape"),
    (lambda p: plot.interpolation_grid([IMAGES[:3], IMAGES[:4]], p), ValueError, "equal lengths"),
    (lambda p: plot.latent_grid(lambda z: IMAGES, p, n=3), ValueError, "returned 12 images for 9"),
    (lambda p: plot.latent_grid(lambda z: IMAGES, p, quantiles=(0.0, 1.0)), ValueError, "quantiles"),
    (lambda p: plot.training_curves([{"epoch": 1, "loss": 3.0}], p), ValueError, "none of the keys"),
    (lambda p: plot.training_curves([], p), ValueError, "empty"),
    (lambda p: plot.beta_schedule(lambda s: 1.0, 0, p), ValueError, "total_steps"),
    (lambda p: plot.latent_scatter(np.zeros((10, 1)), None, p), ValueError, "d >= 2"),
    (lambda p: plot.latent_scatter(np.zeros((10, 3)), [0, 1], p), ValueError, "labels"),
    (lambda p: plot.kl_per_dim(np.zeros((2, 3)), p), ValueError, "1-D"),
    (lambda p: plot.bars(TABLE, "kl", p), ValueError, "'kl'"),
])
def test_bad_input_raises_a_clear_error_and_writes_nothing(call, error, message, tmp_path):
    with pytest.raises(error, match=message):
        call(tmp_path / "out.png")
    assert os.listdir(tmp_path) == []
    assert plt.get_fignums() == []


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "minivae\[plot\]"'):
        plot.image_grid(IMAGES, tmp_path / "out.png")


@pytest.mark.parametrize("name", ["image_grid", "interpolation_grid", "reconstructions", "latent_grid"])
def test_images_outside_0_1_are_refused_unless_clipped_and_the_title_says_so(name, tmp_path, monkeypatch):
    """A Gaussian decoder's means are unbounded: refused by default (a logit passed by mistake must
    not pass silently), drawn clipped to [0, 1] with clip=True, with the title saying so."""
    means = 3 * RNG.standard_normal((12, 784))  # well outside [0, 1]
    calls = {
        "image_grid": lambda **kw: plot.image_grid(means, tmp_path / "a.png", title="samples", **kw),
        "interpolation_grid": lambda **kw: plot.interpolation_grid([means[:6], means[6:]], tmp_path / "a.png", **kw),
        "reconstructions": lambda **kw: plot.reconstructions(IMAGES, means, tmp_path / "a.png", **kw),
        "latent_grid": lambda **kw: plot.latent_grid(lambda z: 3 * np.tile(z[:, :1], 784), tmp_path / "a.png",
                                                     n=4, **kw)}
    with pytest.raises(ValueError, match="clip=True"):
        calls[name]()
    drawn = {}
    real = plot._image_figure

    def spy(grid, title, *args):
        drawn.update(grid=grid, title=title)
        return real(grid, title, *args)
    monkeypatch.setattr(plot, "_image_figure", spy)
    calls[name](clip=True)
    assert drawn["grid"].min() >= 0 and drawn["grid"].max() <= 1 and drawn["title"].endswith(plot.CLIPPED)
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_SIGNATURE) and plt.get_fignums() == []
