"""One anatomical frame for every volume: the rule, and the reorientation that applies it.

**The rule.** Every volume whose file says where the patient is (a NIfTI/MGH/MINC/PAR affine; a DICOM
series' ImageOrientationPatient/ImagePositionPatient) is brought to the frame :data:`CANONICAL` =
``("P", "L", "S")`` before anything else happens: in ``[C, X, Y, Z]``,

- array axis ``X`` (index 0 of the spatial axes) runs from patient **anterior to posterior**,
- array axis ``Y`` (index 1) runs from patient **right to left**,
- array axis ``Z`` (index 2) runs from patient **inferior to superior**.

So an axial slice ``volume[:, :, :, k]`` is ``[C, X, Y]`` = rows anterior→posterior, columns patient
right→left: the radiological display convention (patient's right on the viewer's left, anterior at the
top), exactly how a DICOM axial image with ImageOrientationPatient ``[1,0,0, 0,1,0]`` is stored and shown.
Mirroring the last (width) axis of such a slice is an anatomical left-right mirror. The codes are
nibabel's: each letter names the direction in which the index *increases* (``"PLS"``).

**How.** Only axis permutations and reversals are applied (nibabel's :func:`~nibabel.orientations.
io_orientation` picks, for each array axis, the closest of the patient axes), so values are never
resampled and the result is exact. An oblique acquisition is brought to its closest axis-aligned frame.

Why nibabel and not by hand: ``io_orientation``/``ornt_transform``/``apply_orientation`` implement the
NIfTI and DICOM conventions that a hand-written sign table would get wrong for one of the 48 frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CANONICAL", "CANONICAL_NAME", "FRAME_DESCRIPTION", "axcodes", "dicom_affine", "reorient"]

CANONICAL: tuple[str, str, str] = ("P", "L", "S")
"""Axis codes of the stored frame (nibabel convention: the direction in which each index increases)."""

CANONICAL_NAME = "".join(CANONICAL)

FRAME_DESCRIPTION = (
    "volumes [C, X, Y, Z]: X anterior->posterior, Y patient right->left, Z inferior->superior (codes PLS); "
    "an axial slice [C, X, Y] is in the radiological display (anterior at the top, patient right on the "
    "viewer's left), so mirroring its width axis is an anatomical left-right mirror"
)

# DICOM patient coordinates are LPS+ (x to the patient's left, y posterior, z superior); nibabel's affines
# map to RAS+. The two differ by the sign of x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """The nibabel axis codes of a voxel→RAS+ affine (e.g. ``('L', 'P', 'S')`` for BraTS files).

    Args:
        affine: ``[4, 4]`` voxel-to-RAS+ matrix.

    Returns:
        One letter per array axis: the patient direction in which that index increases.
    """
    from nibabel.orientations import aff2axcodes

    return tuple(str(c) for c in aff2axcodes(affine))  # type: ignore[return-value]


def reorient(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[bool, ...]]:
    """Bring a channels-first volume to the frame :data:`CANONICAL` (axis permutations and flips only).

    Args:
        array: ``[C, X, Y, Z]`` volume in the file's own axis order.
        affine: ``[4, 4]`` voxel-to-RAS+ matrix of the spatial axes of ``array``.

    Returns:
        ``(volume [C, X', Y', Z'] in PLS, source_of, flipped)``: output spatial axis ``i`` is input spatial
        axis ``source_of[i]``, reversed when ``flipped[i]``. The volume is a view where possible.

    Raises:
        ValueError: the affine is singular or has non-finite entries (no orientation can be read from it).
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError("affine must be a finite 4x4 matrix")
    start = io_orientation(affine)
    if np.any(np.isnan(start)):
        raise ValueError("affine is degenerate: an axis has no direction in patient space")
    transform = ornt_transform(start, axcodes2ornt(CANONICAL))
    # apply_orientation works on leading axes: put the channel axis last, then back.
    moved = apply_orientation(np.moveaxis(array, 0, -1), transform)
    out = np.moveaxis(moved, -1, 0)
    source_of = [0, 0, 0]
    flipped = [False, False, False]
    for src, (dst, flip) in enumerate(transform):
        source_of[int(dst)] = src
        flipped[int(dst)] = bool(flip < 0)
    return out, tuple(source_of), tuple(flipped)


def dicom_affine(
    orientation: Sequence[float],
    first_position: Sequence[float],
    last_position: Sequence[float] | None,
    pixel_spacing: Sequence[float] | None,
    n_slices: int,
    slice_spacing: float | None = None,
) -> np.ndarray:
    """Voxel→RAS+ affine of a DICOM volume stored as ``[rows, cols, slices]``.

    DICOM PS3.3 C.7.6.2.1.1: ImageOrientationPatient holds the direction cosines of a row (the direction
    of increasing column index) then of a column (increasing row index), in LPS+ patient coordinates;
    PixelSpacing is (distance between rows, distance between columns). The slice axis steps from the first
    slice's ImagePositionPatient to the last's (the slices sorted along the normal), or along
    ``row × column`` by ``slice_spacing`` when only one position is known.

    Args:
        orientation: the six ImageOrientationPatient values.
        first_position: ImagePositionPatient of slice 0 (``[3]``).
        last_position: ImagePositionPatient of the last slice, or None.
        pixel_spacing: (row spacing, column spacing) in mm, or None (1 mm is assumed; only directions
            matter for reorientation).
        n_slices: number of slices.
        slice_spacing: used when ``last_position`` is None or ``n_slices == 1``.

    Returns:
        ``[4, 4]`` affine mapping (row, col, slice, 1) to RAS+ millimetres.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:6]
    dr, dc = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (1.0, 1.0)
    first = np.asarray(first_position, dtype=np.float64)
    if last_position is not None and n_slices > 1:
        step = (np.asarray(last_position, dtype=np.float64) - first) / (n_slices - 1)
    else:
        step = np.cross(row_dir, col_dir) * float(slice_spacing or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = col_dir * dr  # array axis 0 = row index: moves down a column
    lps[:3, 1] = row_dir * dc  # array axis 1 = column index: moves along a row
    lps[:3, 2] = step
    lps[:3, 3] = first
    return _LPS_TO_RAS @ lps
