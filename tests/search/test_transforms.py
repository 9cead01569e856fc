"""The one grammar of transform labels: compose/parse round trips, the eight orientations as the symmetries
of a square (each undone by its inverse, all distinct), and refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from memscan.errors import InputError
from memscan.search import transforms as T


def test_compose_and_parse_round_trip():
    for orientation, dy, dx in itertools.product(T.ORIENTATIONS, (-3, 0, 2), (-1, 0, 4)):
        label = T.compose(orientation, dy, dx)
        t = T.parse(label)
        assert (t.orientation, t.dy, t.dx, t.unknown) == (orientation, dy, dx, ())
        assert t.label == label
    assert T.compose() == "none" and T.compose("flip", 2, -1) == "flip+shift(+2,-1)"
    assert T.compose("none", 0, -2) == "shift(+0,-2)"


def test_parse_refuses_or_reports_what_is_not_in_the_grammar():
    for bad in ("warp", "flip+flip", "shift(1,2)", "shift(+1,+2)+flip", "rot45"):
        with pytest.raises(InputError, match="cannot read transform label"):
            T.parse(bad)
        assert T.parse(bad, strict=False).unknown
    assert T.parse(None).orientation == "none" and T.parse("").label == "none"


def test_orientations_are_the_eight_distinct_symmetries_of_a_square():
    x = np.arange(2 * 5 * 5, dtype=np.int64).reshape(1, 2, 5, 5)
    seen = set()
    for name in T.ORIENTATIONS:
        y = T.orient(x, name)
        assert y.shape == x.shape and y.flags.c_contiguous
        np.testing.assert_array_equal(T.orient(y, T.inverse(name)), x)
        seen.add(y.tobytes())
    assert len(seen) == 8
    np.testing.assert_array_equal(T.orient(x, "flip"), x[..., ::-1])
    np.testing.assert_array_equal(T.orient(x, "flipud"), x[..., ::-1, :])
    np.testing.assert_array_equal(T.orient(x, "transpose"), np.swapaxes(x, -1, -2))
    np.testing.assert_array_equal(T.orient(x, "rot90"), np.rot90(x, 1, axes=(2, 3)))
    # antitranspose: mirror across the anti-diagonal, y[i, j] = x[n-1-j, n-1-i]
    a = T.orient(x, "antitranspose")[0, 0]
    n = 5
    assert all(a[i, j] == x[0, 0, n - 1 - j, n - 1 - i] for i in range(n) for j in range(n))


def test_orient_refusals():
    rect = np.zeros((1, 1, 4, 6))
    with pytest.raises(InputError, match="square"):
        T.orient(rect, "rot90")
    assert T.orient(rect, "rot180").shape == rect.shape  # keeps the shape: allowed
    with pytest.raises(InputError, match="2D images only"):
        T.orient(np.zeros((1, 1, 4, 4, 4)), "rot90", spatial_dims=3)
    np.testing.assert_array_equal(
        T.orient(np.arange(8).reshape(1, 1, 2, 2, 2), "flip", spatial_dims=3),
        np.flip(np.arange(8).reshape(1, 1, 2, 2, 2), axis=3),  # Y: the patient's right-left in PLS
    )
