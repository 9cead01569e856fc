"""Every file that ships with pydicom's and pydicom-data's test files and nibabel's test data is either read
with values equal to a reference reader (after memscan's documented orientation) or refused with one line
that names the file and the reason. No traceback, no silent drop.

References, written here independently of memscan's readers:

- DICOM: pydicom's ``pixel_array`` (same decoder plugins), pydicom's ``apply_modality_lut`` or the
  enhanced per-frame Pixel Value Transformation by hand, MONOCHROME1 inverted as ``max + min - x``,
  palette colour through ``apply_color_lut``; a multi-frame object with plane positions sorted along the
  slice normal and reoriented with nibabel's orientation tools from an affine computed here.
- nibabel formats: nibabel's ``as_closest_canonical`` (RAS+) turned to PLS by hand (swap the first two axes,
  reverse both), or the stored array when the file has no orientation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from memscan.errors import InputError
from memscan.io.readers import read_image

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _files() -> list[Path]:
    found = [Path(p) for p in get_testdata_files()]
    if NIBABEL_DATA.is_dir():
        found += sorted(p for p in NIBABEL_DATA.iterdir() if p.is_file())
    return sorted(set(found))


FILES = _files()

# One file per compressed transfer syntax that must decode with the declared decoder packages (pylibjpeg +
# libjpeg/openjpeg/rle, python-gdcm): JPEG Lossless SV1, JPEG-LS lossless and near-lossless, JPEG
# Extended 12-bit (JPGExtended), JPEG 2000 lossless and lossy, RLE, JPEG baseline, deflate.
CODEC_FILES = (
    "JPEG-LL.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small_jp2klossless.dcm",
    "US1_J2KI.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg.dcm",
    "image_dfl.dcm",
)
_OUTCOMES: dict[str, str] = {}


def _id(path: Path) -> str:
    for root in (NIBABEL_DATA, Path(pydicom.__file__).parent / "data"):
        if path.is_relative_to(root):
            return f"{root.parent.name}/{path.relative_to(root)}"
    return f"{path.parent.name}/{path.name}"


# --------------------------------------------------------------------------------------------- references


def _frame_transform(ds, n_frames: int, i: int, seq: str):
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    item = groups[i].get(seq) if groups else None
    if not item:
        shared = ds.get("SharedFunctionalGroupsSequence")
        item = shared[0].get(seq) if shared else None
    return item[0] if item else None


def _dicom_reference(path: Path) -> tuple[np.ndarray, int]:
    """Pixels as memscan documents them (channels first), from pydicom directly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # no File Meta: decode as it was read
            implicit, little = ds.original_encoding
            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
        arr = np.asarray(ds.pixel_array)
    samples = int(ds.get("SamplesPerPixel") or 1)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr, samples = np.asarray(apply_color_lut(arr, ds))[..., :3], 3
    elif samples == 1:
        if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
            arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        else:
            ts = [
                _frame_transform(ds, n_frames, i, "PixelValueTransformationSequence") for i in range(n_frames)
            ]
            if any(t is not None and "RescaleSlope" in t for t in ts):
                frames = arr.reshape(n_frames, *arr.shape[-2:]).astype(np.float64)
                for i, t in enumerate(ts):
                    if t is not None and "RescaleSlope" in t:
                        frames[i] = frames[i] * float(t.RescaleSlope) + float(t.get("RescaleIntercept", 0))
                arr = frames.astype(np.float32).reshape(arr.shape)
        if photometric == "MONOCHROME1":
            lo, hi = arr.min(), arr.max()
            arr = (
                ((int(hi) + int(lo)) - arr.astype(np.int64)).astype(arr.dtype)
                if arr.dtype.kind in "iu"
                else (hi + lo - arr)
            )
    arr = arr[None] if samples == 1 else np.moveaxis(arr[..., :3], -1, 0)
    if n_frames > 1 and arr.ndim == 4:
        arr = np.moveaxis(arr, 1, -1)  # [C, rows, cols, frames]
        arr = _orient_frames(ds, arr, n_frames)
        return arr, 3
    if arr.ndim == 4:
        arr = arr[:, 0]
    return arr, 2


def _orient_frames(ds, arr: np.ndarray, n_frames: int) -> np.ndarray:
    """Frames sorted along the normal and reoriented to PLS when every frame has a plane position."""
    iops, ipps = [], []
    for i in range(n_frames):
        o = _frame_transform(ds, n_frames, i, "PlaneOrientationSequence")
        groups = ds.get("PerFrameFunctionalGroupsSequence")
        p = groups[i].get("PlanePositionSequence") if groups else None
        if o is None or not p or "ImageOrientationPatient" not in o or "ImagePositionPatient" not in p[0]:
            return arr
        iops.append([float(v) for v in o.ImageOrientationPatient])
        ipps.append([float(v) for v in p[0].ImagePositionPatient])
    return _orient(arr, iops, ipps)


