"""One reader per image format, dispatched on the file suffix.

Every reader returns an :class:`ImageData` holding channels-first pixels: a 2D image is ``[C, H, W]``, a
volume is ``[C, X, Y, Z]``. Every bad file (missing, corrupt, truncated, not what its suffix says, NaN/Inf
values, empty) raises one :class:`~memscan.errors.InputError` that names the file and the problem; a file
that holds no image at all (a DICOMDIR, structured report, RT plan, waveform, CIFTI-2 matrix) raises its
subclass :class:`NoImageData`, which ``prepare`` counts and skips.

Decisions worth knowing:

- **Dtypes** are kept where no value transform applies (uint8 PNG stays uint8, int16 NIfTI stays int16).
  A DICOM Rescale Slope/Intercept (all CT) that is ONE linear map for the whole image keeps the stored
  integers and is recorded in ``ImageData.rescale`` (Pearson correlation is invariant to a per-item affine
  map with positive slope; a negative slope is turned positive by storing ``~x = -x - 1``), so 16-bit CT
  takes the exact 16-bit search path. Any other value transform (NIfTI ``scl_slope``/``scl_inter``, a
  DICOM Modality LUT, rescales that differ between frames or slices) gives ``float32``; a NIfTI holding
  float64 is also returned as ``float32``.
- **DICOM privacy**: only the pixel, geometry and value-transform elements are parsed
  (``dcmread(specific_tags=...)``); patient-identifying elements are never read into memory, and
  :class:`ImageData` carries pixels, path and spacing only.
- **MONOCHROME1** (bright = low values) is inverted as ``max + min - x`` after the modality LUT, so
  bright always means dense, as in MONOCHROME2. For a DICOM series the inversion uses the whole volume's
  range so slices stay consistent.
- **Orientation** (:mod:`memscan.io.orientation`): a volume whose file gives its position in the patient
  (NIfTI/MGH/MINC/PAR-REC/AFNI affine with a set qform or sform; a DICOM series or enhanced multi-frame
  object with ImageOrientationPatient/ImagePositionPatient) is returned in the frame ``PLS``: ``X``
  anterior→posterior, ``Y`` patient right→left, ``Z`` inferior→superior, so an axial slice is in the
  radiological display. ``ImageData.frame`` is then ``'PLS'`` and ``source_frame`` the file's own codes
  (``'LPS'`` for BraTS). Volumes without that information (NPY, a NIfTI with qform and sform codes 0,
  Analyze) and all 2D images (PNG, a single DICOM image) are returned as stored (``frame`` None).
- **NaN**: refused by default; with ``nan='zero'`` NaN voxels become 0 and are counted in ``n_nan``
  (SPM-style resampling writes NaN outside the field of view). Inf is always refused.
- **Spacing** is in the order of the returned spatial axes: for DICOM ``(row spacing, column spacing[,
  slice spacing])`` in mm, for NIfTI the header zooms; ``None`` where the file does not say (PNG, NPY).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import logging
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memscan.errors import InputError
from memscan.io import orientation

__all__ = [
    "DICOM_SUFFIXES",
    "SUFFIXES_2D",
    "SUFFIXES_ALL",
    "VOLUME_SUFFIXES",
    "NAN_POLICIES",
    "NIBABEL_SUFFIXES",
    "ImageData",
    "NoImageData",
    "dicom_series_files",
    "is_dicom_series_dir",
    "ARRAY_RULE",
    "read_array_stack",
    "read_dicom_series",
    "read_image",
    "suffix_of",
    "supported",
]

logger = logging.getLogger(__name__)

SUFFIXES_2D: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dcm.gz")
NIBABEL_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".mgh", ".mgz", ".mnc", ".par", ".hdr", ".head")
"""Formats read through nibabel: NIfTI-1/2, FreeSurfer MGH/MGZ, MINC 1/2, Philips PAR/REC, Analyze or
NIfTI pairs (``.hdr`` + ``.img``), AFNI (``.HEAD`` + ``.BRIK[.gz]``). The item is the header file."""
ARRAY_SUFFIXES: tuple[str, ...] = (".npy", ".npz")
VOLUME_SUFFIXES: tuple[str, ...] = NIBABEL_SUFFIXES + ARRAY_SUFFIXES
SUFFIXES_ALL: tuple[str, ...] = SUFFIXES_2D + DICOM_SUFFIXES + VOLUME_SUFFIXES
COMPANION_SUFFIXES: dict[str, tuple[str, ...]] = {
    ".rec": (".par",),
    ".img": (".hdr",),
    ".img.gz": (".hdr",),
    ".brik": (".head",),
    ".brik.gz": (".head",),
}
"""Data files that belong to a header file beside them (same stem): read with it, never on their own."""
_MULTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".dcm.gz", ".img.gz", ".brik.gz")
NAN_POLICIES: tuple[str, ...] = ("error", "zero")

# Elements parsed from a DICOM file: pixel module, value transforms, geometry, series identity. Nothing
# else is read, so patient-identifying elements (PatientName, PatientID, ...) never enter memory.
_DICOM_TAGS: list[str] = [
    "SOPClassUID",
    "MediaStorageSOPClassUID",
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
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]


_DICOM_SEQUENCES: dict[str, tuple[str, ...]] = {
    "SharedFunctionalGroupsSequence": (
        "PixelMeasuresSequence",
        "PixelValueTransformationSequence",
        "PlanePositionSequence",
        "PlaneOrientationSequence",
    ),
    "PerFrameFunctionalGroupsSequence": (
        "PixelMeasuresSequence",
        "PixelValueTransformationSequence",
        "PlanePositionSequence",
        "PlaneOrientationSequence",
    ),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "ModalityLUTSequence": ("LUTDescriptor", "LUTExplanation", "ModalityLUTType", "LUTData"),
}
"""What is kept inside each whitelisted sequence: for every item, only these elements (recursively).

