"""DICOM Rescale Slope/Intercept (CT): the stored integers are kept and the rescale is recorded.

Real files from pydicom's test data (CT_small.dcm, the enhanced CT eCT_Supplemental.dcm), copies of them
with other rescales, and a series folder prepared and scanned the way a user works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from memscan.io.readers import read_dicom_series, read_image


def _ct(
    tmp_path: Path,
    name: str,
    *,
    slope: str | None = None,
    intercept: str | None = None,
    shift: int = 0,
    position: float | None = None,
    series: str | None = None,
) -> Path:
    """A copy of CT_small.dcm with another rescale, rolled pixels, slice position or series UID."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if shift:
        ds.PixelData = np.roll(ds.pixel_array, shift, axis=1).astype(ds.pixel_array.dtype).tobytes()
    if position is not None:
        ds.ImagePositionPatient = [0.0, 0.0, position]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SOPInstanceUID = generate_uid()
    if series is not None:
        ds.SeriesInstanceUID = series
    path = tmp_path / name
    ds.save_as(path)
    return path


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_ct_small_keeps_stored_integers_and_records_rescale() -> None:
    path = get_testdata_file("CT_small.dcm")
    ref = pydicom.dcmread(path)
    data = read_image(path, spatial_dims=2)
    assert data.array.dtype == np.int16 and data.array.shape == (1, 128, 128)
    np.testing.assert_array_equal(data.array[0], ref.pixel_array)  # values unchanged
    assert data.rescale == (1.0, -1024.0)
    np.testing.assert_array_equal(data.modality_values()[0], apply_modality_lut(ref.pixel_array, ref))
    assert float(data.modality_values().min()) < 0  # Hounsfield units


def test_enhanced_ct_shared_rescale_keeps_integers() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    ref = pydicom.dcmread(path)
    data = read_image(path)
    assert data.spatial_dims == 3 and data.array.dtype == ref.pixel_array.dtype == np.uint16
    assert data.rescale == (1.0, -1024.0)  # the shared functional group's Pixel Value Transformation
    assert sorted(data.array.ravel().tolist()) == sorted(ref.pixel_array.ravel().tolist())
    hu = data.modality_values()
    assert float(hu.min()) == float(ref.pixel_array.min()) - 1024.0


def test_negative_slope_is_made_positive_and_keeps_every_correlation(tmp_path: Path) -> None:
    a = read_image(_ct(tmp_path, "neg.dcm", slope="-2.5", intercept="100"))
    ref = pydicom.dcmread(tmp_path / "neg.dcm")
    stored = ref.pixel_array
    assert a.array.dtype == np.int16
    np.testing.assert_array_equal(a.array[0], -stored.astype(np.int32) - 1)  # ~x, no overflow
    assert a.rescale == (2.5, 102.5)
    np.testing.assert_allclose(a.modality_values()[0], apply_modality_lut(stored, ref), rtol=0, atol=1e-9)
    # the correlation of the kept values with any image equals that of the Hounsfield units (sign included)
    b = read_image(_ct(tmp_path, "pos.dcm", shift=3))
    hu_a, hu_b = apply_modality_lut(stored, ref), b.modality_values()[0]
    assert _corr(a.array[0], b.array[0]) == pytest.approx(_corr(hu_a, hu_b), abs=1e-12)
    assert _corr(a.array[0], b.array[0]) < 0  # the HU image is the stored one reversed


def test_int16_extremes_under_negative_slope_do_not_overflow(tmp_path: Path) -> None:
    path = _ct(tmp_path, "x.dcm", slope="-1", intercept="0")
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.copy()
    px[0, :2] = [-32768, 32767]
    ds.PixelData = px.tobytes()
    ds.save_as(path)
    data = read_image(path)
    np.testing.assert_array_equal(data.modality_values()[0], -px.astype(np.float64))


def test_modality_lut_sequence_and_zero_slope_still_applied(tmp_path: Path) -> None:
    data = read_image(_ct(tmp_path, "z.dcm", slope="0", intercept="5"))
    assert data.array.dtype == np.float32 and data.rescale is None
    assert np.all(data.array == 5.0)


def test_series_one_rescale_stays_integer_mixed_rescales_float(tmp_path: Path) -> None:
    same, mixed = tmp_path / "same", tmp_path / "mixed"
    same.mkdir()
    mixed.mkdir()
    uid_s, uid_m = generate_uid(), generate_uid()
    for i in range(3):
        _ct(same, f"s{i}.dcm", shift=i, position=float(i), series=uid_s)
        _ct(mixed, f"m{i}.dcm", shift=i, position=float(i), series=uid_m, slope=str(1 + i))
    vol = read_dicom_series(same)
    assert vol.array.dtype == np.int16 and vol.rescale == (1.0, -1024.0)
    vol_m = read_dicom_series(mixed)
    assert vol_m.array.dtype == np.float32 and vol_m.rescale is None
    # the same voxels as the integer volume, each slice under its own rescale
    for i in range(3):
        z = [k for k in range(3) if np.array_equal(vol.array[0, ..., k], vol.array[0, ..., i])][0]
        assert z == i
    assert sorted(np.unique(vol_m.array[0, ..., 2] + 1024.0) / 3.0) == pytest.approx(
        sorted(np.unique(vol.array[0, ..., 2].astype(np.float64)))
    )


def test_ct_folder_prepared_as_int16_and_scanned_exactly(tmp_path: Path) -> None:
    """A user's CT folder → prepare → scan: int16 storage, the exact 16-bit path, correlations of the HU."""
    from memscan.preprocess.prepare import prepare_dataset
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan

    train, syn = tmp_path / "train", tmp_path / "syn"
    train.mkdir()
    syn.mkdir()
    for i in range(4):
        _ct(train, f"t{i}.dcm", shift=7 * i, slope="-1" if i == 2 else "1", series=generate_uid())
    _ct(syn, "s0.dcm", shift=14, slope="-1", intercept="50")  # = train 2 in HU up to an affine map
    tr = prepare_dataset(train, tmp_path / "tr_ds")
    sy = prepare_dataset(syn, tmp_path / "sy_ds")
    assert tr.dtype == np.int16 and sy.dtype == np.int16
    opts = ScanOptions(top_k=4, baseline_items=0)
    res = scan(tmp_path / "tr_ds", tmp_path / "sy_ds", tmp_path / "run", opts)
    assert res.summary["precision"] == "int16"
    best = res.matches.sort_values("rank").iloc[0]
    assert best["train_id"] == tr.ids[2] and best["correlation"] == pytest.approx(1.0, abs=1e-12)
    # every value equals the float64 correlation of the Hounsfield-unit images
    hu_q = read_image(syn / "s0.dcm").modality_values()
    for tid, corr in res.matches[["train_id", "correlation"]].itertuples(index=False):
        j = list(tr.ids).index(tid)
        hu_t = read_image(train / f"t{j}.dcm").modality_values()
        assert corr == pytest.approx(_corr(hu_q, hu_t), abs=1e-9)