def _orient(arr: np.ndarray, iops: list, ipps: list) -> np.ndarray:
    """``[C, rows, cols, n]`` sorted along the slice normal and reoriented to PLS (as is if degenerate)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    iop = np.asarray(iops[0])
    if not np.allclose(iops, iop, atol=1e-4):
        return arr
    normal = np.cross(iop[:3], iop[3:])
    dist = np.asarray(ipps) @ (normal / np.linalg.norm(normal))
    order = np.argsort(dist, kind="stable")
    if np.any(np.diff(dist[order]) < 1e-4):
        return arr
    arr = arr[..., order]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[3:], iop[:3]
    lps[:3, 2] = (np.asarray(ipps[order[-1]]) - np.asarray(ipps[order[0]])) / (len(ipps) - 1)
    ras = np.diag([-1.0, -1, 1, 1]) @ lps
    t = ornt_transform(io_orientation(ras), axcodes2ornt(("P", "L", "S")))
    return np.moveaxis(apply_orientation(np.moveaxis(arr, 0, -1), t), -1, 0)


def _series_reference(folder: Path) -> np.ndarray:
    """A DICOM series folder: every image file's modality-LUT pixels, sorted along the normal, in PLS."""
    slices, iops, ipps = [], [], []
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, force=True)
        if "PixelData" not in ds:
            continue
        slices.append(np.asarray(apply_modality_lut(ds.pixel_array, ds)))
        iops.append([float(v) for v in ds.ImageOrientationPatient])
        ipps.append([float(v) for v in ds.ImagePositionPatient])
    stack = np.stack(slices, axis=-1)[None]
    if any(s.dtype.kind == "f" for s in slices):
        stack = stack.astype(np.float32)
    return _orient(stack, iops, ipps)


def _nibabel_reference(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's notes on odd test files (e.g. minc2_baddim.mnc)
        return _nibabel_reference_loud(path)


def _nibabel_reference_loud(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    header = img.header
    oriented = (
        int(header.get_qform(coded=True)[1] or 0) > 0 or int(header.get_sform(coded=True)[1] or 0) > 0
        if hasattr(header, "get_sform")
        else type(img).__name__ not in ("AnalyzeImage",)
    )
    if not oriented:
        data = np.asanyarray(img.dataobj)
    else:
        ras = nib.as_closest_canonical(img)
        data = np.asanyarray(ras.dataobj)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        data = np.swapaxes(data, 0, 1)[::-1, ::-1]  # RAS -> PLS
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    return data[None]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return path.suffix.lower() == ".dcm" or head[128:132] == b"DICM"


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("path", FILES, ids=[_id(p) for p in FILES])
def test_installed_file_is_read_exactly_or_refused_in_one_line(path: Path) -> None:
    try:
        data = read_image(path)
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert str(path) in message, f"the refusal does not name the file: {message}"
        assert len(message) > len(str(path)) + 5, f"no reason given: {message}"
        _OUTCOMES[str(path)] = "refused"
        return
    _OUTCOMES[str(path)] = "read"
    if path.is_dir():
        ref, dims = _series_reference(path), 3
    elif _is_dicom(path):
        ref, dims = _dicom_reference(path)
    else:
        ref, dims = _nibabel_reference(path), data.spatial_dims
    assert data.spatial_dims == dims
    assert data.array.shape == ref.shape
    if data.rescale is not None:  # stored integers kept, the DICOM rescale recorded (readers' module notes)
        np.testing.assert_allclose(data.modality_values(), ref.astype(np.float64), rtol=1e-6, atol=1e-3)
    elif ref.dtype.kind == "f" or data.array.dtype.kind == "f":
        np.testing.assert_array_equal(
            data.array.astype(np.float64), ref.astype(np.float32).astype(np.float64)
        )
    else:
        np.testing.assert_array_equal(data.array, ref)


def test_enough_installed_files_are_read() -> None:
    """The sweep above must have read a real share of the files (not refused everything)."""
    outcomes = {p: o for p, o in _OUTCOMES.items()}
    if len(outcomes) < len(FILES):
        outcomes = {}
        for path in FILES:
            try:
                read_image(path)
                outcomes[str(path)] = "read"
            except InputError:
                outcomes[str(path)] = "refused"
    n_read = sum(o == "read" for o in outcomes.values())
    assert n_read >= 150, f"only {n_read} of {len(FILES)} installed files were read"
    for name in CODEC_FILES:
        hits = [o for p, o in outcomes.items() if os.path.basename(p) == name]
        assert hits and hits[0] == "read", f"{name} was not decoded"