A whitelisted sequence arrives from pydicom as one undecoded byte string; its items are split into
elements whose values stay undecoded bytes until first accessed. :func:`_keep_whitelisted` drops every
other element of every item (by tag, without decoding it) right after the file is parsed, so a
PatientName planted inside a functional group is never decoded and is not reachable from anything memscan
holds."""


@dataclass(frozen=True)
class ImageData:
    """Pixels read from one file (or one DICOM series folder).

    Attributes:
        array: channels-first pixels: 2D image ``[C, H, W]``; volume ``[C, X, Y, Z]``.
        spatial_dims: 2 or 3.
        path: the file (or the series folder) read.
        spacing: physical size of a pixel/voxel along each spatial axis (mm), or ``None`` if unknown.
        frame: ``'PLS'`` when the volume was brought to the canonical frame (see
            :mod:`memscan.io.orientation`), ``None`` when returned as stored.
        source_frame: the file's own axis codes (e.g. ``'LPS'``), when known.
        n_nan: NaN values replaced by 0 (``nan='zero'``).
        stack: ``array`` is ``[N, C, *S]``, N items from one array file (see :func:`read_array_stack`).
        rescale: ``(slope, intercept)`` with ``slope > 0`` when ``array`` holds DICOM stored integers whose
            modality values are ``slope · array + intercept`` (not applied: see the module notes), else None.
    """

    array: np.ndarray
    spatial_dims: int
    path: Path
    spacing: tuple[float, ...] | None = None
    frame: str | None = None
    source_frame: str | None = None
    n_nan: int = 0
    stack: bool = False
    rescale: tuple[float, float] | None = None

    def modality_values(self) -> np.ndarray:
        """The modality values (e.g. Hounsfield units): ``slope · array + intercept`` (float64) when
        ``rescale`` is set, else ``array`` itself."""
        if self.rescale is None:
            return self.array
        slope, intercept = self.rescale
        return self.array.astype(np.float64) * slope + intercept


@contextlib.contextmanager
def _native_stderr_to_log(path: Path) -> Iterator[None]:
    """Capture what native decoders (OpenJPEG, libjpeg, GDCM) print straight to file descriptor 2.

    Those C libraries write diagnostics such as "Marker handler function failed to read the marker
    segment" to the process's stderr, bypassing Python; the decode error itself reaches the user as one
    InputError line. The captured text is logged at debug level (``--verbose``) naming the file.
    """
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreter): capture nothing
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                logger.debug("%s: decoder said: %s", path, " ".join(text.split()))


class NoImageData(InputError):
    """A readable file that holds no image (DICOMDIR, SR, RT plan, waveform, CIFTI-2): skipped by prepare."""


@contextlib.contextmanager
def _quiet(path: Path) -> Iterator[None]:
    """Turn third-party warnings (pydicom, nibabel) into debug log lines naming the file.

    A decoder's warnings about a file it still reads correctly are not the user's problem; what matters is
    reported through InputError. They stay visible with ``--verbose`` (debug logging).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        logger.debug("%s: %s", path, " ".join(str(w.message).split()))


# ---------------------------------------------------------------------------------------------- helpers


def suffix_of(path: str | Path) -> str:
    """The format suffix of a path, lower case; ``.nii.gz`` counts as one suffix.

    Args:
        path: a file path.

    Returns:
        e.g. ``'.png'``, ``'.nii.gz'``, or ``''`` for a name without a suffix.
    """
    name = Path(path).name.lower()
    for multi in _MULTI_SUFFIXES:
        if name.endswith(multi):
            return multi
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


def _validate(data: ImageData, spatial_dims: int | None, nan: str = "error") -> ImageData:
    """Shared checks: not empty, finite (NaN per ``nan``), numeric, the expected dimensionality.

    The finiteness check runs on the array as returned, after every dtype conversion of the reader (a
    float64 value beyond float32's range has become ``inf`` by then and is caught here).
    """
    arr = data.array
    n_nan = data.n_nan
    if arr.size == 0:
        raise InputError(f"empty image (array shape {tuple(arr.shape)})", data.path)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"pixel values of type {arr.dtype} are not numbers this reader accepts", data.path)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad:
            nan_mask = np.isnan(arr)
            n_nan_here = int(np.count_nonzero(nan_mask))
            n_inf = n_bad - n_nan_here
            if n_inf:
                raise InputError(
                    f"contains {n_inf} infinite values (or values beyond float32's range)"
                    + (f" and {n_nan_here} NaN values" if n_nan_here else ""),
                    data.path,
                )
            if nan != "zero":
                raise InputError(
                    f"contains {n_nan_here} NaN values (pass --nan zero to read them as 0)", data.path
                )
            arr = np.where(nan_mask, arr.dtype.type(0), arr)
            n_nan += n_nan_here
        if arr.dtype.itemsize > 4:  # float64 kept as is (NPY): every later float32 cast must stay finite
            biggest = float(np.max(np.abs(arr)))
            if biggest > float(np.finfo(np.float32).max):
                raise InputError(
                    f"contains values beyond float32's range (largest magnitude {biggest:.3g}); they would "
                    "become infinite",
                    data.path,
                )
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
    if arr is data.array and n_nan == data.n_nan:
        return data
    return dataclasses.replace(data, array=arr, n_nan=n_nan)


