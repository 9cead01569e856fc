"""Tests for memscan.io.layouts: generic folders, BraTS 2020/2021 subject folders, chest x-ray folders."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from memscan.errors import InputError
from memscan.io import layouts
from memscan.io.layouts import (
    BratsSubject,
    SourceItem,
    cxr_patient_id,
    detect_layout,
    discover_brats,
    discover_cxr,
    discover_folder,
    subject_for,
)
from memscan.io.readers import read_image

# ----------------------------------------------------------------------------------------------- helpers


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
    return path


def nifti(path: Path, shape: tuple[int, ...] = (8, 8, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    return path


def dicom_slice(path: Path, series_uid: str, z: float) -> Path:
    """A minimal 3x3 single-frame DICOM slice of a series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.Rows = ds.Columns = 3
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((3, 3), int(z), "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


BRATS_MODS = ("t1", "t1ce", "t2", "flair", "seg")


def brats_subject(root: Path, name: str, mods: tuple[str, ...] = BRATS_MODS, suffix: str = ".nii.gz") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for mod in mods:
        (folder / f"{name}_{mod}{suffix}").touch()
    return folder


# ------------------------------------------------------------------------------------------------ folder


def test_folder_ids_and_subjects(tmp_path: Path) -> None:
    png(tmp_path / "patB" / "scan2.png")
    png(tmp_path / "patA" / "sub" / "x.png")
    nifti(tmp_path / "loose.nii.gz")
    png(tmp_path / "top.png")
    items = discover_folder(tmp_path)
    assert [i.relpath for i in items] == ["loose.nii.gz", "patA/sub/x.png", "patB/scan2.png", "top.png"]
    assert [i.subject for i in items] == ["loose", "patA", "patB", "top"]
    assert items[1].path == tmp_path / "patA" / "sub" / "x.png"
    assert all(i.label is None and i.split is None for i in items)


def test_folder_skips_hidden_and_unsupported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / ".hidden.png")
    png(tmp_path / ".git" / "b.png")
    (tmp_path / "notes.txt").write_text("x")
    with caplog.at_level(logging.DEBUG, logger="memscan.io.layouts"):
        items = discover_folder(tmp_path)
    assert [i.relpath for i in items] == ["a.png"]
    assert "notes.txt" in caplog.text and ".hidden.png" in caplog.text


def test_folder_subject_pattern(tmp_path: Path) -> None:
    png(tmp_path / "scans" / "P001_a.png")
    png(tmp_path / "scans" / "P002_b.png")
    items = discover_folder(tmp_path, subject_pattern=r"(P\d+)_")
    assert [i.subject for i in items] == ["P001", "P002"]
    items = discover_folder(tmp_path, subject_pattern=r"P\d+")  # no group: whole match
    assert [i.subject for i in items] == ["P001", "P002"]


def test_subject_for_rules() -> None:
    assert subject_for("a.nii.gz") == "a"
    assert subject_for("a.png") == "a"
    assert subject_for("S1/deep/x.png") == "S1"
    assert subject_for("series_dir") == "series_dir"
    assert subject_for("x/P7-scan.png", r"P(\d+)") == "7"


def test_subject_pattern_no_match_is_input_error() -> None:
    with pytest.raises(InputError, match=r"pattern 'P\\d\+' does not match 'scans/q.png'"):
        subject_for("scans/q.png", r"P\d+")


def test_subject_pattern_invalid_regex_is_input_error(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    with pytest.raises(InputError, match="invalid subject pattern"):
        discover_folder(tmp_path, subject_pattern="(unclosed")


def test_single_file_root(tmp_path: Path) -> None:
    path = nifti(tmp_path / "deep" / "vol.nii.gz")
    items = discover_folder(path)
    assert items == [SourceItem(path=path, relpath="vol.nii.gz", subject="vol")]


def test_single_unsupported_file_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="not a supported image file") as exc:
        discover_folder(tmp_path / "a.txt")
    assert "a.txt" in str(exc.value)


