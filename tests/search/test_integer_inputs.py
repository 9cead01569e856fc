"""Files on disk → ``prepare`` (generic recipe) → ``scan``: 8-bit sources are stored as uint8 and 16-bit
sources as 16-bit integers, values equal to the source, and the scan takes the exact integer paths with
the float64 brute force's top-k."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_engine import reference_topk

from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.io.readers import read_image
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import scan


def _scan_and_check(train: Dataset, syn: Dataset, out: Path, precision: str) -> None:
    res = scan(train.path, syn.path, out, ScanOptions(top_k=3, baseline_items=0), report=False)
    assert res.summary["precision"] == precision
    t = train.read(0, train.n_items).reshape(train.n_items, -1)
    q = syn.read(0, syn.n_items).reshape(syn.n_items, -1)
    ref_v, ref_i = reference_topk(q, t, 3)
    m = res.matches.sort_values(["synthetic_id", "rank"])
    pos = {tid: i for i, tid in enumerate(train.ids)}
    for row, sid in enumerate(syn.ids):
        got = m[m["synthetic_id"] == sid]
        assert [pos[x] for x in got["train_id"]] == list(ref_i[row])
        np.testing.assert_allclose(got["correlation"].to_numpy(), ref_v[row], atol=1e-12, rtol=0)


def test_8bit_png_and_dicom_are_stored_as_uint8_and_scanned_exactly(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    src, syn_src = tmp_path / "train_src", tmp_path / "syn_src"
    src.mkdir()
    syn_src.mkdir()
    base = rng.integers(0, 256, size=(12, 40, 40), dtype=np.uint8)
    for i, img in enumerate(base):
        Image.fromarray(img).save(src / f"img_{i:02d}.png")
    for i in (2, 7):
        noisy = np.clip(base[i].astype(int) + rng.integers(-3, 4, size=(40, 40)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(syn_src / f"sample_{i}.png")
    Image.fromarray(rng.integers(0, 256, size=(40, 40), dtype=np.uint8)).save(syn_src / "sample_x.png")
    train = prepare_dataset(src, tmp_path / "train")
    syn = prepare_dataset(syn_src, tmp_path / "syn")
    assert train.dtype == np.uint8 and syn.dtype == np.uint8
    stored = {i: train.read(n, n + 1)[0, 0] for n, i in enumerate(train.ids)}
    for i, img in enumerate(base):
        np.testing.assert_array_equal(stored[f"img_{i:02d}.png"], img)
    _scan_and_check(train, syn, tmp_path / "run", "int8")
    # an 8-bit RGB DICOM (pydicom's test data) is stored as uint8 too, values as read
    dcm = tmp_path / "dcm"
    dcm.mkdir()
    shutil.copy(get_testdata_file("SC_rgb.dcm"), dcm / "rgb.dcm")
    ds = prepare_dataset(dcm, tmp_path / "dcm_ds")
    assert ds.dtype == np.uint8
    np.testing.assert_array_equal(
        np.sort(ds.read(0, 1).ravel()), np.sort(read_image(dcm / "rgb.dcm").array.ravel())
    )


def test_16bit_nifti_and_dicom_are_stored_as_int16_and_scanned_exactly(tmp_path: Path) -> None:
    import nibabel as nib
    import nibabel.testing
    from pydicom.data import get_testdata_file

    # nibabel's anatomical.nii: big-endian int16, 33 x 41 x 25 (sliced along z: 25 items)
    src = tmp_path / "nifti"
    src.mkdir()
    shutil.copy(os.path.join(nibabel.testing.data_path, "anatomical.nii"), src / "anat.nii")
    train = prepare_dataset(src, tmp_path / "train")
    assert train.dtype == np.int16 and train.n_items <= 25
    vol = np.asarray(nib.load(str(src / "anat.nii")).dataobj)
    # every stored slice holds exactly the values of one of the volume's slices (compared as sorted values:
    # prepare may reorient volumes into one anatomical frame, which permutes but never changes values)
    planes = [np.sort(np.take(vol, i, axis=a).ravel()) for a in range(3) for i in range(vol.shape[a])]
    for n in range(train.n_items):
        stored = np.sort(train.read(n, n + 1).ravel())
        assert any(p.shape == stored.shape and np.array_equal(p, stored) for p in planes)
    # synthetic: slices of the same volume with noise, as int16 NIfTI
    rng = np.random.default_rng(1)
    syn_src = tmp_path / "syn_src"
    syn_src.mkdir()
    pick = vol[:, :, 8:14].astype(np.int32) + rng.integers(-2, 3, size=vol[:, :, 8:14].shape)
    nib.save(nib.Nifti1Image(pick.astype(np.int16), np.eye(4)), str(syn_src / "syn.nii.gz"))
    syn = prepare_dataset(syn_src, tmp_path / "syn")
    assert syn.dtype == np.int16
    _scan_and_check(train, syn, tmp_path / "run", "int16")
    # pydicom's MR_small.dcm: signed 16-bit without a rescale, stored as int16 with the file's values
    dcm = tmp_path / "dcm"
    dcm.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), dcm / "mr.dcm")
    ds = prepare_dataset(dcm, tmp_path / "dcm_ds")
    assert ds.dtype == np.int16
    np.testing.assert_array_equal(
        np.sort(ds.read(0, 1).ravel()), np.sort(read_image(dcm / "mr.dcm").array.ravel())
    )


def test_uint16_png_stays_uint16_and_resizing_rounds(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    img = (np.arange(30 * 30, dtype=np.uint16).reshape(30, 30) * 70).astype(np.uint16)
    Image.fromarray(img).save(src / "a.png")
    ds = prepare_dataset(src, tmp_path / "ds")
    assert ds.dtype == np.uint16
    np.testing.assert_array_equal(ds.read(0, 1)[0, 0], img)
    small = prepare_dataset(src, tmp_path / "small", PrepareOptions(size=16))
    assert small.dtype == np.uint16
    ref = np.asarray(Image.fromarray(img.astype(np.float32)).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small.read(0, 1)[0, 0], np.rint(ref).astype(np.uint16))


def test_mixed_bit_depths_are_refused_not_wrapped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(src / "a.png")
    Image.fromarray((np.arange(64, dtype=np.uint16) * 900).reshape(8, 8)).save(src / "b.png")
    with pytest.raises(InputError, match="bit depth"):
        prepare_dataset(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