# ----------------------------------------------------------------------------------------------- entry


def read_image(
    path: Path, *, spatial_dims: int | None = None, nan: str = "error", volumes: bool = False
) -> ImageData:
    """Read one image file, or one DICOM series folder, into channels-first pixels.

    Args:
        path: a file with a supported suffix (see :data:`SUFFIXES_ALL`), an extensionless DICOM file, or a
            folder holding one DICOM series.
        spatial_dims: 2 or 3 to require an image or a volume; ``None`` accepts either.
        nan: ``'error'`` refuses NaN values; ``'zero'`` replaces them by 0 (counted in ``n_nan``).
        volumes: how a NumPy array file is read (see :func:`read_array_stack`); other formats ignore it.

    Returns:
        The pixels (``[C, H, W]`` or ``[C, X, Y, Z]``; ``[N, C, *S]`` for an array stack), dimensionality,
        path, spacing and frame.

    Raises:
        NoImageData: the file holds no image (DICOMDIR, SR, RT plan, waveform, CIFTI-2).
        InputError: missing, unsupported, corrupt or truncated file; NaN/Inf values; empty array; the
            dimensionality differs from ``spatial_dims``.
    """
    path = Path(path)
    if spatial_dims not in (None, 2, 3):
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if nan not in NAN_POLICIES:
        raise InputError(f"nan policy must be one of {', '.join(NAN_POLICIES)}, got {nan!r}")
    if not path.exists():
        raise InputError("does not exist", path)
    if path.is_dir():
        if is_dicom_series_dir(path):
            return _validate(read_dicom_series(path), spatial_dims, nan)
        raise InputError("is a folder, not an image file (nor a folder holding one DICOM series)", path)
    if not path.is_file():
        raise InputError("is not a regular file (a pipe, socket or device); not read", path)
    suffix = suffix_of(path)
    if suffix in SUFFIXES_2D:
        data = _read_pillow(path)
    elif suffix in DICOM_SUFFIXES or (suffix == "" and _has_dicm_preamble(path)):
        data = _read_dicom_file(path)
    elif suffix in NIBABEL_SUFFIXES:
        data = _read_nibabel(path, spatial_dims)
    elif suffix in ARRAY_SUFFIXES:
        data = read_array_stack(path, volumes=volumes)  # spatial_dims is checked per item of a stack
    else:
        raise InputError(
            f"unsupported file type {suffix or '(no suffix)'!r} (supported: {', '.join(SUFFIXES_ALL)})", path
        )
    return _validate(data, spatial_dims, nan)


# ------------------------------------------------------------------------------------- PNG / JPEG / TIFF

MAX_PIXELS_2D = 64_000_000
"""Largest 2D image decoded (pixels): ten times a large digital radiograph (about 3000 x 3000), far below
what would exhaust memory; the header's size is checked before any pixel is decoded."""


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
        with warnings.catch_warnings():
            # Pillow warns above its own 89-megapixel bound when opening; memscan's limit (below) refuses
            # such images with one error line instead, so the warning would only be noise on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS_2D:
                raise InputError(
                    f"image of {width}x{height} = {width * height / 1e6:.0f} megapixels exceeds memscan's "
                    f"limit of {MAX_PIXELS_2D / 1e6:.0f} megapixels (refused before decoding)",
                    path,
                )
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


#: Largest decompressed ``.dcm.gz`` read into memory (one real image or a modest multi-frame object fits).
MAX_DICOM_GZ_BYTES = 1 << 30


def _dicom_source(path: Path) -> Any:
    """The path itself, or the decompressed bytes of a ``.dcm.gz`` file (as a file-like object)."""
    if suffix_of(path) != ".dcm.gz":
        return path
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(MAX_DICOM_GZ_BYTES + 1)  # bounded: a gzip bomb cannot exhaust memory
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt("gzip-compressed DICOM", path, exc) from exc
    if len(data) > MAX_DICOM_GZ_BYTES:
        raise InputError(
            f"gzip-compressed DICOM decompresses to more than {MAX_DICOM_GZ_BYTES // 2**20} MiB (refused: "
            "decompress large archives yourself, or a gzip bomb)",
            path,
        )
    return io.BytesIO(data)