def test_dicom_series_folder_is_one_item(tmp_path: Path) -> None:
    uid = generate_uid()
    for k in range(3):
        dicom_slice(tmp_path / "pat1" / "series" / f"{k}.dcm", uid, float(k))
    png(tmp_path / "pat1" / "series" / "thumb.png")  # other images in the folder stay items
    dicom_slice(tmp_path / "pat2" / "single.dcm", generate_uid(), 0.0)
    items = discover_folder(tmp_path)
    assert [i.relpath for i in items] == ["pat1/series", "pat1/series/thumb.png", "pat2/single.dcm"]
    assert items[0].path == tmp_path / "pat1" / "series" and items[0].subject == "pat1"
    assert read_image(items[0].path).array.shape == (1, 3, 3, 3)


def test_root_that_is_a_dicom_series(tmp_path: Path) -> None:
    uid = generate_uid()
    for k in range(2):
        dicom_slice(tmp_path / "ser" / f"{k}.dcm", uid, float(k))
    items = discover_folder(tmp_path / "ser")
    assert [(i.relpath, i.subject) for i in items] == [("ser", "ser")]


def test_empty_folder_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"no supported images found \(looked for .png, .jpg") as exc:
        discover_folder(tmp_path)
    assert exc.value.path == str(tmp_path)


def test_missing_folder_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as exc:
        discover_folder(tmp_path / "nope")
    assert "nope" in str(exc.value)


# ------------------------------------------------------------------------------------------------- BraTS


def test_brats_2020_naming(tmp_path: Path) -> None:
    for i in (2, 1):
        brats_subject(tmp_path, f"BraTS20_Training_{i:03d}")
    (tmp_path / "name_mapping.csv").write_text("x")
    (tmp_path / "notes").mkdir()
    subjects = discover_brats(tmp_path)
    assert [s.subject for s in subjects] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    s = subjects[0]
    assert isinstance(s, BratsSubject) and s.folder == tmp_path / "BraTS20_Training_001"
    assert set(s.files) == set(BRATS_MODS)
    assert s.files["t1"].name == "BraTS20_Training_001_t1.nii.gz"
    assert s.files["t1ce"].name == "BraTS20_Training_001_t1ce.nii.gz"


def test_brats_2021_naming_and_nii(tmp_path: Path) -> None:
    brats_subject(tmp_path, "BraTS2021_00000")
    brats_subject(tmp_path, "BraTS2021_00002", suffix=".nii")
    subjects = discover_brats(tmp_path, modalities=("flair", "seg"))
    assert [s.subject for s in subjects] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert set(subjects[1].files) == {"flair", "seg"}
    assert subjects[1].files["seg"].name == "BraTS2021_00002_seg.nii"


def test_brats_real_nifti_readable(tmp_path: Path) -> None:
    folder = tmp_path / "BraTS20_Validation_001"
    for mod in ("t1", "flair"):
        nifti(folder / f"{folder.name}_{mod}.nii.gz")
    (subject,) = discover_brats(tmp_path, modalities=("t1", "flair"))
    assert read_image(subject.files["t1"], spatial_dims=3).array.shape == (1, 8, 8, 4)


def test_brats_t1_vs_t1ce(tmp_path: Path) -> None:
    brats_subject(tmp_path, "BraTS20_Training_007", mods=("t1ce", "t2", "flair", "seg"))
    assert [s.subject for s in discover_brats(tmp_path, ("t1ce",))] == ["BraTS20_Training_007"]
    with pytest.raises(InputError, match="no BraTS20_Training_007_t1.nii.gz") as exc:
        discover_brats(tmp_path, ("t1",))  # t1ce must not satisfy t1
    assert "BraTS20_Training_007" in str(exc.value.path)


def test_brats_missing_modality_is_input_error(tmp_path: Path) -> None:
    brats_subject(tmp_path, "BraTS20_Training_001")
    brats_subject(tmp_path, "BraTS20_Training_355", mods=("t1", "t1ce", "t2", "flair"))
    with pytest.raises(
        InputError, match=r"BraTS20_Training_355 has no BraTS20_Training_355_seg\.nii\.gz"
    ) as exc:
        discover_brats(tmp_path)
    assert exc.value.path == str(tmp_path / "BraTS20_Training_355")


