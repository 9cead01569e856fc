"""Volume → 2D slices with provenance (volume path, axis, index), and the slice-id contract.

A slice cut from a volume has the item id ``<relative path of the volume>#<axis><index>``, with the index
written with at least three digits (``BraTS_001/t1.nii.gz#z078``, ``...#z1000``) (the README's ids).
Volumes are ``[C, X, Y, Z]`` arrays; a slice along an axis is ``[C, A, B]`` where ``A, B`` are the two
remaining spatial axes in their original order (no transposition, flipping or reorientation).

Display order of slices from oriented volumes (:func:`display_volume`): a volume in memscan's frame ``PLS``
(:mod:`memscan.io.orientation`) is presented to the slicer so that every slice comes out in the
radiological display, the width axis being patient right→left wherever the plane contains it:

- ``z`` (axial): ``[C, X, Y]`` = rows anterior→posterior, columns right→left (the stored order);
- ``x`` (coronal): rows superior→inferior, columns right→left;
- ``y`` (sagittal): rows superior→inferior, columns anterior→posterior.

The slice index is the index along the stored axis in every case (``#x010`` is coronal slice 10 counted
from anterior).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np

from memscan.core.validate import did_you_mean
from memscan.errors import InputError

AXES: dict[str, int] = {"x": 0, "y": 1, "z": 2}

_SLICE_SUFFIX = re.compile(r"^([xyz])(\d{3,})$")


def check_axis(axis: str) -> int:
    """Validate a slicing axis name and return its spatial index.

    Args:
        axis: ``'x'``, ``'y'`` or ``'z'``.

    Returns:
        0, 1 or 2: the axis' position among the spatial axes of ``[C, X, Y, Z]`` (add 1 for the array axis).

    Raises:
        InputError: ``axis`` is not one of the three names (the nearest name is suggested).
    """
    if not isinstance(axis, str) or axis not in AXES:
        raise InputError(
            f"unknown slicing axis {axis!r}; expected one of x, y, z{did_you_mean(str(axis), list(AXES))}"
        )
    return AXES[axis]


def display_volume(volume: np.ndarray, axis: str) -> np.ndarray:
    """A view of a PLS volume whose slices along ``axis`` are in the radiological display (module docstring).

    Slicing the returned array along ``axis`` with "the two remaining axes in order" (as
    :func:`slice_volume` and the recipes do) gives the display order; the length and meaning of ``axis``
    itself are unchanged, so slice ``k`` is still the ``k``-th stored slice.

    Args:
        volume: ``[C, X, Y, Z]`` in the frame PLS.
        axis: ``'x'``, ``'y'`` or ``'z'``.

    Returns:
        ``[C, X, Y, Z]`` for ``z``; ``[C, X, Z', Y]`` for ``x`` (``Z'`` = Z reversed, superior first);
        ``[C, Z', Y, X]`` for ``y``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise InputError(
            f"expected a channel-first volume [C, X, Y, Z], got an array of shape {volume.shape}"
        )
    ax = check_axis(axis)
    if ax == 2:
        return volume
    top_first = volume[..., ::-1]  # Z reversed: superior at the top
    if ax == 0:
        return top_first.transpose(0, 1, 3, 2)  # [C, X, Z', Y]: slice along X → rows S→I, columns R→L
    return top_first.transpose(0, 3, 2, 1)  # [C, Z', Y, X]: slice along Y → rows S→I, columns A→P


def slice_volume(
    volume: np.ndarray, axis: str = "z", indices: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Cut a channel-first volume into 2D slices along one axis.

    Args:
        volume: ``[C, X, Y, Z]`` array.
        axis: the axis to cut along (``'x'``, ``'y'`` or ``'z'``).
        indices: slice indices to yield, in the given order; ``None`` yields every slice in increasing order.
            Negative indices are not accepted (no Python-style wrap-around).

    Yields:
        ``(index, slice)`` with ``slice`` of shape ``[C, A, B]`` (the two remaining spatial axes, in order).
        The slices are views into ``volume``; copy them if the volume will be modified.

    Raises:
        InputError: the volume is not 4D, the axis is unknown, or an index is out of bounds. Everything is
            validated before the first slice is yielded.
    """
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise InputError(
            f"expected a channel-first volume [C, X, Y, Z], got an array of shape {volume.shape}"
        )
    ax = check_axis(axis)
    n = volume.shape[ax + 1]
    if indices is None:
        chosen: list[int] = list(range(n))
    else:
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise InputError(f"slice indices {bad} out of bounds for axis {axis!r} of length {n}")
    return _iter_slices(volume, ax, chosen)


def _iter_slices(volume: np.ndarray, ax: int, chosen: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    index: list[slice | int] = [slice(None)] * 4
    for i in chosen:
        index[ax + 1] = i
        yield i, volume[tuple(index)]


def slice_id(volume_relpath: str, axis: str, index: int) -> str:
    """Build the item id of a slice: ``'<relpath>#<axis><index:03d>'``.

    Args:
        volume_relpath: the volume's path relative to the input root (POSIX separators).
        axis: ``'x'``, ``'y'`` or ``'z'``.
        index: the slice index (``>= 0``); written with at least three digits, more when ``index >= 1000``.

    Returns:
        e.g. ``slice_id('BraTS_001/t1.nii.gz', 'z', 78) == 'BraTS_001/t1.nii.gz#z078'``.

    Raises:
        InputError: unknown axis or negative index.
    """
    check_axis(axis)
    if int(index) != index or index < 0:
        raise InputError(f"slice index must be a non-negative integer, got {index!r}")
    return f"{volume_relpath}#{axis}{int(index):03d}"


def parse_slice_id(item_id: str) -> tuple[str, str | None, int | None]:
    """Split an item id into ``(volume relpath, axis, index)``.

    Args:
        item_id: an id written by :func:`slice_id`, or the id of a 2D item (its relative path).

    Returns:
        ``(relpath, axis, index)`` for a slice id; ``(item_id, None, None)`` when the id carries no valid
        ``#<axis><digits>`` suffix (a 2D image, a whole volume, or a file name that merely contains ``#``).
    """
    head, sep, tail = item_id.rpartition("#")
    if sep:
        m = _SLICE_SUFFIX.match(tail)
        if m:
            return head, m.group(1), int(m.group(2))
    return item_id, None, None


def resolve_slice_range(n: int, slice_range: tuple[int, int] | None) -> range:
    """Turn an optional ``(start, stop)`` slice range into a validated ``range`` over an axis of length ``n``.

    Args:
        n: the number of slices along the axis.
        slice_range: ``(start, stop)``, start inclusive and stop exclusive, ``0 <= start < stop <= n``;
            ``None`` means every slice.

    Returns:
        ``range(start, stop)`` (``range(n)`` for ``None``).

    Raises:
        InputError: the range is malformed, empty or out of bounds (nothing is clipped silently).
    """
    if slice_range is None:
        return range(n)
    try:
        start, stop = (int(v) for v in slice_range)
        exact = tuple(slice_range) == (start, stop)
    except (TypeError, ValueError):
        exact = False
    if not exact:
        raise InputError(f"slice range must be two integers (start, stop), got {slice_range!r}")
    if not 0 <= start < stop <= n:
        raise InputError(
            f"slice range ({start}, {stop}) is empty or out of bounds for an axis of {n} slices; "
            f"expected 0 <= start < stop <= {n} (stop is exclusive)"
        )
    return range(start, stop)