def _dcmread(path: Path) -> Any:
    """Parse the whitelisted elements of a DICOM file; raise InputError if it is not readable DICOM.

    A file without the Part 10 preamble is retried with ``force=True`` and accepted only if it then holds
    pixel data, a SOP Class UID or an image size (so random bytes are reported as "not a DICOM file").
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    errors = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error, zlib.error)
    source = _dicom_source(path)
    try:
        with _quiet(path):
            ds = pydicom.dcmread(source, specific_tags=_DICOM_TAGS)
        return _ensure_transfer_syntax(_keep_whitelisted(ds, path))
    except InvalidDicomError:
        if isinstance(source, io.BytesIO):
            source.seek(0)
    except errors as exc:
        raise _corrupt("DICOM", path, exc) from exc
    try:
        with _quiet(path):
            ds = pydicom.dcmread(source, specific_tags=_DICOM_TAGS, force=True)
    except (InvalidDicomError, *errors) as exc:
        raise InputError(f"not a DICOM file ({_plain(exc)})", path) from exc
    if not any(
        k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "SOPClassUID", "Rows")
    ):
        raise InputError("not a DICOM file (no DICM preamble and no readable DICOM elements)", path)
    return _ensure_transfer_syntax(_keep_whitelisted(ds, path))


def _keep_whitelisted(ds: Any, path: Path) -> Any:
    """Remove from the whitelisted sequences every element not listed in :data:`_DICOM_SEQUENCES`.

    Elements are deleted by tag (``del item[tag]``), which never decodes their values. Returns ``ds``.
    """
    from pydicom.datadict import tag_for_keyword

    def prune(item: Any, keep: tuple[str, ...]) -> None:
        allowed = {tag_for_keyword(k) for k in keep}
        for tag in [t for t in item.keys() if t not in allowed]:
            del item[tag]
        for keyword in keep:
            if keyword in _DICOM_SEQUENCES and keyword in item:
                for inner in item[keyword].value or []:
                    prune(inner, _DICOM_SEQUENCES[keyword])

    try:
        for keyword in (
            "SharedFunctionalGroupsSequence",
            "PerFrameFunctionalGroupsSequence",
            "ModalityLUTSequence",
        ):
            if keyword in ds:
                for item in ds[keyword].value or []:
                    prune(item, _DICOM_SEQUENCES[keyword])
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise _corrupt("DICOM", path, exc) from exc
    return ds


def _sop_class_name(ds: Any) -> str:
    """A DICOM object's kind for messages: its SOP class name (``'Basic Text SR Storage'``), or 'unknown'."""
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if uid is None:
        return "unknown kind"
    name = getattr(uid, "name", str(uid))
    return str(name)


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