def test_brats_no_subjects_is_input_error(tmp_path: Path) -> None:
    png(tmp_path / "x" / "a.png")
    with pytest.raises(InputError, match="no BraTS subject folders"):
        discover_brats(tmp_path)


def test_brats_unknown_modality_suggests(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="did you mean 't1ce'"):
        discover_brats(tmp_path, ("t1c",))


# --------------------------------------------------------------------------------------------- chest x-ray


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1630_virus_2825.jpeg", "person1630"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
    ],
)
def test_cxr_patient_id(name: str, patient: str) -> None:
    assert cxr_patient_id(name) == patient


def test_cxr_patient_id_unknown_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layouts, "_warned_cxr_names", False)
    with caplog.at_level(logging.WARNING, logger="memscan.io.layouts"):
        assert cxr_patient_id("scan_42.jpg") == "scan_42"
        assert cxr_patient_id("other.png") == "other"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def make_cxr(root: Path) -> None:
    png(root / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    png(root / "train" / "NORMAL" / "IM-0115-0002.jpeg")
    png(root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    png(root / "test" / "PNEUMONIA" / "person1630_virus_2825.jpeg")
    png(root / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg")
    (root / "train" / "NORMAL" / ".DS_Store").write_text("x")


def test_discover_cxr(tmp_path: Path) -> None:
    make_cxr(tmp_path)
    items = discover_cxr(tmp_path)
    assert [(i.relpath, i.subject, i.split, i.label) for i in items] == [
        ("test/PNEUMONIA/person1630_virus_2825.jpeg", "person1630", "test", "PNEUMONIA"),
        ("train/NORMAL/IM-0115-0001.jpeg", "IM-0115", "train", "NORMAL"),
        ("train/NORMAL/IM-0115-0002.jpeg", "IM-0115", "train", "NORMAL"),
        ("train/PNEUMONIA/person1_bacteria_1.jpeg", "person1", "train", "PNEUMONIA"),
        ("val/NORMAL/NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427", "val", "NORMAL"),
    ]


def test_discover_cxr_without_folders_is_input_error(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    with pytest.raises(InputError, match="no chest x-ray folders"):
        discover_cxr(tmp_path)


# -------------------------------------------------------------------------------------------------- detect


def test_detect_layout(tmp_path: Path) -> None:
    brats_subject(tmp_path / "b20", "BraTS20_Training_001")
    brats_subject(tmp_path / "b21", "BraTS2021_00000")
    make_cxr(tmp_path / "chest_xray")
    png(tmp_path / "plain" / "x" / "a.png")
    assert detect_layout(tmp_path / "b20") == "brats"
    assert detect_layout(tmp_path / "b21") == "brats"
    assert detect_layout(tmp_path / "chest_xray") == "cxr"
    assert detect_layout(tmp_path / "plain") == "folder"
    assert detect_layout(tmp_path / "plain" / "x" / "a.png") == "folder"
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_detect_layout_t1ce_only_prefix_is_not_brats(tmp_path: Path) -> None:
    folder = tmp_path / "S1"
    folder.mkdir()
    (folder / "other_t1.nii.gz").touch()  # not <folder name>_t1
    assert detect_layout(tmp_path) == "folder"


def test_folder_companion_data_files_and_skip_list(tmp_path: Path) -> None:
    """A .REC beside its .PAR (.img beside .hdr) belongs to that item; an orphan is skipped and counted."""
    for name in ("scan.PAR", "scan.REC", "pair.hdr", "pair.img", "orphan.REC", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    skipped: list[tuple[str, str]] = []
    items = discover_folder(tmp_path, skipped=skipped)
    assert [it.relpath for it in items] == ["pair.hdr", "scan.PAR"]
    assert sorted(skipped) == [
        ("notes.txt", "unsupported file type '.txt'"),
        ("orphan.REC", "data file without its header (.par) beside it"),
    ]
