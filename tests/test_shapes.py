"""The generated dSprites-like shapes (minivae/shapes.py): the factor grid is complete, the
held-out scoring set is one fixed set for every seed, and each factor changes the image as it
should -- shape changes the outline, scale the area, orientation the direction of the long axis,
x and y move the shape by whole pixels."""
import numpy as np
import pytest

from minivae import shapes

SIZES = (len(shapes.SHAPES), len(shapes.SCALES), len(shapes.ORIENTATIONS), len(shapes.POSITIONS), len(shapes.POSITIONS))


def image(s, k, o, i, j):
    """One image (SIZE, SIZE) as integers, from its five factor indices."""
    return shapes.draw(np.array([[s, k, o, i, j]])).reshape(shapes.SIZE, shapes.SIZE).astype(int)


def test_the_grid_holds_every_combination_once_and_the_held_out_set_is_fixed():
    v = shapes.factor_grid()
    assert v.shape == (int(np.prod(SIZES)), 5) and len({tuple(row) for row in v}) == len(v)
    for f, n in enumerate(SIZES):
        np.testing.assert_array_equal(np.unique(v[:, f]), np.arange(n))
    x_train, v_train, x_test, v_test = shapes.make_shapes(seed=1)
    again = shapes.make_shapes(seed=2)
    np.testing.assert_array_equal(x_test, again[2])  # the scoring set does not follow the seed
    np.testing.assert_array_equal(v_test, again[3])
    assert not np.array_equal(v_train, again[1])  # the seed shuffles the training order only
    assert {tuple(r) for r in v_train} == {tuple(r) for r in again[1]}
    assert len(v_test) == shapes.N_TEST and len(v_train) + len(v_test) == len(v)
    assert {tuple(r) for r in v_train} | {tuple(r) for r in v_test} == {tuple(r) for r in v}  # disjoint, complete
    np.testing.assert_array_equal(x_test, shapes.draw(v_test))  # each image is its factors' drawing
    np.testing.assert_array_equal(x_train[:100], shapes.draw(v_train[:100]))
    assert x_train.dtype == np.float32 and x_train.shape[1] == shapes.SIZE ** 2 == 1024
    assert set(np.unique(x_train)) == {0.0, 1.0}
    keys = [row.tobytes() for row in np.packbits(np.concatenate([x_train, x_test]) > 0, axis=1)]
    assert len(set(keys)) == 27136  # the docstring's count
    first = {}
    for n, key in enumerate(keys):
        first.setdefault(key, n)
    twins = np.concatenate([v_train, v_test])[[n for n, key in enumerate(keys) if first[key] != n]]
    assert set(twins[:, 1]) == {0}  # only the smallest shapes, turned a little, repeat an image
    for f in range(5):  # every value of every factor is scored
        np.testing.assert_array_equal(np.unique(v_test[:, f]), np.arange(SIZES[f]))


def test_x_and_y_move_the_shape_by_one_pixel_and_it_stays_inside():
    for s, k, o in [(0, 5, 5), (1, 5, 3), (2, 5, 0), (2, 0, 2)]:
        for i in range(len(shapes.POSITIONS) - 1):
            np.testing.assert_array_equal(image(s, k, o, i + 1, 4), np.roll(image(s, k, o, i, 4), 1, axis=1))
            np.testing.assert_array_equal(image(s, k, o, 4, i + 1), np.roll(image(s, k, o, 4, i), 1, axis=0))
    corners = shapes.draw(np.array([[s, 5, o, i, j] for s in range(3) for o in range(6)
                                    for i in (0, 15) for j in (0, 15)])).reshape(-1, shapes.SIZE, shapes.SIZE)
    centred = shapes.draw(np.array([[s, 5, o, 7, 7] for s in range(3) for o in range(6)
                                    for _ in range(4)])).reshape(-1, shapes.SIZE, shapes.SIZE)
    np.testing.assert_array_equal(corners.sum((1, 2)), centred.sum((1, 2)))  # nothing cut off at the edges


def test_scale_grows_the_area_and_shape_changes_the_outline():
    for s in range(3):
        for o in range(6):
            areas = [image(s, k, o, 7, 7).sum() for k in range(6)]
            assert all(a < b for a, b in zip(areas, areas[1:])), (s, o, areas)
    for k in range(6):
        a, b, c = (image(s, k, 0, 7, 7) for s in range(3))
        assert min(np.abs(a - b).sum(), np.abs(a - c).sum(), np.abs(b - c).sum()) >= 4