def _linear_rescales(ds: Any, n_frames: int) -> list[tuple[float, float]] | None:
    """Each frame's Rescale ``(slope, intercept)`` (``(1, 0)`` for a frame without one), top level or per
    frame for enhanced objects; None when the object has no rescale at all."""
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return [(float(ds.RescaleSlope), float(ds.RescaleIntercept))] * n_frames
    per_frame = [
        _functional(ds, "PerFrameFunctionalGroupsSequence", "PixelValueTransformationSequence", i)
        for i in range(n_frames)
    ]
    shared = _functional(ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence")
    transforms = [p if p is not None else shared for p in per_frame]
    if all(t is None or "RescaleSlope" not in t for t in transforms):
        return None
    return [
        (float(t.RescaleSlope), float(t.get("RescaleIntercept", 0.0)))
        if t is not None and "RescaleSlope" in t
        else (1.0, 0.0)
        for t in transforms
    ]


def _apply_rescales(arr: np.ndarray, rescales: Sequence[tuple[float, float]]) -> np.ndarray:
    """``slope · x + intercept`` per frame (float64 arithmetic, float32 result); ``arr`` is ``[rows, cols]``
    (one rescale) or ``[frames, rows, cols]``."""
    frames = arr.reshape(len(rescales), *arr.shape[-2:]).astype(np.float64)
    for i, (slope, intercept) in enumerate(rescales):
        frames[i] = frames[i] * slope + intercept
    return frames.astype(np.float32).reshape(arr.shape)


def _modality_lut(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Stored values → values to keep, and the rescale they did not apply (see the module notes).

    Integer stored values with ONE Rescale Slope/Intercept for every frame stay integers: Pearson
    correlation is invariant to a per-item affine map ``a x + b`` with ``a > 0``, so the search ranks the
    stored values exactly as the Hounsfield units (and the exact integer path applies). A negative slope
    would reverse the sign of every correlation, so the values are replaced by ``~x = -x - 1`` (same dtype,
    no overflow: a bijection of every integer dtype) and the recorded map becomes ``(-a, b - a)``. A Modality
    LUT Sequence (not linear), a zero or non-finite slope, float pixel data or rescales that differ between
    frames are applied as before (float32).

    Args:
        arr: stored values, ``[rows, cols]`` or ``[frames, rows, cols]`` (grayscale only).
        ds: the dataset.

    Returns:
        ``(values, rescale)``: ``rescale = (slope > 0, intercept)`` maps ``values`` to the modality values,
        or None when ``values`` are already those (no transform, or applied as float32).
    """
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), None
    n_frames = int(ds.get("NumberOfFrames") or 1) if arr.ndim == 3 else 1
    rescales = _linear_rescales(ds, n_frames)
    if rescales is None:
        return arr, None
    slope, intercept = rescales[0]
    if (
        np.issubdtype(arr.dtype, np.integer)
        and len(set(rescales)) == 1
        and np.isfinite(slope)
        and np.isfinite(intercept)
        and slope != 0.0
    ):
        if slope > 0:
            return arr, (slope, intercept)
        return np.invert(arr), (-slope, intercept - slope)  # a(-v - 1) + b = (-a) v + (b - a)
    return _apply_rescales(arr, rescales), None


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
        raise NoImageData(f"DICOM object without an image ({_sop_class_name(ds)})", path)
    try:
        with _quiet(path), _native_stderr_to_log(path):
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


def _multiframe_geometry(ds: Any, n_frames: int) -> tuple[list[float], np.ndarray] | None:
    """ImageOrientationPatient (shared by all frames) and per-frame ImagePositionPatient ``[n, 3]`` of an
    enhanced multi-frame object (PS3.3 C.7.6.16 Plane Position/Orientation functional groups), or None."""
    iops: list[list[float]] = []
    positions: list[list[float]] = []
    for i in range(n_frames):
        orient = _functional(ds, "PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence", i)
        if orient is None:
            orient = _functional(ds, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence")
        pos = _functional(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence", i)
        iop = _float_list(orient.get("ImageOrientationPatient")) if orient is not None else None
        ipp = _float_list(pos.get("ImagePositionPatient")) if pos is not None else None
        if iop is None or len(iop) != 6 or ipp is None or len(ipp) != 3:
            return None
        iops.append(iop)
        positions.append(ipp)
    arr = np.asarray(iops, dtype=np.float64)
    if not np.allclose(arr, arr[0], atol=1e-4):
        return None
    return iops[0], np.asarray(positions, dtype=np.float64)


def _order_along_normal(iop: Sequence[float], positions: np.ndarray) -> tuple[list[int] | None, float | None]:
    """Frames sorted along the slice normal ``row × column``, and the median spacing; ``(None, None)`` when
    the normal is degenerate or two frames share a position (time series, several echoes)."""
    row, col = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        return None, None
    dist = positions @ (normal / np.linalg.norm(normal))
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    gaps = np.diff(dist[order])
    if gaps.size == 0 or np.any(gaps < 1e-4):
        return None, None
    return order, float(np.median(gaps))


def _oriented_dicom_volume(
    arr: np.ndarray,
    iop: Sequence[float],
    first: Sequence[float],
    last: Sequence[float],
    pixel_spacing: Sequence[float] | None,
    slice_spacing: float | None,
    path: Path,
) -> ImageData:
    """A DICOM volume ``[C, rows, cols, slices]`` (slices sorted along the normal) in the canonical frame."""
    affine = orientation.dicom_affine(iop, first, last, pixel_spacing, arr.shape[-1], slice_spacing)
    spacing = (*pixel_spacing, slice_spacing) if pixel_spacing and slice_spacing else None
    return _to_canonical(arr, affine, spacing, path)


def _to_canonical(
    arr: np.ndarray, affine: np.ndarray, spacing: Sequence[float] | None, path: Path
) -> ImageData:
    """Reorient ``[C, X, Y, Z]`` to PLS and carry spacing along; a degenerate affine is an InputError."""
    try:
        source = "".join(orientation.axcodes(affine))
        out, source_of, _ = orientation.reorient(arr, affine)
    except ValueError as exc:
        raise InputError(f"cannot tell the volume's orientation: {exc}", path) from exc
    new_spacing = tuple(float(spacing[i]) for i in source_of) if spacing else None
    return ImageData(
        array=out,
        spatial_dims=3,
        path=path,
        spacing=new_spacing,
        frame=orientation.CANONICAL_NAME,
        source_frame=source,
    )


def _read_dicom_file(path: Path) -> ImageData:
    """One DICOM file: single frame → image ``[C, rows, cols]``; multi-frame → ``[C, rows, cols, frames]``;
    ``rescale`` set when the stored integers were kept (:func:`_modality_lut`)."""
    ds = _dcmread(path)
    rescale: list[tuple[float, float] | None] = [None]
    data = _read_dicom_pixels(ds, path, rescale)
    return dataclasses.replace(data, rescale=rescale[0]) if rescale[0] is not None else data


def _read_dicom_pixels(ds: Any, path: Path, rescale: list[tuple[float, float] | None]) -> ImageData:
    """:func:`_read_dicom_file`'s body; ``rescale[0]`` receives the rescale the values did not apply."""
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
            arr, rescale[0] = _modality_lut(arr, ds)
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
        geometry = _multiframe_geometry(ds, n_frames)
        if geometry is not None:
            iop, positions = geometry
            order, measured = _order_along_normal(iop, positions)
            if order is not None:
                arr = arr[..., order]
                return _oriented_dicom_volume(
                    arr, iop, positions[order[0]], positions[order[-1]], pixel_spacing, measured, path
                )
        spacing = (*pixel_spacing, slice_spacing) if pixel_spacing and slice_spacing else None
        return ImageData(array=arr, spatial_dims=3, path=path, spacing=spacing)
    if arr.ndim == 4:  # a single frame that pydicom returned with a frame axis
        arr = arr[:, 0]
    return ImageData(
        array=arr, spatial_dims=2, path=path, spacing=tuple(pixel_spacing) if pixel_spacing else None
    )


def _dicom_candidates(folder: Path) -> list[Path]:
    """The DICOM files directly inside a folder (``*.dcm``, or extensionless with the DICM preamble)."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [p for p in entries if _is_dicom_candidate(p)]


def _series_members(folder: Path) -> list[Path] | None:
    """The image files of the one DICOM series a folder holds, or None if it holds no single series.

    Image-less DICOM objects beside the slices (a DICOMDIR, a structured report, a presentation state:
    no ``Rows`` element) are not members; they are read (and skipped) on their own.
    """
    import pydicom

    members: list[Path] = []
    uid: str | None = None
    for f in _dicom_candidates(folder):
        try:
            with _quiet(f):
                ds = pydicom.dcmread(
                    f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "NumberOfFrames", "Rows"]
                )
        except Exception:  # noqa: BLE001 - any unreadable header means "not a series"; reported on read
            return None
        if "Rows" not in ds:
            continue
        this = str(ds.get("SeriesInstanceUID") or "")
        if not this or int(ds.get("NumberOfFrames") or 1) > 1:
            return None
        if uid is None:
            uid = this
        elif this != uid:
            return None
        members.append(f)
    return members if len(members) >= 2 else None


def dicom_series_files(folder: Path) -> list[Path]:
    """The image files of the DICOM series held directly in a folder.

    Args:
        folder: a folder.

    Returns:
        The slice files, sorted by name (hidden files skipped); ``[]`` when the folder is not one series
        (see :func:`is_dicom_series_dir`).
    """
    return _series_members(Path(folder)) or []


def is_dicom_series_dir(folder: Path) -> bool:
    """Whether a folder directly contains two or more DICOM images of one series.

    The images must all be single-frame and share one non-empty SeriesInstanceUID; a folder of unrelated
    DICOM files (e.g. one x-ray per series) is not a series. Image-less DICOM objects in the folder
    (DICOMDIR, SR) do not count. Unreadable headers make it not a series, so that the files are read one
    by one and the bad one is reported.

    Args:
        folder: a folder.

    Returns:
        True if the folder should be read as one volume by :func:`read_dicom_series`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return _series_members(folder) is not None


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
        if not np.allclose(orient, orient[0], atol=1e-4):
            raise InputError(
                "DICOM series slices have different ImageOrientationPatient (a radial or multi-planar "
                "acquisition such as a localiser): not one volume",
                folder,
            )
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
    direction of ImageOrientationPatient), falling back to InstanceNumber. One Rescale Slope/Intercept shared
    by every slice keeps the stored integers (recorded in ``rescale``, see :func:`_modality_lut`); rescales
    that differ are applied per slice (float32); MONOCHROME1 is inverted with the volume's range.

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
    rescales: list[tuple[float, float] | None] = []
    for f, ds in zip(files, datasets, strict=True):
        if int(ds.get("SamplesPerPixel") or 1) != 1 or int(ds.get("NumberOfFrames") or 1) != 1:
            raise InputError("a DICOM series must hold single-frame grayscale slices", f)
        arr = _pixels(ds, f)
        try:
            values, rescale = _modality_lut(arr, ds)
            slices.append(values)
            rescales.append(rescale)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _corrupt("DICOM", f, exc) from exc
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"DICOM slices differ in size: {sorted(shapes)}", folder)
    order, measured = _slice_order(datasets, folder)
    # One volume is one item: its stored integers are kept only under ONE rescale for every slice
    # (correlation is invariant to one affine map per item, not to one per slice); else all are applied.
    series_rescale = rescales[0] if len(set(rescales)) == 1 else None
    if series_rescale is None and any(r is not None for r in rescales):
        slices = [s if r is None else _apply_rescales(s, [r]) for s, r in zip(slices, rescales, strict=True)]
    data = _series_volume(folder, datasets, slices, order, measured)
    return dataclasses.replace(data, rescale=series_rescale) if series_rescale is not None else data


