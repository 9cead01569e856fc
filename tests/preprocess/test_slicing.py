"""Tests for memscan.preprocess.slicing: slices with provenance and the slice-id contract."""

from __future__ import annotations

import numpy as np
import pytest

from memscan.errors import InputError
from memscan.preprocess.slicing import (
    AXES,
    check_axis,
    parse_slice_id,
    resolve_slice_range,
    slice_id,
    slice_volume,
)


@pytest.fixture
def volume() -> np.ndarray:
    """[C=2, X=3, Y=4, Z=5] with value 1000*c + 100*x + 10*y + z, so every voxel says where it is."""
    c, x, y, z = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    return 1000 * c + 100 * x + 10 * y + z


def test_axes_contract() -> None:
    assert AXES == {"x": 0, "y": 1, "z": 2}
    assert [check_axis(a) for a in "xyz"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("axis", "n", "shape"), [("x", 3, (2, 4, 5)), ("y", 4, (2, 3, 5)), ("z", 5, (2, 3, 4))]
)
def test_slice_volume_shapes_and_values(
    volume: np.ndarray, axis: str, n: int, shape: tuple[int, ...]
) -> None:
    out = list(slice_volume(volume, axis))
    assert [i for i, _ in out] == list(range(n))
    for i, s in out:
        assert s.shape == shape
        if axis == "x":
            np.testing.assert_array_equal(s, volume[:, i, :, :])
        elif axis == "y":
            np.testing.assert_array_equal(s, volume[:, :, i, :])
        else:
            np.testing.assert_array_equal(s, volume[:, :, :, i])


def test_slice_volume_remaining_axes_keep_their_order(volume: np.ndarray) -> None:
    # z-slice 3 of channel 1: [X, Y] plane, value at [x, y] = 1000 + 100x + 10y + 3 (no transposition)
    ((_, s),) = list(slice_volume(volume, "z", [3]))
    assert s[1, 2, 1] == 1000 + 200 + 10 + 3
    ((_, s),) = list(slice_volume(volume, "x", [2]))
    assert s[0, 3, 4] == 200 + 30 + 4  # [Y, Z]


def test_slice_volume_indices_subset_in_given_order(volume: np.ndarray) -> None:
    assert [i for i, _ in slice_volume(volume, "z", [4, 0, 2])] == [4, 0, 2]


@pytest.mark.parametrize("indices", [[5], [-1], [0, 7]])
def test_slice_volume_out_of_bounds_index(volume: np.ndarray, indices: list[int]) -> None:
    with pytest.raises(InputError, match="out of bounds"):
        slice_volume(volume, "z", indices)  # validated eagerly, before iterating


def test_slice_volume_rejects_non_4d() -> None:
    with pytest.raises(InputError, match=r"\[C, X, Y, Z\]"):
        slice_volume(np.zeros((3, 4, 5)), "z")


def test_slice_volume_unknown_axis_suggests(volume: np.ndarray) -> None:
    with pytest.raises(InputError, match="did you mean 'z'"):
        slice_volume(volume, "Z")


@pytest.mark.parametrize(
    ("relpath", "axis", "index", "expected"),
    [
        ("BraTS_001/t1.nii.gz", "z", 78, "BraTS_001/t1.nii.gz#z078"),
        ("BraTS_001/t1.nii.gz", "z", 0, "BraTS_001/t1.nii.gz#z000"),
        ("BraTS_001/t1.nii.gz", "z", 999, "BraTS_001/t1.nii.gz#z999"),
        ("BraTS_001/t1.nii.gz", "z", 1000, "BraTS_001/t1.nii.gz#z1000"),
        ("a/vol.npy", "x", 5, "a/vol.npy#x005"),
        ("vol.nii", "y", 12345, "vol.nii#y12345"),
    ],
)
def test_slice_id_format_and_round_trip(relpath: str, axis: str, index: int, expected: str) -> None:
    assert slice_id(relpath, axis, index) == expected
    assert parse_slice_id(expected) == (relpath, axis, index)


def test_slice_id_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="non-negative"):
        slice_id("v.nii", "z", -1)
    with pytest.raises(InputError, match="axis"):
        slice_id("v.nii", "w", 1)


@pytest.mark.parametrize(
    "item_id",
    [
        "train/NORMAL/IM-0001.jpeg",
        "BraTS_001/t1.nii.gz",
        "odd#name.png",
        "v.nii#z12",
        "v.nii#q078",
        "v.nii#z078a",
    ],
)
def test_parse_slice_id_without_slice_suffix(item_id: str) -> None:
    assert parse_slice_id(item_id) == (item_id, None, None)


def test_parse_slice_id_with_hash_in_path() -> None:
    assert parse_slice_id("dir#1/v.nii#z010") == ("dir#1/v.nii", "z", 10)


def test_resolve_slice_range() -> None:
    assert resolve_slice_range(155, None) == range(155)
    assert resolve_slice_range(155, (10, 20)) == range(10, 20)
    assert resolve_slice_range(155, (0, 155)) == range(155)
    assert resolve_slice_range(155, [3, 4]) == range(3, 4)


@pytest.mark.parametrize("bad", [(5, 5), (6, 5), (-1, 3), (0, 156), (200, 201)])
def test_resolve_slice_range_rejects_empty_or_out_of_bounds(bad: tuple[int, int]) -> None:
    with pytest.raises(InputError, match="empty or out of bounds"):
        resolve_slice_range(155, bad)


@pytest.mark.parametrize("bad", [(1,), (1, 2, 3), (1.5, 3), "ab", 7])
def test_resolve_slice_range_rejects_malformed(bad: object) -> None:
    with pytest.raises(InputError, match="two integers"):
        resolve_slice_range(155, bad)  # type: ignore[arg-type]
