"""Preprocessing recipes: pure array → array functions, no file I/O.

Three recipes, registered in :data:`RECIPES` and built by :func:`get_recipe`:

- ``study`` (:class:`BratsRecipe`): the BraTS recipe of Akbar, Wang & Eklund 2025, "Beware of diffusion
  models for synthesizing medical images" (Mach. Learn.: Sci. Technol. 6 015022; arXiv 2305.07644):
  each modality volume divided by its own maximum and scaled to 0–255; axial slices kept when more than
  15% of the 256×256 area has T1 > 50; 240×240 slices zero-padded (centred) to 256×256; five channels
  T1, T2, T1ce, FLAIR, segmentation (labels 0/1/2/4 × 255/5); stored as 8-bit; whole-subject split.
- ``cxr`` (:class:`CxrRecipe`): the study's chest x-ray recipe (Kermany et al. 2018 paediatric
  pneumonia JPEGs): grayscale, resized to 256×256.
- ``generic`` (:class:`GenericRecipe`): any 2D image or 3D volume, optionally resized; integer sources stay
  integer (8-bit as uint8, 16-bit as int16/uint16), everything else float32.

Shapes: 2D items are ``[C, H, W]``; volumes are ``[C, X, Y, Z]``; BraTS modality inputs are ``[X, Y, Z]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from memscan.core.validate import did_you_mean
from memscan.errors import InputError
from memscan.preprocess.slicing import AXES, check_axis, resolve_slice_range

STUDY_CHANNELS: tuple[str, ...] = ("t1", "t2", "t1ce", "flair", "seg")
"""The study's channel order (T1, T2, T1ce, FLAIR, segmentation) and the valid BraTS modality names."""

SEG_LABELS: tuple[int, ...] = (0, 1, 2, 4)
"""BraTS 2020/2021 labels: background, necrotic core, oedema, enhancing tumour."""

SEG_SCALE: float = 255.0 / 5.0
"""The study scaled segmentation labels by 255/5: 0/1/2/4 → 0/51/102/204."""

_DTYPES_8BIT = ("uint8", "float32")


# --------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------


def _check_size(size: Any, *, optional: bool = False) -> None:
    if optional and size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise InputError(f"size must be a positive integer{' or None' if optional else ''}, got {size!r}")


def _check_dtype(dtype: Any, allowed: Sequence[str]) -> None:
    if dtype not in allowed:
        raise InputError(
            f"dtype must be one of {list(allowed)}, got {dtype!r}{did_you_mean(str(dtype), allowed)}"
        )


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise InputError(f"recipe name must be a non-empty string, got {name!r}")


def _normalize_slice_range(obj: Any) -> None:
    """Validate ``obj.slice_range`` (``(start, stop)``, ``0 <= start < stop``) and store it as a tuple."""
    sr = obj.slice_range
    if sr is None:
        return
    try:
        start, stop = (int(v) for v in sr)
        exact = tuple(sr) == (start, stop) and not any(isinstance(v, bool) for v in sr)
    except (TypeError, ValueError):
        exact = False
    if not exact:
        raise InputError(f"slice_range must be two integers (start, stop) or None, got {sr!r}")
    if not 0 <= start < stop:
        raise InputError(f"slice_range ({start}, {stop}) must satisfy 0 <= start < stop (stop is exclusive)")
    object.__setattr__(obj, "slice_range", (start, stop))


def _check_bool(value: Any, field: str) -> None:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{field} must be true or false, got {value!r}")


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": obj.kind}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _finite_or_raise(array: np.ndarray, what: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{what} contains NaN or infinite values")