def _series_volume(
    folder: Path, datasets: Sequence[Any], slices: list[np.ndarray], order: list[int], measured: float | None
) -> ImageData:
    """The sorted slices as one volume (MONOCHROME1 inverted with the volume's range, oriented when the
    geometry is known)."""
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
    if measured is not None:  # ordered by ImagePositionPatient: the geometry is known
        first, last = datasets[order[0]], datasets[order[-1]]
        return _oriented_dicom_volume(
            volume[None],
            _float_list(first.get("ImageOrientationPatient")) or [],
            _float_list(first.get("ImagePositionPatient")) or [],
            _float_list(last.get("ImagePositionPatient")),
            pixel_spacing,
            slice_spacing,
            folder,
        )
    spacing = (*pixel_spacing, slice_spacing) if pixel_spacing and slice_spacing else None
    return ImageData(array=volume[None], spatial_dims=3, path=folder, spacing=spacing)


# ------------------------------------------------------------------------------------- NIfTI and nibabel


def _has_orientation(img: Any) -> bool:
    """Whether an image's affine says where the patient is.

    A NIfTI file with qform_code and sform_code both 0 (and an Analyze file) carries no orientation: nibabel
    then returns a default affine built from the voxel sizes alone, which must not be used to reorient.
    """
    header = getattr(img, "header", None)
    if header is None:
        return False
    if hasattr(header, "get_qform") and hasattr(header, "get_sform"):
        return int(header.get_qform(coded=True)[1] or 0) > 0 or int(header.get_sform(coded=True)[1] or 0) > 0
    from nibabel.analyze import AnalyzeHeader

    return not isinstance(header, AnalyzeHeader)


