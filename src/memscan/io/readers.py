"""One reader per image format, dispatched on the file suffix.

Every reader returns an :class:`ImageData` holding channels-first pixels: a 2D image is ``[C, H, W]``, a
volume is ``[C, X, Y, Z]`` (the axes of the file's own array). Every bad file (missing, corrupt,
truncated, not what its suffix says, NaN/Inf values, empty) raises one :class:`~memscan.errors.InputError`
that names the file and the problem.

Decisions worth knowing:

- **Dtypes** are kept where no value transform applies (uint8 PNG stays uint8, int16 NIfTI stays int16).
  Any value transform (NIfTI ``scl_slope``/``scl_inter``, DICOM Rescale Slope/Intercept or Modality LUT)
  gives ``float32``; a NIfTI holding float64 is also returned as ``float32``.
- **DICOM privacy**: only the pixel, geometry and value-transform elements are parsed
  (``dcmread(specific_tags=...)``); patient-identifying elements are never read into memory, and
  :class:`ImageData` carries pixels, path and spacing only.
- **MONOCHROME1** (bright = low values) is inverted as ``max + min - x`` after the modality LUT, so
  bright always means dense, as in MONOCHROME2. For a DICOM series the inversion uses the whole volume's
  range so slices stay consistent.
- **Spacing** is in the order of the returned spatial axes: for DICOM ``(row spacing, column spacing[,
  slice spacing])`` in mm, for NIfTI the header zooms; ``None`` where the file does not say (PNG, NPY).
"""

from __future__ import annotations

import logging
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memscan.errors import InputError

__all__ = [
    "DICOM_SUFFIXES",
    "SUFFIXES_2D",
    "SUFFIXES_ALL",
    "VOLUME_SUFFIXES",
    "ImageData",
    "dicom_series_files",
    "is_dicom_series_dir",
    "read_dicom_series",
    "read_image",
    "suffix_of",
    "supported",
]

logger = logging.getLogger(__name__)

SUFFIXES_2D: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm",)
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".npy", ".npz")
SUFFIXES_ALL: tuple[str, ...] = SUFFIXES_2D + DICOM_SUFFIXES + VOLUME_SUFFIXES