# --------------------------------------------------------------------------------------------------------
# BraTS: the study's recipe
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BratsRecipe:
    """The study's BraTS recipe (frozen; validated on construction).

    Attributes:
        modalities: channels of each item, in order; any of ``t1, t2, t1ce, flair, seg`` without repeats.
            The default is the study's order T1, T2, T1ce, FLAIR, seg.
        axis: slicing axis of the ``[X, Y, Z]`` volumes; ``'z'`` (axial) in the study.
        size: in-plane output size. Smaller slices are zero-padded, centred (240 → 256 adds 8 on each side;
            an odd difference puts the extra pixel after); larger slices are centre-cropped the same way.
        t1_threshold: T1 intensity threshold on the 0–255 scale (50 in the study).
        min_fraction: a slice is kept when the fraction of the ``size × size`` area with T1 > ``t1_threshold``
            is strictly greater than this (0.15 in the study).
        slice_range: optional ``(start, stop)`` along ``axis`` (stop exclusive) to restrict the slices
            considered (or the extent kept along ``axis`` when ``volumes`` is true).
        volumes: keep whole (padded) volumes ``[C, size, size, Z]`` instead of slices; no slice filter.
        dtype: ``'uint8'``: the study stored 8-bit images, so scaled values are truncated toward zero
            (``np.floor`` then ``astype``; 50.9 → 50, 255 stays 255). ``'float32'`` keeps unrounded values.
        name: label stored with the dataset.
    """

    kind: ClassVar[str] = "study"

    modalities: tuple[str, ...] = STUDY_CHANNELS
    axis: str = "z"
    size: int = 256
    t1_threshold: float = 50.0
    min_fraction: float = 0.15
    slice_range: tuple[int, int] | None = None
    volumes: bool = False
    dtype: str = "uint8"
    name: str = "study"

    def __post_init__(self) -> None:
        mods = self.modalities
        if isinstance(mods, str) or not isinstance(mods, Sequence) or len(mods) == 0:
            raise InputError(
                f"modalities must be a non-empty list of names from {list(STUDY_CHANNELS)}, got {mods!r}"
            )
        for m in mods:
            if m not in STUDY_CHANNELS:
                raise InputError(
                    f"unknown BraTS modality {m!r}; expected one of {list(STUDY_CHANNELS)}"
                    f"{did_you_mean(str(m), STUDY_CHANNELS)}"
                )
        if len(set(mods)) != len(mods):
            raise InputError(f"modalities must not repeat, got {list(mods)}")
        object.__setattr__(self, "modalities", tuple(mods))
        check_axis(self.axis)
        _check_size(self.size)
        for field in ("t1_threshold", "min_fraction"):
            value = getattr(self, field)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.number)
                or not math.isfinite(value)
            ):
                raise InputError(f"{field} must be a finite number, got {value!r}")
        if not 0.0 <= self.t1_threshold <= 255.0:
            raise InputError(
                f"t1_threshold is on the 0-255 scale; expected 0 <= t1_threshold <= 255, "
                f"got {self.t1_threshold}"
            )
        if not 0.0 <= self.min_fraction < 1.0:
            raise InputError(f"min_fraction must satisfy 0 <= min_fraction < 1, got {self.min_fraction}")
        _normalize_slice_range(self)
        _check_bool(self.volumes, "volumes")
        _check_dtype(self.dtype, _DTYPES_8BIT)
        _check_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (tuples as lists) plus ``'kind'`` (round-trips via get_recipe)."""
        return _to_dict(self)


def scale_to_255(volume: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The study's per-volume intensity scaling: ``volume / volume.max() * 255``.

    Each modality volume is divided by its *own* maximum. The arithmetic is done in ``dtype``
    (``float32`` by default; the BraTS recipe computes in ``float64``, like nibabel's ``get_fdata``).

    Args:
        volume: array of any shape and real dtype (e.g. ``[X, Y, Z]``).
        dtype: floating dtype of the computation and of the result.

    Returns:
        Array of the same shape in ``dtype``, maximum 255. An all-zero (or all-non-positive) volume has no
        usable maximum: the result is all zeros, and the caller decides whether that is an error.

    Raises:
        InputError: the volume is empty or contains NaN/inf.
    """
    v = np.asarray(volume).astype(dtype, copy=True)
    if v.size == 0:
        raise InputError("cannot scale an empty volume")
    _finite_or_raise(v, "volume")
    vmax = v.max()
    if vmax <= 0:
        return np.zeros_like(v)
    v /= vmax
    v *= 255
    return v


def _check_seg_labels(s: np.ndarray, where: str = "") -> None:
    labels = np.unique(s)
    unexpected = [v for v in labels.tolist() if not (math.isfinite(v) and v in SEG_LABELS)]
    if unexpected:
        shown = [int(v) if math.isfinite(v) and float(v).is_integer() else v for v in unexpected[:10]]
        more = f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""
        raise InputError(
            f"{where}segmentation has unexpected labels {shown}{more}; expected {list(SEG_LABELS)}"
        )