def _read_nibabel(path: Path, spatial_dims: int | None) -> ImageData:
    """NIfTI-1/2, MGH/MGZ, MINC, PAR/REC, Analyze and AFNI through nibabel, brought to the canonical frame.

    Integer data without scaling keeps its dtype; scaled or floating data is float32. A 3D volume →
    ``[1, X, Y, Z]`` in the PLS frame when the file carries an orientation (else as stored); a 2D image, or a
    volume with one slice when ``spatial_dims=2``, → ``[1, H, W]`` (the one-slice axis removed after
    reorientation). Trailing length-1 axes beyond the third are dropped; 4D data with several volumes (time
    points, echoes, diffusion directions) and CIFTI-2 files are refused.
    """
    import nibabel as nib
    from nibabel.brikhead import AFNIHeaderError, AFNIImageError
    from nibabel.filebasedimages import ImageFileError
    from nibabel.parrec import PARRECError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    errors: tuple[type[BaseException], ...] = (
        ImageFileError,
        PARRECError,
        AFNIHeaderError,
        AFNIImageError,
        HeaderDataError,
        WrapStructError,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        zlib.error,
        struct.error,
        MemoryError,
    )
    kind = {".mgh": "MGH", ".mgz": "MGZ", ".mnc": "MINC", ".par": "PAR/REC", ".head": "AFNI"}.get(
        suffix_of(path), "NIfTI" if suffix_of(path) in (".nii", ".nii.gz") else "Analyze/NIfTI pair"
    )
    try:
        with _quiet(path):
            img = nib.load(str(path), mmap=False)
    except ModuleNotFoundError as exc:  # MINC2 needs h5py
        raise InputError(f"cannot read {kind} file: optional package {exc.name!r} is missing", path) from exc
    except errors as exc:
        raise _corrupt(kind, path, exc) from exc
    if type(img).__name__.startswith("Cifti2"):
        raise NoImageData("CIFTI-2 file (grayordinate matrix over surfaces, not an image volume)", path)
    _check_claimed_size(img, path, kind)
    try:
        with _quiet(path):
            arr = np.asarray(np.asanyarray(img.dataobj))
            zooms = tuple(float(z) for z in img.header.get_zooms())
            affine = None if img.affine is None else np.asarray(img.affine, dtype=np.float64)
    except errors as exc:
        raise _corrupt(kind, path, exc) from exc
    shape = tuple(int(s) for s in arr.shape)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:
        raise InputError(
            f"{len(shape)}D {kind} {shape}: {int(np.prod(shape[3:]))} volumes (time points, echoes or "
            "directions) in one file; memscan reads one 3D volume per file (split it first)",
            path,
        )
    if arr.ndim < 2:
        raise InputError(f"{len(shape)}D {kind} {shape} where a 2D image or 3D volume is expected", path)
    if np.iscomplexobj(arr):
        raise InputError(f"complex-valued {kind} data; memscan reads real magnitudes only", path)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != np.float32:
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)  # beyond float32's range → inf, refused by _validate
    two_d = arr.ndim == 2
    if two_d:
        arr = arr[..., None]
    spacing = zooms[:3] if len(zooms) >= 3 else (*zooms[:2], 1.0) if len(zooms) == 2 else None
    if affine is not None and _has_orientation(img):
        data = _to_canonical(arr[None], affine, spacing, path)
    else:
        data = ImageData(array=arr[None], spatial_dims=3, path=path, spacing=spacing)
    if two_d or (spatial_dims == 2 and 1 in data.array.shape[1:]):
        flat = [i for i in range(3) if data.array.shape[1 + i] == 1]
        if flat:
            keep = [i for i in range(3) if i != flat[0]]
            squeezed = np.squeeze(data.array, axis=1 + flat[0])
            sp = tuple(data.spacing[i] for i in keep) if data.spacing else None
            return dataclasses.replace(data, array=squeezed, spatial_dims=2, spacing=sp)
    return data


DEFLATE_MAX_RATIO = 1032
"""Deflate's largest expansion: one 258-byte match coded in ~2 bits, i.e. at most ~1032 output bytes per
input byte (zlib's technical notes, "Maximum compression factor"). A gzip file of ``n`` bytes therefore
decompresses to at most ``1032 * n`` bytes, whatever its header says."""

_COUNT_CHUNK = 1 << 20

COUNT_ABOVE = 256 * 2**20
"""Claims above this many bytes are checked by inflating and counting the stream; smaller claims only
against deflate's bound. Counting costs about as much as the read itself (~110 ms for a 17 MiB BraTS
volume, ``benchmarks/hostile_header_cost.py``), while a lie below this size can make memscan allocate at
most this much before the short stream fails the read."""


def _gzip_holds(path: Path, need: int) -> int:
    """Decompressed bytes of the gzip file ``path``, counted up to ``need`` (nothing is kept).

    The stream is fed to :func:`zlib.decompressobj` 64 KiB at a time with at most 1 MiB of output per
    call, so memory stays at one piece; concatenated gzip members are followed. Returns ``need`` as soon
    as that many bytes are seen, else the smaller total up to the end of the stream or its first damage.
    """
    bound = DEFLATE_MAX_RATIO * path.stat().st_size
    if need > bound:
        return bound  # cannot hold it, by deflate's bound: nothing to read
    seen = 0
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as fh:
            pending = b""
            while seen < need:
                if not pending:
                    pending = fh.read(1 << 16)
                    if not pending:
                        break
                seen += len(inflate.decompress(pending, _COUNT_CHUNK))
                pending = inflate.unconsumed_tail
                if inflate.eof:  # the next gzip member, if any
                    pending, inflate = inflate.unused_data, zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    except zlib.error:
        pass  # damaged: it holds what was inflated before the damage
    return min(seen, need)


def _data_file(img: Any, path: Path) -> Path:
    """The file that holds the voxels: the image itself, or the ``.img[.gz]``/``.BRIK[.gz]`` of a pair."""
    try:
        holder = img.file_map["image"]
        name = holder.filename
    except (AttributeError, KeyError, TypeError):
        return path
    return Path(name) if name else path


