"""Inputs as they come: archives with image-less DICOM objects, stacks of samples in one array file, chest
x-ray DICOMs, NaN from resampling, pipes and unreadable folders — through ``memscan prepare`` and ``scan``
with real files from pydicom, pydicom-data and nibabel."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from memscan import phantoms
from memscan.errors import InputError
from memscan.io import layouts
from memscan.io.readers import read_image
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memscan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "400"},  # one log record per stderr line
    )


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def test_archive_skips_image_less_objects_with_one_warning(tmp_path: Path) -> None:
    src = tmp_path / "archive"
    (src / "study1").mkdir(parents=True)
    for name in ("MR_small.dcm", "MR_small_padded.dcm", "CT_small.dcm"):  # padded: pydicom warns on it
        shutil.copy(_testdata(name), src / "study1" / name)
    for name in ("rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"):
        shutil.copy(_testdata(name), src / "study1" / name)
    shutil.copy(_testdata("DICOMDIR"), src / "DICOMDIR")
    shutil.copy(NIBABEL_DATA / "row_major.dconn.nii", src / "row_major.dconn.nii")
    (src / "notes.txt").write_text("report")
    r = _cli("prepare", src, "--out", tmp_path / "ds", "--size", "64")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, r.stderr
    assert "6 file(s) skipped" in warnings[0] and "DICOM object without an image" in warnings[0]
    assert "excess" not in r.stderr and "pydicom" not in r.stderr  # pydicom's own warnings stay quiet
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    skipped = {s["source"]: s["reason"] for s in info["skipped"]}
    assert set(skipped) == {
        "DICOMDIR",
        "notes.txt",
        "row_major.dconn.nii",
        "study1/rtplan.dcm",
        "study1/test-SR.dcm",
        "study1/waveform_ecg.dcm",
    }
    assert "Media Storage Directory" in skipped["DICOMDIR"] and "RT Plan" in skipped["study1/rtplan.dcm"]
    assert "CIFTI-2" in skipped["row_major.dconn.nii"]
    assert info["n_items"] == 3


def test_stacked_npy_of_exact_copies_is_scanned_as_n_images(tmp_path: Path) -> None:
    """N x H x W samples in one .npy (N equal to W, the case that hid the bug): every copy flagged."""
    paths = phantoms.write_folder_tree(tmp_path / "train_raw", 8, seed=2, size=32, n_slices=4)
    assert len(paths) == 32
    r = _cli("--quiet", "prepare", tmp_path / "train_raw", "--out", tmp_path / "train")
    assert r.returncode == 0, r.stderr
    order = np.random.default_rng(0).permutation(len(paths))
    stack = np.stack([np.asarray(Image.open(paths[i]), dtype=np.float32) for i in order])  # [32, 32, 32]
    (tmp_path / "syn").mkdir()
    np.save(tmp_path / "syn" / "samples.npy", stack)
    r = _cli("--quiet", "prepare", tmp_path / "syn" / "samples.npy", "--out", tmp_path / "synds")
    assert r.returncode == 0, r.stderr
    r = _cli(
        "--quiet", "scan", tmp_path / "train", tmp_path / "synds", "--out", tmp_path / "run", "--no-report"
    )
    assert r.returncode == 0, r.stderr
    syn = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert len(syn) == 32 and syn["flagged"].all()
    expected = [paths[i].relative_to(tmp_path / "train_raw").as_posix() for i in order]
    got = syn.set_index("synthetic_id").loc[[f"samples.npy[{i}]" for i in range(32)], "nearest_train_id"]
    assert list(got) == expected


def test_cxr_layout_reads_dicom_radiographs(tmp_path: Path) -> None:
    """A real CR (pydicom-data RG1, MONOCHROME1, 16-bit) in the Kermany layout is read, and a copy of it is
    found with its patient id."""
    src = tmp_path / "chest_xray"
    phantoms.write_cxr_tree(src, 3, seed=1, size=64)
    shutil.copy(_testdata("RG1_UNCR.dcm"), src / "train" / "NORMAL" / "person901_cr_1.dcm")
    ds = prepare_dataset(src, tmp_path / "ds", PrepareOptions(layout="cxr"))
    row = ds.manifest[ds.manifest["id"] == "train/NORMAL/person901_cr_1.dcm"]
    assert len(row) == 1 and row["subject"].iloc[0] == "person901"
    item = ds.read(int(row.index[0]), int(row.index[0]) + 1)[0, 0]
    (tmp_path / "syn").mkdir()
    Image.fromarray(item).save(tmp_path / "syn" / "sample.png")
    r = _cli("--quiet", "scan", tmp_path / "ds", tmp_path / "syn", "--out", tmp_path / "run", "--no-report")
    assert r.returncode == 0, r.stderr
    syn = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert syn["flagged"].iloc[0] and syn["nearest_subject"].iloc[0] == "person901"


def test_nan_policy_on_spm_resampled_nifti(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nan_file = NIBABEL_DATA / "resampled_anat_moved.nii"
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(nan_file, src / "moved.nii")
    with pytest.raises(InputError, match=r"moved\.nii: contains 153 NaN values \(pass --nan zero"):
        prepare_dataset(src, tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="memscan"):
        ds = prepare_dataset(src, tmp_path / "b", PrepareOptions(nan="zero"))
    assert [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()] == [
        "read 153 NaN value(s) as 0 in 1 file(s) (--nan zero)"
    ]
    assert ds.info["nan"] == {"policy": "zero", "values_zeroed": 153, "files": 1}
    assert np.isfinite(ds.read(0, ds.n_items)).all()


def test_gzipped_dicom_reads_like_the_plain_file(tmp_path: Path) -> None:
    plain = _testdata("MR_small.dcm")
    packed = tmp_path / "MR_small.dcm.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_image(packed).array, read_image(plain).array)
    (tmp_path / "broken.dcm.gz").write_bytes(gzip.compress(plain.read_bytes())[:200])
    with pytest.raises(InputError, match="broken.dcm.gz"):
        read_image(tmp_path / "broken.dcm.gz")


def test_gzipped_dicom_bomb_is_refused_with_bounded_memory(tmp_path: Path, monkeypatch) -> None:
    """A .dcm.gz that inflates past the cap is refused, having held at most the cap in memory."""
    from memscan.io import readers

    monkeypatch.setattr(readers, "MAX_DICOM_GZ_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.dcm.gz"
    bomb.write_bytes(gzip.compress(b"\0" * (8 << 20)))  # 8 MiB of zeros in ~8 KiB
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(InputError, match=r"bomb.dcm.gz.*more than 1 MiB"):
        read_image(bomb)


@pytest.mark.timeout(60)
def test_fifo_named_png_never_hangs_prepare(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(src / "a.png")
    os.mkfifo(src / "x.png")
    ds = prepare_dataset(src, tmp_path / "ds")
    assert list(ds.ids) == ["a.png"]
    assert ds.info["skipped"] == [
        {"source": "x.png", "reason": "not a regular file (pipe, socket, device or broken link)"}
    ]
    with pytest.raises(InputError, match="not a regular file"):
        read_image(src / "x.png")


def test_unreadable_subfolder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "subj1").mkdir(parents=True)
    (src / "subj2").mkdir()
    for s in ("subj1", "subj2"):
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(src / s / "a.png")
    if os.geteuid() != 0:
        (src / "subj2").chmod(0)
    else:  # root reads every folder: make the listing fail as it does for a user without permission
        real_walk = os.walk

        def walk(top, onerror=None, **kw):
            for entry in real_walk(top, onerror=onerror, **kw):
                if Path(entry[0]).name == "subj2":
                    onerror(PermissionError(13, "Permission denied", entry[0]))
                yield entry

        monkeypatch.setattr(layouts.os, "walk", walk)
    try:
        with pytest.raises(InputError, match=r"subj2: cannot read folder \(Permission denied\)"):
            prepare_dataset(src, tmp_path / "ds")
    finally:
        (src / "subj2").chmod(0o755)


def test_lying_nifti_header_is_refused_before_allocating(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    path = tmp_path / "liar.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(open(path, "rb"))
    hdr.set_data_shape((1000, 1000, 1000))
    raw[: hdr.sizeof_hdr] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"header claims \(1000, 1000, 1000\) voxels"):
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_constant_first_image_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(src / "a_flat.png")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(src / "b.png")
    with caplog.at_level(logging.WARNING, logger="memscan"):
        ds = prepare_dataset(src, tmp_path / "ds")
    assert [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()] == [
        "excluded 1 constant item(s) (zero variance: correlation is undefined), e.g. a_flat.png; listed in "
        "dataset.json"
    ]
    assert ds.info["excluded"] == [
        {"id": "a_flat.png", "reason": "constant image (zero variance): correlation is undefined"}
    ]


def test_grey_and_rgb_mixed_does_not_suggest_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(src / "b.png")
    with pytest.raises(InputError, match=r"b\.png: image has 3 channel\(s\).*cannot be mixed") as exc:
        prepare_dataset(src, tmp_path / "ds", PrepareOptions(size=8))
    assert "--size" not in str(exc.value)


def test_float64_beyond_float32_in_npy_is_refused(tmp_path: Path) -> None:
    """One 1e300 in a float64 .npy would become inf at the float32 cast (a NaN correlation: a copy missed)."""
    arr = np.random.default_rng(0).random((4, 8, 8))
    arr[2, 3, 3] = 1e300
    np.save(tmp_path / "samples.npy", arr)
    with pytest.raises(InputError, match=r"samples\.npy: contains values beyond float32's range"):
        read_image(tmp_path / "samples.npy")


def test_huge_png_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memscan.io import readers

    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(readers, "MAX_PIXELS_2D", 100_000)  # 120,000 pixels: over this limit
    with pytest.raises(InputError, match=r"big\.png: image of 400x300 = 0 megapixels exceeds"):
        read_image(tmp_path / "big.png")


def _small_dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(src / f"s{i}.png")
    prepare_dataset(src, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.mark.parametrize("fault", ["duplicate id", "null subject", "index out of range"])
def test_damaged_manifest_is_refused_when_opened(tmp_path: Path, fault: str) -> None:
    from memscan.dataset.store import Dataset

    ds = _small_dataset(tmp_path)
    manifest = pd.read_parquet(ds / "manifest.parquet")
    if fault == "duplicate id":
        manifest.loc[1, "id"] = manifest.loc[0, "id"]
    elif fault == "null subject":
        manifest.loc[2, "subject"] = None
    else:
        manifest.loc[2, "index"] = 7
    manifest.to_parquet(ds / "manifest.parquet", index=False)
    with pytest.raises(InputError, match=r"ds: the dataset's manifest"):
        Dataset.open(ds)


def test_truncated_zarr_chunk_is_an_input_error(tmp_path: Path) -> None:
    from memscan.dataset.store import Dataset

    ds = _small_dataset(tmp_path)
    chunks = [p for p in (ds / "images.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(InputError, match=r"images\.zarr: cannot read stored items 0\.\.2"):
        Dataset.open(ds).read(0, 3)


def test_native_decoder_chatter_does_not_reach_stderr(tmp_path: Path) -> None:
    """OpenJPEG prints to file descriptor 2 on this broken file; the user sees one error line only."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(_testdata("JPEG2000-embedded-sequence-delimiter.dcm"), src / "broken_j2k.dcm")
    r = _cli("prepare", src, "--out", tmp_path / "ds")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken_j2k.dcm: cannot decode DICOM pixel data" in lines[0], r.stderr
