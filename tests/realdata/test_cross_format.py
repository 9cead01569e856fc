"""The same real volume as a DICOM series and as its NIfTI conversion gives the same slices, slice for slice.

The volume is nibabel's real MR test image ``anatomical.nii`` (stored LAS). It is written out as an axial
DICOM series the way a scanner stores one (each image ``[rows, cols]`` = posterior, left; ImagePositionPatient
and ImageOrientationPatient per slice; files in a shuffled order), and that series is converted back to a
NIfTI file the way dcm2niix does (read with pydicom, slices sorted along the normal, affine from the DICOM
geometry, stored LAS: each NIfTI axial plane is the DICOM image transposed and flipped). memscan must
give identical slices with identical indices for both, and a left-right mirrored copy must be found as
``flip`` through ``memscan prepare`` + ``memscan scan --flips``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from memscan.io.readers import read_image
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
pytestmark = pytest.mark.skipif(not ANATOMICAL.exists(), reason="nibabel's anatomical.nii is not installed")


def write_axial_series(img: nib.Nifti1Image, folder: Path) -> np.ndarray:
    """Write ``img`` as an axial DICOM series (IOP 1,0,0,0,1,0); return its stack ``[rows, cols, k]``."""
    ras = nib.as_closest_canonical(img)
    data = np.asanyarray(ras.dataobj).astype(np.int16)  # [R, A, S] index order
    aff = ras.affine
    nx, ny, nz = data.shape
    dx, dy, dz = (float(z) for z in ras.header.get_zooms()[:3])
    # DICOM image pixel [r, c]: r toward posterior, c toward the patient's left (LPS+ row/column cosines).
    stack = data[::-1, ::-1, :].transpose(1, 0, 2)  # [P, L, S]
    folder.mkdir(parents=True)
    series = generate_uid()
    order = list(range(nz))
    random.Random(7).shuffle(order)
    for n, k in enumerate(order):
        corner_ras = aff @ np.array([nx - 1, ny - 1, k, 1.0])  # voxel at row 0, column 0 of slice k
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = n + 1  # deliberately not the anatomical order
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(-corner_ras[0]), float(-corner_ras[1]), float(corner_ras[2])]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = stack.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(stack[:, :, k]).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{n:04d}", enforce_file_format=True)  # extensionless, as on scanners
    return stack


def convert_series_to_nifti(folder: Path, out: Path) -> nib.Nifti1Image:
    """A dcm2niix-like conversion, independent of memscan: pydicom + the DICOM geometry → a LAS NIfTI."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    vol = np.stack([ds.pixel_array for ds in datasets], axis=-1)  # [rows, cols, slices]
    first = np.asarray(datasets[0].ImagePositionPatient, dtype=float)
    last = np.asarray(datasets[-1].ImagePositionPatient, dtype=float)
    dr, dc = (float(v) for v in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[3:] * dr
    lps[:3, 1] = iop[:3] * dc
    lps[:3, 2] = (last - first) / (len(datasets) - 1)
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1, 1, 1]) @ lps
    # Store LAS like dcm2niix: permute/flip the array and fix the affine with nibabel's tools.
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "A", "S")))
    las = apply_orientation(vol, transform)
    las_affine = affine @ inv_ornt_aff(transform, vol.shape)
    img = nib.Nifti1Image(las, las_affine)
    img.set_qform(las_affine, code=1)
    img.set_sform(las_affine, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return img


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    stack = write_axial_series(nib.load(str(ANATOMICAL)), root / "dicom" / "series")
    nifti = convert_series_to_nifti(root / "dicom" / "series", root / "nifti" / "series.nii.gz")
    return root, stack, nifti


def test_conversion_really_differs_in_layout(converted):
    """Guard: the two files store the slices differently, so equal slices below are not a tautology."""
    _, stack, nifti = converted
    assert nib.aff2axcodes(nifti.affine) == ("L", "A", "S")
    stored = np.asanyarray(nifti.dataobj)
    assert stored.shape[:2] == stack.shape[1::-1]  # transposed in-plane
    assert not np.array_equal(stored[:, :, 10], stack[:, :, 10].T)  # and flipped
    np.testing.assert_array_equal(stored[:, ::-1, 10], stack[:, :, 10].T)


def test_readers_agree_with_the_dicom_display(converted):
    root, stack, _ = converted
    series = read_image(root / "dicom" / "series")
    volume = read_image(root / "nifti" / "series.nii.gz")
    assert series.frame == volume.frame == "PLS"
    assert series.source_frame == "PLS" and volume.source_frame == "LAS"
    np.testing.assert_array_equal(series.array[0], stack)  # axial DICOM images are already PLS
    np.testing.assert_array_equal(volume.array[0], stack)
    np.testing.assert_allclose(series.spacing, volume.spacing)


@pytest.mark.parametrize("axis", ["z", "x", "y"])
def test_prepared_slices_match_slice_for_slice(converted, tmp_path, axis):
    root, _, _ = converted
    opts = PrepareOptions(layout="folder", axis=axis)
    a = prepare_dataset(root / "dicom", tmp_path / "a", opts)
    b = prepare_dataset(root / "nifti", tmp_path / "b", opts)
    assert a.n_items == b.n_items > 10
    assert list(a.manifest["slice_index"]) == list(b.manifest["slice_index"])
    np.testing.assert_array_equal(a.read(0, a.n_items), b.read(0, b.n_items))
    info = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert info["orientation"]["frame"] == "PLS" and info["orientation"]["volumes_reoriented_from"] == {
        "LAS": 1
    }


def test_axial_slice_is_in_radiological_display(converted, tmp_path):
    """Slice k of the prepared data is DICOM image k as a viewer shows it (rows posterior-ward, columns
    toward the patient's left); a coronal slice has superior at the top."""
    root, stack, _ = converted
    ds = prepare_dataset(root / "nifti", tmp_path / "z", PrepareOptions(layout="folder"))
    k = 12
    row = ds.manifest.index[ds.manifest["slice_index"] == k][0]
    np.testing.assert_array_equal(ds.read(row, row + 1)[0, 0], stack[:, :, k])
    cor = prepare_dataset(root / "nifti", tmp_path / "x", PrepareOptions(layout="folder", axis="x"))
    j = 20
    row = cor.manifest.index[cor.manifest["slice_index"] == j][0]
    np.testing.assert_array_equal(cor.read(row, row + 1)[0, 0], stack[j, :, ::-1].T)


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memscan", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_left_right_mirrored_copy_is_found_as_flip(converted, tmp_path):
    """A NIfTI whose patient is mirrored left-right (data reversed along the file's L axis, same affine) is
    a copy of the DICOM series found with transform ``flip`` at the right slice index; without --flips the
    same copy is not exact."""
    root, _, nifti = converted
    mirrored = tmp_path / "synthetic" / "mirrored.nii.gz"
    mirrored.parent.mkdir()
    data = np.asanyarray(nifti.dataobj)[::-1, :, :]  # LAS: axis 0 is left-right
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), nifti.affine, nifti.header), str(mirrored))
    r = _cli("prepare", root / "dicom", "--out", tmp_path / "train", "--slice-range", "8:16")
    assert r.returncode == 0, r.stderr
    r = _cli("prepare", mirrored.parent, "--out", tmp_path / "syn", "--slice-range", "8:16")
    assert r.returncode == 0, r.stderr
    r = _cli(
        "scan", tmp_path / "train", tmp_path / "syn", "--out", tmp_path / "run", "--flips", "--no-report"
    )
    assert r.returncode == 0, r.stderr
    syn = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert len(syn) == 8
    assert (syn["transform"] == "flip").all() and syn["flagged"].all()
    np.testing.assert_allclose(syn["max_correlation"], 1.0, atol=1e-9)
    index = syn["synthetic_id"].str.extract(r"#z(\d+)$")[0]
    assert (syn["nearest_train_id"] == "series#z" + index).all()
    r = _cli("scan", tmp_path / "train", tmp_path / "syn", "--out", tmp_path / "run2", "--no-report")
    assert r.returncode == 0, r.stderr
    plain = pd.read_parquet(tmp_path / "run2" / "synthetic.parquet")
    assert (plain["transform"] == "none").all() and (plain["max_correlation"] < 0.99).all()


def test_mirrored_volume_is_found_as_flip_in_3d(converted, tmp_path):
    """Whole volumes (--volumes): the anatomically mirrored NIfTI matches the DICOM series with ``flip``."""
    root, _, nifti = converted
    mirrored = tmp_path / "synthetic" / "mirrored.nii.gz"
    mirrored.parent.mkdir()
    data = np.asanyarray(nifti.dataobj)[::-1, :, :]  # LAS: axis 0 is left-right
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), nifti.affine, nifti.header), str(mirrored))
    prepare_dataset(root / "dicom", tmp_path / "train", PrepareOptions(volumes=True))
    prepare_dataset(mirrored.parent, tmp_path / "syn", PrepareOptions(volumes=True))
    r = _cli(
        "scan",
        tmp_path / "train",
        tmp_path / "syn",
        "--out",
        tmp_path / "run",
        "--flips",
        "--top-k",
        "1",
        "--no-report",
    )
    assert r.returncode == 0, r.stderr
    syn = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert syn["transform"].tolist() == ["flip"] and syn["nearest_train_id"].tolist() == ["series"]
    np.testing.assert_allclose(syn["max_correlation"], 1.0, atol=1e-9)