# Elements parsed from a DICOM file: pixel module, value transforms, geometry, series identity. Nothing
# else is read, so patient-identifying elements (PatientName, PatientID, ...) never enter memory.
_DICOM_TAGS: list[str] = [
    "SOPClassUID",
    "Modality",
    "SeriesInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "AlphaPaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "AlphaPaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "SegmentedAlphaPaletteColorLookupTableData",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]


@dataclass(frozen=True)
class ImageData:
    """Pixels read from one file (or one DICOM series folder).

    Attributes:
        array: channels-first pixels: 2D image ``[C, H, W]``; volume ``[C, X, Y, Z]``.
        spatial_dims: 2 or 3.
        path: the file (or the series folder) read.
        spacing: physical size of a pixel/voxel along each spatial axis (mm), or ``None`` if unknown.
    """

    array: np.ndarray
    spatial_dims: int
    path: Path
    spacing: tuple[float, ...] | None = None


# ---------------------------------------------------------------------------------------------- helpers


def suffix_of(path: str | Path) -> str:
    """The format suffix of a path, lower case; ``.nii.gz`` counts as one suffix.

    Args:
        path: a file path.

    Returns:
        e.g. ``'.png'``, ``'.nii.gz'``, or ``''`` for a name without a suffix.
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _has_dicm_preamble(path: Path) -> bool:
    """Whether a file has the 128-byte preamble followed by ``DICM`` (Part 10 file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom_candidate(path: Path) -> bool:
    """A DICOM file by name (``*.dcm``) or an extensionless file with the ``DICM`` preamble."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = suffix_of(path)
    if suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and _has_dicm_preamble(path)


def supported(path: Path) -> bool:
    """Whether :func:`read_image` can read this path.

    Args:
        path: a file (judged by its suffix; an extensionless file counts if it has the DICOM preamble) or a
            folder (supported if it is a DICOM series, see :func:`is_dicom_series_dir`).

    Returns:
        True if the path has a supported format.
    """
    path = Path(path)
    if path.is_dir():
        return is_dicom_series_dir(path)
    suffix = suffix_of(path)
    if suffix in SUFFIXES_ALL:
        return True
    return suffix == "" and path.is_file() and _has_dicm_preamble(path)


def _plain(exc: BaseException) -> str:
    """An exception as one line of text (the CLI prints one line per error)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _corrupt(kind: str, path: Path, exc: BaseException) -> InputError:
    return InputError(f"cannot read {kind} file (truncated, corrupt or not {kind} data): {_plain(exc)}", path)


def _validate(data: ImageData, spatial_dims: int | None) -> ImageData:
    """Checks shared by all readers: not empty, finite, numeric, the expected dimensionality."""
    arr = data.array
    if arr.size == 0:
        raise InputError(f"empty image (array shape {tuple(arr.shape)})", data.path)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"pixel values of type {arr.dtype} are not numbers this reader accepts", data.path)
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise InputError(f"contains {n_bad} NaN/Inf values", data.path)
    if spatial_dims is not None and data.spatial_dims != spatial_dims:
        what = {2: "a 2D image", 3: "a 3D volume"}
        raise InputError(
            f"expected {what.get(spatial_dims, f'{spatial_dims}D data')}, found "
            f"{what.get(data.spatial_dims, f'{data.spatial_dims}D data')} (array shape {tuple(arr.shape)})",
            data.path,
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    if arr is data.array:
        return data
    return ImageData(array=arr, spatial_dims=data.spatial_dims, path=data.path, spacing=data.spacing)


# ----------------------------------------------------------------------------------------------- entry


def read_image(path: Path, *, spatial_dims: int | None = None) -> ImageData:
    """Read one image file, or one DICOM series folder, into channels-first pixels.

    Args:
        path: a file with a supported suffix (see :data:`SUFFIXES_ALL`), an extensionless DICOM file, or a
            folder holding one DICOM series.
        spatial_dims: 2 or 3 to require an image or a volume; ``None`` accepts either.

    Returns:
        The pixels (``[C, H, W]`` or ``[C, X, Y, Z]``), dimensionality, path and spacing.

    Raises:
        InputError: missing, unsupported, corrupt or truncated file; NaN/Inf values; empty array; the
            dimensionality differs from ``spatial_dims``.
    """
    path = Path(path)
    if spatial_dims not in (None, 2, 3):
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not path.exists():
        raise InputError("does not exist", path)
    if path.is_dir():
        if is_dicom_series_dir(path):
            return _validate(read_dicom_series(path), spatial_dims)
        raise InputError("is a folder, not an image file (nor a folder holding one DICOM series)", path)
    suffix = suffix_of(path)
    if suffix in SUFFIXES_2D:
        data = _read_pillow(path)
    elif suffix in DICOM_SUFFIXES or (suffix == "" and _has_dicm_preamble(path)):
        data = _read_dicom_file(path)
    elif suffix in (".nii", ".nii.gz"):
        data = _read_nifti(path, spatial_dims)
    elif suffix in (".npy", ".npz"):
        data = _read_numpy(path)
    else:
        raise InputError(
            f"unsupported file type {suffix or '(no suffix)'!r} (supported: {', '.join(SUFFIXES_ALL)})", path
        )
    return _validate(data, spatial_dims)


# ------------------------------------------------------------------------------------- PNG / JPEG / TIFF


def _read_pillow(path: Path) -> ImageData:
    """PNG, JPEG, TIFF, BMP through Pillow; the image is decoded fully so truncation fails here."""
    from PIL import Image

    errors = (
        OSError,
        EOFError,
        SyntaxError,
        ValueError,
        zlib.error,
        struct.error,
        Image.DecompressionBombError,
    )
    try:
        with Image.open(path) as img:
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames > 1:
                raise InputError(
                    f"multi-page image with {n_frames} pages; memscan reads one image per file", path
                )
            img.load()
            arr = _pillow_to_array(img)
    except InputError:
        raise
    except errors as exc:
        raise _corrupt("image", path, exc) from exc
    return ImageData(array=arr, spatial_dims=2, path=path)


def _pillow_to_array(img: Any) -> np.ndarray:
    """A loaded Pillow image as ``[C, H, W]``: 1 channel for grayscale modes, 3 for colour (alpha dropped)."""
    mode = img.mode
    if mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode in ("P", "PA"):
        # A palette whose entries are all grays reads as L, otherwise as RGB; transparency is dropped.
        palette = img.getpalette() or []
        rgb = np.asarray(palette, dtype=np.int32).reshape(-1, 3) if len(palette) % 3 == 0 else None
        gray = rgb is not None and rgb.size > 0 and bool(np.all(rgb == rgb[:, :1]))
        mode = "L" if gray else "RGB"
        img = img.convert("RGBA" if mode == "RGB" else "LA").convert(mode)
    elif mode == "LA":
        img, mode = img.getchannel("L"), "L"
    elif mode in ("La",):
        img, mode = img.convert("L"), "L"
    elif mode not in ("L", "I", "F", "RGB", "RGBA") and not mode.startswith("I;16"):
        img, mode = img.convert("RGB"), "RGB"  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    arr = np.asarray(img)
    if mode in ("RGB", "RGBA"):
        return np.moveaxis(arr[..., :3], -1, 0)
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape} for mode {mode}")
    return arr[None]


# ------------------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path) -> Any:
    """Parse the whitelisted elements of a DICOM file; raise InputError if it is not readable DICOM.

    A file without the Part 10 preamble is retried with ``force=True`` and accepted only if it then holds
    pixel data, a SOP Class UID or an image size (so random bytes are reported as "not a DICOM file").
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    errors = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error, zlib.error)
    try:
        return _ensure_transfer_syntax(pydicom.dcmread(path, specific_tags=_DICOM_TAGS))
    except InvalidDicomError:
        pass
    except errors as exc:
        raise _corrupt("DICOM", path, exc) from exc
    try:
        ds = pydicom.dcmread(path, specific_tags=_DICOM_TAGS, force=True)
    except (InvalidDicomError, *errors) as exc:
        raise InputError(f"not a DICOM file ({_plain(exc)})", path) from exc
    if not any(
        k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "SOPClassUID", "Rows")
    ):
        raise InputError("not a DICOM file (no DICM preamble and no readable DICOM elements)", path)
    return _ensure_transfer_syntax(ds)


def _ensure_transfer_syntax(ds: Any) -> Any:
    """Give a dataset read without File Meta (or without a Transfer Syntax UID) the encoding it was read in,
    so that its pixel data can be decoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") is not None:
        return ds
    implicit, little = getattr(ds, "original_encoding", (None, None))
    uid = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((implicit, little))
    if uid is not None:
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = uid
    return ds


def _float_list(value: Any) -> list[float] | None:
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _functional(ds: Any, group: str, seq: str, index: int = 0) -> Any:
    """Item ``index`` of ``ds.<group>[..].<seq>[0]`` for enhanced multi-frame objects, or None."""
    groups = ds.get(group)
    if not groups:
        return None
    item = groups[index if group.startswith("PerFrame") else 0]
    inner = item.get(seq)
    return inner[0] if inner else None


def _modality_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Apply Modality LUT / Rescale Slope & Intercept (top level, or per frame for enhanced objects).

    Args:
        arr: stored values, ``[rows, cols]`` or ``[frames, rows, cols]`` (grayscale only).
        ds: the dataset.

    Returns:
        float32 values if any transform applies, else ``arr`` unchanged.
    """
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    per_frame = [
        _functional(ds, "PerFrameFunctionalGroupsSequence", "PixelValueTransformationSequence", i)
        for i in range(n_frames)
    ]
    shared = _functional(ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence")
    transforms = [p if p is not None else shared for p in per_frame]
    if all(t is None or "RescaleSlope" not in t for t in transforms):
        return arr
    frames = arr.reshape(n_frames, *arr.shape[-2:]).astype(np.float32)
    for i, t in enumerate(transforms):
        if t is not None and "RescaleSlope" in t:
            slope, intercept = float(t.RescaleSlope), float(t.get("RescaleIntercept", 0.0))
            frames[i] = (frames[i].astype(np.float64) * slope + intercept).astype(np.float32)
    return frames.reshape(arr.shape)


def _invert_monochrome1(arr: np.ndarray) -> np.ndarray:
    """MONOCHROME1 → MONOCHROME2 appearance: ``max + min - x`` (computed without integer overflow)."""
    lo, hi = arr.min(), arr.max()
    if np.issubdtype(arr.dtype, np.integer):
        out = (int(hi) + int(lo)) - arr.astype(np.int64)
        return out.astype(arr.dtype)  # stays within [lo, hi], so it fits the original dtype
    return (hi + lo) - arr


def _pixels(ds: Any, path: Path) -> np.ndarray:
    """Decoded pixels of a dataset, raising InputError for missing or undecodable pixel data."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError("DICOM file has no pixel data (PixelData tag missing)", path)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise InputError(
            f"cannot decode DICOM pixel data (transfer syntax {_transfer_syntax(ds)}): {_plain(exc)}", path
        ) from exc
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        struct.error,
        zlib.error,
    ) as exc:
        raise _corrupt("DICOM", path, exc) from exc
    return np.asarray(arr)