def seg_to_channel(seg: np.ndarray) -> np.ndarray:
    """Turn a BraTS segmentation into the study's fifth channel: ``label * 255 / 5``.

    Args:
        seg: label array of any shape (integer, or float with integral values as from nibabel), labels in
            {0, 1, 2, 4}.

    Returns:
        float32 array of the same shape with values in {0, 51, 102, 204}.

    Raises:
        InputError: labels outside {0, 1, 2, 4} (e.g. BraTS 2023's label 3), listed in the message.
    """
    s = np.asarray(seg)
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating) or s.dtype == bool):
        raise InputError(f"segmentation must be numeric, got dtype {s.dtype}")
    _check_seg_labels(s)
    return (s.astype(np.float32) * np.float32(SEG_SCALE)).astype(np.float32)


def _placement(n: int, size: int) -> tuple[slice, slice]:
    """Source and destination ranges of one axis of length ``n`` centred in ``size`` (pad or crop)."""
    if n <= size:
        before = (size - n) // 2
        return slice(0, n), slice(before, before + n)
    start = (n - size) // 2
    return slice(start, start + size), slice(0, size)


def _pad_or_crop_axes(image: np.ndarray, size: int, axes: Sequence[int]) -> np.ndarray:
    """Centre ``image`` in a zero array whose ``axes`` have length ``size`` (crop where they are longer)."""
    src: list[slice] = [slice(None)] * image.ndim
    dst: list[slice] = [slice(None)] * image.ndim
    shape = list(image.shape)
    for ax in axes:
        src[ax], dst[ax] = _placement(image.shape[ax], size)
        shape[ax] = size
    out = np.zeros(shape, dtype=image.dtype)
    out[tuple(dst)] = image[tuple(src)]
    return out