def _check_claimed_size(img: Any, path: Path, kind: str = "image") -> None:
    """Refuse a header whose claimed voxel count the file cannot hold, before any array is allocated.

    Uncompressed data: the file size minus the data offset must cover the claim. Gzip-compressed data
    (``.nii.gz``, ``.mgz``, ``.img.gz``, ``.BRIK.gz``): first deflate's ratio bound (instant); then, for
    claims above :data:`COUNT_ABOVE`, the stream is inflated and counted in 1 MiB pieces up to the claim
    (:func:`_gzip_holds`), so a 416-byte file claiming 1000³ voxels fails at once and a larger liar fails
    without the allocation.
    """
    try:
        shape = tuple(int(s) for s in img.shape)
        itemsize = int(np.dtype(img.get_data_dtype()).itemsize)
    except (AttributeError, TypeError, ValueError):
        return
    claimed = int(np.prod(shape, dtype=np.float64)) * itemsize
    if claimed <= 0:
        return
    data = _data_file(img, path)
    try:
        offset = int(img.header.get_data_offset()) if hasattr(img.header, "get_data_offset") else 0
    except (TypeError, ValueError, AttributeError):
        offset = 0
    if data == path and suffix_of(path) not in (".nii", ".nii.gz", ".mgh", ".mgz"):
        return  # MINC (HDF5/NetCDF containers): the library checks its own layout
    need = offset + claimed  # the header's data offset is into the data file (pairs included)
    if not data.is_file():
        return  # a missing companion is reported by the reader
    name = data.name.lower()
    if name.endswith((".gz", ".mgz")):
        bound = DEFLATE_MAX_RATIO * data.stat().st_size
        if need <= bound and claimed <= COUNT_ABOVE:
            return
        held = _gzip_holds(data, need)
        if held < need:
            raise InputError(
                f"cannot read {kind} file: header claims {shape} "
                f"voxels ({claimed} bytes) but the compressed stream holds "
                f"{'at most' if held == DEFLATE_MAX_RATIO * data.stat().st_size else 'only'} "
                f"{max(0, held - (need - claimed))} bytes of data (truncated or a lying header)",
                path,
            )
        return
    size = data.stat().st_size
    if size < need:
        raise InputError(
            f"cannot read {kind} file: header claims {shape} voxels ({claimed} bytes) but the file holds "
            f"{max(0, size - (need - claimed))} bytes of data (truncated or a lying header)",
            path,
        )


# ------------------------------------------------------------------------------------------- NPY / NPZ

MAX_STACK_CHANNELS = 8
"""The largest channel count of an ``N×C×H×W`` image stack (a larger second axis is ambiguous)."""

ARRAY_RULE = (
    "array files: H×W is one image; N×H×W is N grey images; N×C×H×W (C ≤ 8) is N images of C channels; "
    "with --volumes: X×Y×Z is one volume, N×X×Y×Z is N volumes, N×C×X×Y×Z is N volumes of C channels"
)
"""How a NumPy array file is read (the README's array-file rule)."""


def _load_array(path: Path) -> np.ndarray:
    """The array of an NPY file, or of an NPZ holding one array (or one named ``image``/``arr_0``)."""
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
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if kind == "NPY" else None)
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
                return np.asarray(loaded[key])
        return np.array(loaded)  # read fully now: a truncated file fails here, not later
    except InputError:
        raise
    except errors as exc:
        raise _corrupt(kind, path, exc) from exc


def read_array_stack(path: Path, *, volumes: bool = False) -> ImageData:
    """Read an NPY/NPZ array file by the documented array-file rule (:data:`ARRAY_RULE`).

    Without ``volumes``: ``H×W`` → one image ``[1, H, W]``; ``N×H×W`` → a stack ``[N, 1, H, W]``;
    ``N×C×H×W`` with ``C ≤ 8`` → a stack ``[N, C, H, W]``. With ``volumes``: ``X×Y×Z`` → one volume
    ``[1, X, Y, Z]``; ``N×X×Y×Z`` → a stack ``[N, 1, X, Y, Z]``; ``N×C×X×Y×Z`` → ``[N, C, X, Y, Z]``.
    Volumes from array files carry no orientation: they are kept as stored (``frame`` None).

    Args:
        path: the ``.npy`` or ``.npz`` file.
        volumes: read 3D+ arrays as volumes (``--volumes``) instead of stacks of 2D images.

    Returns:
        One image/volume (``stack`` False) or a stack of N items (``stack`` True, ``array [N, C, *S]``).

    Raises:
        InputError: unreadable file, or an array the rule does not cover (the message states the rule).
    """
    arr = _load_array(path)
    shape = tuple(int(s) for s in arr.shape)
    kind = "NPZ" if suffix_of(path) == ".npz" else "NPY"

    def refuse(why: str) -> InputError:
        return InputError(f"{kind} array of shape {shape} {why}; the rule for {ARRAY_RULE}", path)

    if arr.ndim == 2:
        return ImageData(array=arr[None], spatial_dims=2, path=path)
    if not volumes:
        if arr.ndim == 3:
            if shape[2] in (3, 4) and min(shape[:2]) > 4:
                raise refuse("looks like one H×W×C colour image (channels last); save it as C×H×W in a stack")
            return ImageData(array=arr[:, None], spatial_dims=2, path=path, stack=True)
        if arr.ndim == 4:
            if shape[1] > MAX_STACK_CHANNELS:
                hint = "is channels-last (N×H×W×C)" if shape[3] in (1, 3, 4) else "holds volumes"
                raise refuse(
                    f"is ambiguous (second axis {shape[1]} > {MAX_STACK_CHANNELS} channels: "
                    f"perhaps it {hint})"
                )
            return ImageData(array=arr, spatial_dims=2, path=path, stack=True)
        raise refuse("is not an image or an image stack (5D needs --volumes)")
    if arr.ndim == 3:
        return ImageData(array=arr[None], spatial_dims=3, path=path)
    if arr.ndim == 4:
        return ImageData(array=arr[:, None], spatial_dims=3, path=path, stack=True)
    if arr.ndim == 5:
        if shape[1] > MAX_STACK_CHANNELS:
            raise refuse(f"is ambiguous (second axis {shape[1]} > {MAX_STACK_CHANNELS} channels)")
        return ImageData(array=arr, spatial_dims=3, path=path, stack=True)
    raise refuse("has an unsupported number of axes")