def long_axis_degrees(img):
    """Direction of the long axis of a white region, degrees counterclockwise from +x, y up."""
    rows, cols = np.nonzero(img)
    points = np.stack([cols - cols.mean(), -(rows - rows.mean())])  # x right, y up
    vals, vecs = np.linalg.eigh(np.cov(points))
    x, y = vecs[:, -1]
    return np.degrees(np.arctan2(y, x)) % 180


def test_orientation_turns_the_ellipse_counterclockwise_and_changes_every_large_shape():
    for o, degrees in enumerate(shapes.ORIENTATIONS):
        off = (long_axis_degrees(image(1, 5, o, 7, 7)) - degrees + 90) % 180 - 90  # an axis: 180 = 0
        assert abs(off) < 3.0, (degrees, off)  # binary pixels: the drawn axis is a few degrees off at most
    for s in range(3):
        for k in (3, 4, 5):  # large enough for a turn of 8 degrees to show in binary pixels
            turned = {image(s, k, o, 7, 7).tobytes() for o in range(6)}
            assert len(turned) == 6, (shapes.SHAPES[s], k)


def test_bad_factor_indices_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"v must be integer factor indices \(N, 5\)"):
        shapes.draw(np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        shapes.inside("star", np.zeros(2), np.zeros(2))


# ------------------------------------------------------------------ MIG from the posteriors
def mixture_information(centres, sigma):
    """I(z; v) in nats for v uniform over len(centres) values and z | v ~ N(centres[v], sigma**2):
    H(z) - H(z | v), the entropy of the Gaussian mixture by quadrature on a fine grid."""
    grid = np.linspace(min(centres) - 10 * sigma, max(centres) + 10 * sigma, 200001)
    density = np.mean([np.exp(-0.5 * ((grid - c) / sigma) ** 2) for c in centres], axis=0) / (sigma * np.sqrt(2 * np.pi))
    h_z = -np.sum(density * np.log(np.maximum(density, 1e-300))) * (grid[1] - grid[0])
    return h_z - 0.5 * np.log(2 * np.pi * np.e * sigma ** 2)


def test_posterior_information_matches_the_analytic_information_of_a_noisy_code():
    v = np.repeat(np.arange(4), 1000)[:, None]  # one factor, 4 values, 1,000 images each
    for sigma in (0.3, 0.6, 1.5):  # from nearly all of log 4 nats to a small part of it
        mu, logvar = v * 1.0, np.full(v.shape, 2 * np.log(sigma))  # q(z|x) = N(v, sigma**2)
        estimate = shapes.posterior_mutual_information(mu, logvar, v, np.random.default_rng(0))[0, 0]
        assert estimate == pytest.approx(mixture_information([0, 1, 2, 3], sigma), abs=0.03), sigma
        assert estimate <= np.log(4) + 0.01  # never above the factor's entropy


def test_a_switched_off_dimension_shares_nothing_although_its_mean_follows_the_factor():
    v = shapes.factor_grid()[::11]
    rng = np.random.default_rng(1)
    mu = np.stack([v[:, 3] + 0.05 * rng.standard_normal(len(v)), 1e-3 * v[:, 3]], 1)  # z0 codes x; z1's mean barely moves
    logvar = np.stack([np.full(len(v), np.log(0.05 ** 2)), np.zeros(len(v))], 1)  # z1: q(z1|x) = N(~0, 1), switched off
    mi = shapes.posterior_mutual_information(mu, logvar, v, rng)
    assert mi[1].max() < 0.01  # Chen et al.'s estimator: nothing
    assert mi[0, 3] == pytest.approx(np.log(16), abs=0.05) and mi[0, 3] <= np.log(16) + 0.01
    _, gaps, histogram = shapes.mutual_information_gap(mu, v)
    assert histogram[1, 3] > 2.0  # the histogram of the means counts z1's drift as information about x ...
    assert gaps[3] < 0.1  # ... so x's gap vanishes, while from the posteriors it is nearly 1
    assert shapes.posterior_mig(mu, logvar, v, rng)[1][3] > 0.9


def test_posterior_mig_is_high_for_a_disentangled_code_and_low_for_noise():
    v = shapes.factor_grid()[::23]
    rng = np.random.default_rng(2)
    logvar = np.full(v.shape, np.log(0.1 ** 2))
    mig, gaps, mi = shapes.posterior_mig(v + 0.1 * rng.standard_normal(v.shape), logvar, v, rng)
    assert mig > 0.9 and mi.shape == (5, 5)
    assert shapes.posterior_mig(rng.standard_normal(v.shape), np.zeros(v.shape), v, rng)[0] < 0.02