def _transfer_syntax(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return f"{uid.name} ({uid})" if uid is not None else "unknown"


def _dicom_pixel_spacing(ds: Any) -> list[float] | None:
    for source in (ds, _functional(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")):
        if source is None:
            continue
        for key in ("PixelSpacing", "ImagerPixelSpacing"):
            if key in source:
                values = _float_list(source.get(key))
                if values is not None and len(values) == 2:
                    return values
    return None


def _dicom_slice_spacing(ds: Any) -> float | None:
    for source in (ds, _functional(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")):
        if source is None:
            continue
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(key)
            if value not in (None, ""):
                try:
                    return float(value)
                except (TypeError, ValueError):
                    continue
    return None


def _read_dicom_file(path: Path) -> ImageData:
    """One DICOM file: single frame → image ``[C, rows, cols]``; multi-frame → ``[C, rows, cols, frames]``."""
    ds = _dcmread(path)
    arr = _pixels(ds, path)
    samples = int(ds.get("SamplesPerPixel") or 1)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = np.asarray(apply_color_lut(arr, ds))[..., :3]
            samples = 3
        elif samples == 1:
            arr = _modality_lut(arr, ds)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _corrupt("DICOM", path, exc) from exc
    if samples == 1 and photometric == "MONOCHROME1" and arr.size:
        arr = _invert_monochrome1(arr)
    if samples == 1:
        arr = arr[None]  # [1, rows, cols] or [1, frames, rows, cols]
    elif arr.ndim in (3, 4) and arr.shape[-1] == samples:
        arr = np.moveaxis(arr[..., :3], -1, 0)  # [3, rows, cols] or [3, frames, rows, cols]
    else:
        raise InputError(f"unexpected DICOM pixel array shape {arr.shape} for {samples} samples/pixel", path)
    pixel_spacing = _dicom_pixel_spacing(ds)
    if n_frames > 1 and arr.ndim == 4:
        arr = np.moveaxis(arr, 1, -1)  # [C, rows, cols, frames]
        slice_spacing = _dicom_slice_spacing(ds)
        spacing = (*pixel_spacing, slice_spacing) if pixel_spacing and slice_spacing else None
        return ImageData(array=arr, spatial_dims=3, path=path, spacing=spacing)
    if arr.ndim == 4:  # a single frame that pydicom returned with a frame axis
        arr = arr[:, 0]
    return ImageData(
        array=arr, spatial_dims=2, path=path, spacing=tuple(pixel_spacing) if pixel_spacing else None
    )


def dicom_series_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside a folder (``*.dcm``, or extensionless with the DICM preamble).

    Args:
        folder: a folder.

    Returns:
        The candidate files, sorted by name; hidden files are skipped.
    """
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [p for p in entries if _is_dicom_candidate(p)]


def is_dicom_series_dir(folder: Path) -> bool:
    """Whether a folder directly contains two or more DICOM files of one series.

    The files must all be single-frame and share one non-empty SeriesInstanceUID; a folder of unrelated
    DICOM files (e.g. one x-ray per series) is not a series. Unreadable headers make it not a series, so
    that the files are read one by one and the bad one is reported.

    Args:
        folder: a folder.

    Returns:
        True if the folder should be read as one volume by :func:`read_dicom_series`.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = dicom_series_files(folder)
    if len(files) < 2:
        return False
    uid: str | None = None
    for f in files:
        try:
            ds = pydicom.dcmread(
                f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "NumberOfFrames"]
            )
        except Exception:  # noqa: BLE001 - any unreadable header means "not a series"; reported on read
            return False
        this = str(ds.get("SeriesInstanceUID") or "")
        if not this or int(ds.get("NumberOfFrames") or 1) > 1:
            return False
        if uid is None:
            uid = this
        elif this != uid:
            return False
    return True


def _slice_order(datasets: Sequence[Any], folder: Path) -> tuple[list[int], float | None]:
    """Order slices along the slice normal (ImagePositionPatient · normal), else by InstanceNumber.

    Returns:
        The order of indices into ``datasets``, and the slice spacing measured from positions (or None).
    """
    positions = [_float_list(ds.get("ImagePositionPatient")) for ds in datasets]
    orientations = [_float_list(ds.get("ImageOrientationPatient")) for ds in datasets]
    if all(p is not None and len(p) == 3 for p in positions) and all(
        o is not None and len(o) == 6 for o in orientations
    ):
        orient = np.asarray(orientations, dtype=np.float64)
        if np.allclose(orient, orient[0], atol=1e-4):
            normal = np.cross(orient[0, :3], orient[0, 3:])
            if np.linalg.norm(normal) > 1e-6:
                normal = normal / np.linalg.norm(normal)
                dist = np.asarray(positions, dtype=np.float64) @ normal
                order = [int(i) for i in np.argsort(dist, kind="stable")]
                gaps = np.diff(dist[order])
                if np.any(gaps < 1e-4):
                    raise InputError(
                        "DICOM series has slices at the same position (several acquisitions or time points "
                        "in one folder?); put each volume in its own folder",
                        folder,
                    )
                return order, float(np.median(gaps))
    numbers: list[int] = []
    for ds in datasets:
        try:
            numbers.append(int(ds.get("InstanceNumber")))
        except (TypeError, ValueError):
            raise InputError(
                "cannot order the DICOM slices: ImagePositionPatient/ImageOrientationPatient and "
                "InstanceNumber are missing",
                folder,
            ) from None
    if len(set(numbers)) != len(numbers):
        raise InputError("cannot order the DICOM slices: InstanceNumber values repeat", folder)
    return sorted(range(len(datasets)), key=lambda i: numbers[i]), None


def read_dicom_series(folder: Path) -> ImageData:
    """Read a folder holding one DICOM series as a volume ``[1, rows, cols, n_slices]``.

    Slices are sorted along the slice normal using ``ImagePositionPatient · normal`` (normal = row × column
    direction of ImageOrientationPatient), falling back to InstanceNumber. Rescale slope/intercept is
    applied per slice (float32 if any slice has one); MONOCHROME1 is inverted with the volume's range.

    Args:
        folder: the series folder.

    Returns:
        The volume; spacing is ``(row spacing, column spacing, slice spacing)`` when known.

    Raises:
        InputError: fewer than two DICOM files, mixed series/sizes, colour or multi-frame slices, no way to
            order the slices, or any unreadable slice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder (expected a folder holding one DICOM series)", folder)
    files = dicom_series_files(folder)
    if len(files) < 2:
        raise InputError(f"a DICOM series needs at least 2 DICOM files, found {len(files)}", folder)
    datasets = [_dcmread(f) for f in files]
    uids = {str(ds.get("SeriesInstanceUID") or "") for ds in datasets}
    if len(uids) > 1:
        raise InputError(f"folder mixes {len(uids)} DICOM series; put each series in its own folder", folder)
    slices: list[np.ndarray] = []
    for f, ds in zip(files, datasets, strict=True):
        if int(ds.get("SamplesPerPixel") or 1) != 1 or int(ds.get("NumberOfFrames") or 1) != 1:
            raise InputError("a DICOM series must hold single-frame grayscale slices", f)
        arr = _pixels(ds, f)
        try:
            slices.append(_modality_lut(arr, ds))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _corrupt("DICOM", f, exc) from exc
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"DICOM slices differ in size: {sorted(shapes)}", folder)
    order, measured = _slice_order(datasets, folder)
    if any(s.dtype == np.float32 for s in slices):
        slices = [s.astype(np.float32) for s in slices]
    elif len({s.dtype for s in slices}) > 1:
        raise InputError("DICOM slices store pixels with different data types", folder)
    volume = np.stack([slices[i] for i in order], axis=-1)  # [rows, cols, n_slices]
    photometric = {str(ds.get("PhotometricInterpretation", "")).strip().upper() for ds in datasets}
    if photometric == {"MONOCHROME1"}:
        volume = _invert_monochrome1(volume)
    elif "MONOCHROME1" in photometric:
        raise InputError("DICOM series mixes MONOCHROME1 and MONOCHROME2 slices", folder)
    pixel_spacing = _dicom_pixel_spacing(datasets[order[0]])
    slice_spacing = measured if measured is not None else _dicom_slice_spacing(datasets[order[0]])
    spacing = (*pixel_spacing, slice_spacing) if pixel_spacing and slice_spacing else None
    return ImageData(array=volume[None], spatial_dims=3, path=folder, spacing=spacing)


# ------------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, spatial_dims: int | None) -> ImageData:
    """NIfTI through nibabel, in nibabel's ``dataobj`` axis order.

    Integer data without scaling keeps its dtype; scaled or floating data is float32. 2D → image
    ``[1, X, Y]``; 3D → volume ``[1, X, Y, Z]`` (or an image when ``spatial_dims=2`` and ``Z == 1``); 4D with
    a last axis of 1 is squeezed; other 4D and higher raise.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    errors = (
        ImageFileError,
        HeaderDataError,
        WrapStructError,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        struct.error,
        MemoryError,
    )
    try:
        img = nib.load(str(path), mmap=False)
        arr = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except errors as exc:
        raise _corrupt("NIfTI", path, exc) from exc
    arr = np.asarray(arr)
    shape = tuple(int(s) for s in arr.shape)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and spatial_dims == 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise InputError(f"{len(shape)}D NIfTI {shape} where a 3D volume is expected", path)
    if arr.ndim < 2:
        raise InputError(f"{len(shape)}D NIfTI {shape} where a 2D image or 3D volume is expected", path)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    spacing = zooms[: arr.ndim] if len(zooms) >= arr.ndim else None
    return ImageData(array=arr[None], spatial_dims=arr.ndim, path=path, spacing=spacing)


# ------------------------------------------------------------------------------------------- NPY / NPZ


def _read_numpy(path: Path) -> ImageData:
    """NPY/NPZ (a lone array, or ``image``/``arr_0``): 2D → ``[1, H, W]``, 3D → ``[1, X, Y, Z]``."""
    import pickle

    errors = (
        OSError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        zlib.error,
        pickle.UnpicklingError,
        struct.error,
        KeyError,
    )
    kind = "NPZ" if suffix_of(path) == ".npz" else "NPY"
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.files)
                if len(keys) == 1:
                    key = keys[0]
                elif "image" in keys:
                    key = "image"
                elif "arr_0" in keys:
                    key = "arr_0"
                else:
                    raise InputError(
                        f"NPZ holds {len(keys)} arrays ({', '.join(keys[:8])}) and none is named 'image' "
                        "or 'arr_0'; save the image alone or under the name 'image'",
                        path,
                    )
                arr = np.asarray(loaded[key])
        else:
            arr = np.asarray(loaded)
    except InputError:
        raise
    except errors as exc:
        raise _corrupt(kind, path, exc) from exc
    if arr.ndim not in (2, 3):
        raise InputError(
            f"{kind} array has shape {tuple(arr.shape)}; expected a 2D image (H, W) or a 3D volume (X, Y, Z)",
            path,
        )
    return ImageData(array=arr[None], spatial_dims=arr.ndim, path=path)
