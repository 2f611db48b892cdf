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