def pad_or_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad or centre-crop the last two axes to ``size × size``.

    Padding is centred, the extra pixel of an odd difference going after (240 → 256: 8 before, 8 after;
    239 → 256: 8 before, 9 after). Cropping keeps ``[(n - size) // 2 : (n - size) // 2 + size]``.
    Each of the two axes is handled independently (one can be padded while the other is cropped).

    Args:
        image: ``[..., H, W]`` array (at least 2D).
        size: output size of the last two axes.

    Returns:
        A new ``[..., size, size]`` array of the same dtype.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise InputError(f"pad_or_crop needs an array with at least 2 axes, got shape {image.shape}")
    _check_size(size)
    return _pad_or_crop_axes(image, int(size), (image.ndim - 2, image.ndim - 1))


def _to_output_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """float values on the 0–255 scale → ``'uint8'`` (truncated toward zero) or ``'float32'``."""
    if dtype == "uint8":
        return np.floor(values).astype(np.uint8)
    return values.astype(np.float32)


def brats_subject_items(
    volumes: Mapping[str, np.ndarray], recipe: BratsRecipe, *, subject: str = ""
) -> list[tuple[int | None, np.ndarray]]:
    """Apply the study's BraTS recipe to one subject.

    Steps (the study's, in order): each intensity modality is divided by its own maximum and scaled to
    0–255 (computed in float64); the segmentation becomes ``label * 255/5``; for each slice along
    ``recipe.axis`` (within ``recipe.slice_range``), the scaled T1 slice is zero-padded/cropped to
    ``size × size`` and the slice is kept when ``count(T1 > t1_threshold) / size² > min_fraction`` (the
    comparison uses the unrounded scaled T1, so a pixel at 50.5 counts even though it is stored as 50);
    kept slices of every channel are padded/cropped the same way and converted to ``recipe.dtype``.

    T1 drives the slice filter, so it is required when slicing even if ``recipe.modalities`` leaves it out.
    This function does not reorient: a z-slice of an ``[X, Y, Z]`` volume is the ``[X, Y]`` plane as given.
    ``prepare`` gives it volumes in memscan's frame PLS (:mod:`memscan.io.orientation`), so a BraTS file
    (stored LPS) gives axial slices that are its raw ``[:, :, k]`` planes transposed: rows
    anterior→posterior, columns right→left (the radiological display). The slice filter, padding and
    scaling are unchanged by that transposition (BraTS slices are square; counts do not depend on order).

    Args:
        volumes: modality name → ``[X, Y, Z]`` array (extra modalities are ignored). All used modalities
            must have the same shape.
        recipe: the recipe.
        subject: subject name, used in error messages only.

    Returns:
        Slices: ``[(index, item [C, size, size])]`` for each kept slice in increasing index, channels in
        ``recipe.modalities`` order (may be empty when no slice passes the filter).
        Volumes (``recipe.volumes``): ``[(None, item)]`` with the two in-plane axes padded/cropped to
        ``size`` and the slicing axis kept (restricted to ``slice_range`` if given); for ``axis='z'``
        the item is ``[C, size, size, Z]``.

    Raises:
        InputError: a modality is missing, not 3D, shapes disagree, values are NaN/inf, intensities are
            negative with ``dtype='uint8'``, or the segmentation has unexpected labels.
    """
    where = f"subject {subject!r}: " if subject else ""
    needed = list(recipe.modalities)
    if not recipe.volumes and "t1" not in needed:
        needed.append("t1")  # the slice filter uses T1
    missing = [m for m in needed if m not in volumes]
    if missing:
        why = (
            " (T1 is required by the slice filter)"
            if missing == ["t1"] and "t1" not in recipe.modalities
            else ""
        )
        raise InputError(f"{where}missing modalities {missing}{why}; got {sorted(volumes)}")
    arrays = {m: np.asarray(volumes[m]) for m in needed}
    for m, a in arrays.items():
        if a.ndim != 3:
            raise InputError(f"{where}modality {m!r} must be a 3D volume [X, Y, Z], got shape {a.shape}")
    shapes = {m: a.shape for m, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(f"{where}modality shapes disagree: {shapes}")
    # validate every modality up front (also those of subjects where no slice passes the filter)
    for m, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InputError(f"{where}modality {m!r} must be numeric, got dtype {a.dtype}")
        if m == "seg":
            _check_seg_labels(a, where)
            continue
        _finite_or_raise(a, f"{where}modality {m!r}")
        if recipe.dtype == "uint8" and a.size and a.min() < 0:
            raise InputError(
                f"{where}modality {m!r} has negative intensities (min {a.min()}); the study's 8-bit recipe "
                "expects non-negative MR magnitudes (use dtype='float32' to keep them)"
            )
    shape = next(iter(shapes.values()))
    ax = AXES[recipe.axis]
    positions = resolve_slice_range(shape[ax], recipe.slice_range)
    in_plane = [a for a in range(3) if a != ax]

    def scaled(m: str) -> np.ndarray:  # float64, 0-255 scale
        if m == "seg":
            return arrays[m].astype(np.float64) * SEG_SCALE
        return scale_to_255(arrays[m], dtype=np.float64)

    window = [slice(None)] * 3
    window[ax] = slice(positions.start, positions.stop)
    window_t = tuple(window)

    if recipe.volumes:
        channels = []
        for m in recipe.modalities:
            v = _pad_or_crop_axes(scaled(m)[window_t], recipe.size, in_plane)
            channels.append(_to_output_dtype(v, recipe.dtype))
        return [(None, np.stack(channels, axis=0))]

    # Slice filter on the scaled (unrounded) T1. The zero padding never exceeds the threshold (>= 0), so
    # counting inside the (cropped) slice and dividing by size² equals counting in the padded slice.
    src_a, dst_a = _placement(shape[in_plane[0]], recipe.size)
    src_b, dst_b = _placement(shape[in_plane[1]], recipe.size)
    t1 = np.moveaxis(scaled("t1")[window_t], ax, 0)[:, src_a, src_b]  # [n, A', B']
    counts = np.count_nonzero(t1 > recipe.t1_threshold, axis=(1, 2))
    del t1
    area = recipe.size * recipe.size
    kept = [
        index
        for index, count in zip(positions, counts.tolist(), strict=True)
        if count / area > recipe.min_fraction
    ]
    if not kept:
        return []

    out_dtype = np.uint8 if recipe.dtype == "uint8" else np.float32
    out = np.zeros((len(kept), len(recipe.modalities), recipe.size, recipe.size), dtype=out_dtype)
    for c, m in enumerate(recipe.modalities):
        stack = np.moveaxis(np.take(scaled(m), kept, axis=ax), ax, 0)[:, src_a, src_b]  # [len(kept), A', B']
        out[:, c, dst_a, dst_b] = _to_output_dtype(stack, recipe.dtype)
    return [(index, out[j]) for j, index in enumerate(kept)]


def split_subjects(subjects: Sequence[str], test_subjects: int, seed: int) -> dict[str, str]:
    """Split subjects into ``'train'``/``'test'`` by a seeded permutation, whole subjects only.

    The subject list is sorted first (so the result does not depend on discovery order), then permuted
    with ``np.random.default_rng(seed).permutation``; the first ``test_subjects`` of the permutation are
    ``'test'``, the rest ``'train'``. The study's counts are reproduced (BraTS 2020: 369 → 313 train /
    56 test; BraTS 2021: 1251 → 1195 / 56) but not its exact subject lists: the authors' seed and code
    are unknown, so their permutation cannot be reproduced bit-for-bit.

    Args:
        subjects: unique subject names.
        test_subjects: number of test subjects, ``0 <= test_subjects < len(subjects)``.
        seed: permutation seed.

    Returns:
        subject → ``'train'`` or ``'test'``, in sorted subject order.

    Raises:
        InputError: duplicate subjects or ``test_subjects`` out of range.
    """
    ordered = sorted(str(s) for s in subjects)
    if len(set(ordered)) != len(ordered):
        dupes = sorted({s for s in ordered if ordered.count(s) > 1})
        raise InputError(f"subject names must be unique; repeated: {dupes[:10]}")
    if isinstance(test_subjects, bool) or not isinstance(test_subjects, int | np.integer):
        raise InputError(f"test_subjects must be an integer, got {test_subjects!r}")
    if not 0 <= test_subjects < len(ordered):
        raise InputError(
            f"test_subjects must satisfy 0 <= test_subjects < number of subjects ({len(ordered)}), "
            f"got {test_subjects}"
        )
    perm = np.random.default_rng(seed).permutation(len(ordered))
    test = {ordered[i] for i in perm[: int(test_subjects)]}
    return {s: ("test" if s in test else "train") for s in ordered}


# --------------------------------------------------------------------------------------------------------
# chest x-ray
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CxrRecipe:
    """The study's chest x-ray recipe: grayscale, resized to ``size × size`` (frozen; validated).

    Attributes:
        size: output size (256 in the study; the aspect ratio is not kept, as in the study).
        name: label stored with the dataset.
        dtype: ``'uint8'`` (the study's 8-bit images) or ``'float32'`` (resized without rounding).
    """

    kind: ClassVar[str] = "cxr"

    size: int = 256
    name: str = "cxr"
    dtype: str = "uint8"

    def __post_init__(self) -> None:
        _check_size(self.size)
        _check_name(self.name)
        _check_dtype(self.dtype, _DTYPES_8BIT)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values plus ``'kind'``."""
        return _to_dict(self)


def _rescale_min_max(values: np.ndarray) -> np.ndarray:
    """float64 values → [0, 255] by the image's own min and max (a constant image becomes zeros)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float64)
    return (values - lo) / (hi - lo) * 255.0


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2D array to ``size × size``, float32, Pillow bilinear (antialiased when shrinking)."""
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    if plane.shape == (size, size):
        return plane
    img = Image.fromarray(plane)  # mode 'F'
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def cxr_item(image: np.ndarray, recipe: CxrRecipe) -> np.ndarray:
    """Apply the chest x-ray recipe to one image.

    1. Grayscale: one channel is kept as is; RGB (or RGBA, alpha ignored) becomes luminance with the
       ITU-R 601-2 weights ``L = 0.299 R + 0.587 G + 0.114 B``, exactly Pillow's ``convert('L')`` for 8-bit
       input (Pillow is used).
    2. Only when the input is not ``uint8`` (e.g. 16-bit PNG, float): rescaled to 0–255 by the image's own
       min/max and truncated toward zero (8-bit input is never rescaled).
    3. Resized to ``size × size`` with Pillow's bilinear filter (antialiased when shrinking), ignoring the
       aspect ratio as the study did; skipped when the image already has that size.

    Args:
        image: ``[C, H, W]`` with C in {1, 3, 4}, any real dtype.
        recipe: the recipe.

    Returns:
        ``[1, size, size]`` ``uint8`` (or ``float32`` on the 0–255 scale with ``recipe.dtype='float32'``).

    Raises:
        InputError: wrong shape or channel count, non-numeric dtype, NaN/inf values.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[0] not in (1, 3, 4) or min(a.shape[1:]) < 1:
        raise InputError(f"chest x-ray image must be [C, H, W] with C in 1, 3, 4, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise InputError(f"chest x-ray image must be numeric, got dtype {a.dtype}")
    _finite_or_raise(a, "chest x-ray image")
    size = recipe.size
    if a.dtype == np.uint8:
        if a.shape[0] == 1:
            gray_img = Image.fromarray(np.ascontiguousarray(a[0]))
        else:
            gray_img = Image.fromarray(np.ascontiguousarray(np.moveaxis(a[:3], 0, -1))).convert("L")
        if recipe.dtype == "uint8":
            if gray_img.size != (size, size):
                gray_img = gray_img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray_img, dtype=np.uint8)[None].copy()
        gray = np.asarray(gray_img, dtype=np.float32)
        return _resize_plane(gray, size)[None]
    f = a.astype(np.float64)
    gray64 = f[0] if a.shape[0] == 1 else 0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2]
    gray64 = _rescale_min_max(gray64)
    if recipe.dtype == "uint8":
        gray_img = Image.fromarray(np.floor(gray64).astype(np.uint8))
        if gray_img.size != (size, size):
            gray_img = gray_img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(gray_img, dtype=np.uint8)[None].copy()
    return _resize_plane(gray64, size)[None]


# --------------------------------------------------------------------------------------------------------
# generic
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenericRecipe:
    """Any 2D image or 3D volume, optionally resized (frozen; validated).

    Attributes:
        size: resize 2D images / the two in-plane axes of slices to ``size × size`` (Pillow bilinear per
            channel, mode ``'F'``); ``None`` keeps the original size.
        axis: slicing axis for 3D volumes.
        volumes: keep 3D volumes whole instead of slicing them.
        slice_range: optional ``(start, stop)`` along ``axis`` (stop exclusive) for 3D volumes.
        name: label stored with the dataset.
        dtype: ``'auto'`` (default): integer sources stay integer, see :func:`generic_output_dtype`
            (8-bit PNG/JPEG/TIFF/DICOM → ``uint8``; 16-bit NIfTI/DICOM/PNG → ``int16``/``uint16``; resized
            values are rounded to the nearest integer, as the cxr recipe's 8-bit resize does), so the scan
            takes its exact integer paths; anything else ``float32``. ``'float32'``: always float32 (values
            unchanged unless resized). ``'uint8'``: images already on 0–255 (values must lie in [0, 255];
            resized values are truncated toward zero).

    ``axis``, ``volumes`` and ``slice_range`` only apply to 3D inputs; 2D inputs ignore them, so one
    recipe can serve a folder holding both.
    """

    kind: ClassVar[str] = "generic"

    size: int | None = None
    axis: str = "z"
    volumes: bool = False
    slice_range: tuple[int, int] | None = None
    name: str = "generic"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _check_size(self.size, optional=True)
        check_axis(self.axis)
        _check_bool(self.volumes, "volumes")
        _normalize_slice_range(self)
        _check_name(self.name)
        _check_dtype(self.dtype, ("auto", "float32", "uint8"))

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (tuples as lists) plus ``'kind'``."""
        return _to_dict(self)


def generic_output_dtype(source: np.dtype, recipe_dtype: str = "auto") -> np.dtype:
    """The dtype the generic recipe stores for a source of dtype ``source``.

    With ``'auto'``: ``bool``/``uint8`` → ``uint8``; ``int8``/``int16`` → ``int16``; ``uint16`` →
    ``uint16``; every other dtype (wider integers, floats) → ``float32``. The integer choices hold every
    source value exactly, and the scan's exact integer paths need them (Pearson correlation is invariant
    to a per-item affine intensity map, so a modality's slope/intercept need not be applied to be exact).

    Args:
        source: the source array's dtype.
        recipe_dtype: :attr:`GenericRecipe.dtype`.

    Returns:
        The stored dtype.
    """
    if recipe_dtype != "auto":
        return np.dtype(recipe_dtype)
    src = np.dtype(source)
    if src in (np.dtype(bool), np.dtype(np.uint8)):
        return np.dtype(np.uint8)
    if src in (np.dtype(np.int8), np.dtype(np.int16)):
        return np.dtype(np.int16)
    if src == np.dtype(np.uint16):
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def _resize_channels(image: np.ndarray, size: int | None) -> np.ndarray:
    """``[C, H, W]`` → ``[C, size, size]`` float32, Pillow bilinear per channel (as is, in its own dtype,
    when size is None).

    Values of 16-bit sources are exact in float32 (integers below 2^24), so resizing an integer image and
    rounding gives the nearest integer to Pillow's bilinear value.
    """
    if size is None:
        return image
    return np.stack([_resize_plane(ch, size) for ch in image], axis=0)


def generic_items(
    image: np.ndarray, spatial_dims: int, recipe: GenericRecipe
) -> list[tuple[int | None, np.ndarray]]:
    """Apply the generic recipe to one 2D image or 3D volume.

    Args:
        image: ``[C, H, W]`` (``spatial_dims=2``) or ``[C, X, Y, Z]`` (``spatial_dims=3``), any real dtype.
        spatial_dims: 2 or 3.
        recipe: the recipe.

    Returns:
        2D: ``[(None, [C, H, W])]`` (``[C, size, size]`` when ``recipe.size`` is set).
        3D slices: ``[(index, [C, A, B])]`` for every slice along ``recipe.axis`` within ``slice_range``, in
        increasing index (``A = B = size`` when set).
        3D volume (``recipe.volumes``): ``[(None, [C, X, Y, Z])]`` restricted to ``slice_range`` along
        ``axis``, each slice resized in-plane when ``size`` is set.
        Values are in :func:`generic_output_dtype` of the source (``'auto'``: integer sources equal to the
        source when not resized, else rounded to the nearest integer), float32, or uint8 with
        ``dtype='uint8'``.

    Raises:
        InputError: ``spatial_dims`` not 2 or 3, shape not matching it, non-numeric dtype, NaN/inf values,
            values outside [0, 255] with ``dtype='uint8'``, or a bad slice range.
    """
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    a = np.asarray(image)
    if a.ndim != spatial_dims + 1:
        expected = "[C, H, W]" if spatial_dims == 2 else "[C, X, Y, Z]"
        raise InputError(f"expected a {spatial_dims}D image {expected}, got an array of shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise InputError(f"image must be numeric, got dtype {a.dtype}")
    _finite_or_raise(a, "image")
    if recipe.dtype == "uint8" and a.size and (a.min() < 0 or a.max() > 255):
        raise InputError(
            f"dtype='uint8' needs values in [0, 255], got range [{a.min()}, {a.max()}] (use dtype='float32')"
        )

    out_dtype = generic_output_dtype(a.dtype, recipe.dtype)

    def finish(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "biu" and out_dtype.kind in "iu":  # not resized: the source values, exactly
            return x.astype(out_dtype)
        if recipe.dtype == "uint8":
            return np.floor(x).astype(np.uint8)
        if out_dtype.kind in "iu":  # 'auto', resized integer source: round half to even (bilinear: in range)
            info = np.iinfo(out_dtype)
            return np.clip(np.rint(x), info.min, info.max).astype(out_dtype)
        return x.astype(np.float32)

    if spatial_dims == 2:
        return [(None, finish(_resize_channels(a, recipe.size)))]

    ax = check_axis(recipe.axis) + 1  # array axis of [C, X, Y, Z]
    positions = resolve_slice_range(a.shape[ax], recipe.slice_range)
    moved = np.moveaxis(a, ax, 1)  # [C, n, A, B]
    if recipe.volumes:
        planes = [_resize_channels(moved[:, i], recipe.size) for i in positions]  # each [C, A', B']
        vol = np.moveaxis(np.stack(planes, axis=1), 1, ax)
        return [(None, finish(vol))]
    return [(i, finish(_resize_channels(moved[:, i], recipe.size))) for i in positions]


# --------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------

RECIPES: dict[str, type] = {"study": BratsRecipe, "cxr": CxrRecipe, "generic": GenericRecipe}


def get_recipe(name: str, /, **params: Any) -> BratsRecipe | CxrRecipe | GenericRecipe:
    """Build a recipe by registry name.

    Args:
        name: ``'study'``, ``'cxr'`` or ``'generic'``.
        **params: field values (see each recipe class). A ``kind`` key, as written by ``to_dict``, is
            accepted when it equals ``name``, so ``get_recipe(d['kind'], **d)`` round-trips.

    Returns:
        The validated, frozen recipe.

    Raises:
        InputError: unknown recipe name or parameter (the nearest valid name is suggested), or invalid values.
    """
    if name not in RECIPES:
        raise InputError(
            f"unknown recipe {name!r}; expected one of {list(RECIPES)}"
            f"{did_you_mean(str(name), list(RECIPES))}"
        )
    cls = RECIPES[name]
    params = dict(params)
    kind = params.pop("kind", name)
    if kind != name:
        raise InputError(f"recipe parameters are for {kind!r}, not {name!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in fields:
            raise InputError(
                f"unknown parameter {key!r} for recipe {name!r}; expected one of {fields}"
                f"{did_you_mean(key, fields)}"
            )
    return cls(**params)
