from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from memscan import phantoms
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

SHAPE = (48, 48, 24)


@pytest.fixture(scope="module")
def brats_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    phantoms.write_brats_tree(root, 5, seed=3, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def cxr_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr")
    phantoms.write_cxr_tree(root, 6, seed=1, size=64)
    return root


def test_prepare_brats_study_recipe(brats_tree, tmp_path):
    ds = prepare_dataset(
        brats_tree, tmp_path / "ds", PrepareOptions(layout="auto", size=64, test_subjects=2, seed=0)
    )
    assert ds.info["layout"] == "brats" and ds.info["recipe"]["name"] == "study"
    assert ds.item_shape == (5, 64, 64) and ds.dtype == np.uint8
    assert ds.channels == ("t1", "t2", "t1ce", "flair", "seg")
    m = ds.manifest
    first = m.iloc[0]
    assert first["id"].startswith(f"{first['subject']}/{first['subject']}_t1.nii.gz#z")
    assert m["slice_axis"].unique().tolist() == ["z"]
    # whole subjects in one split, 2 test subjects
    per_subject = m.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all()
    assert m.drop_duplicates("subject")["split"].value_counts()["test"] == 2
    # end slices of the phantom volumes are empty and must be dropped by the T1 > 50 rule
    assert m["slice_index"].min() > 0 and m["slice_index"].max() < SHAPE[2] - 1
    # the split views
    train = Dataset.open(tmp_path / "ds" / "train")
    test = Dataset.open(tmp_path / "ds" / "test")
    assert train.n_items + test.n_items == ds.n_items
    assert not set(train.subjects) & set(test.subjects)


def test_prepare_brats_matches_recipe_by_hand(brats_tree, tmp_path):
    """The stored slice equals the study recipe applied by hand to the NIfTI files."""
    ds = prepare_dataset(brats_tree, tmp_path / "ds", PrepareOptions(layout="brats", size=64))
    row = ds.manifest.iloc[3]
    subj = row["subject"]
    z = int(row["slice_index"])
    item = ds.read(3, 4)[0]
    pad = (64 - SHAPE[0]) // 2
    for c, mod in enumerate(("t1", "t2", "t1ce", "flair")):
        vol = np.asarray(nib.load(brats_tree / subj / f"{subj}_{mod}.nii.gz").dataobj).astype(np.float64)
        # BraTS files are stored LPS; memscan's frame PLS makes the axial slice the file's [L, P] plane
        # transposed to [P, L] (rows anterior->posterior, columns right->left).
        expected = np.floor(vol[:, :, z].T / vol.max() * 255).astype(np.uint8)
        np.testing.assert_array_equal(item[c, pad : pad + SHAPE[0], pad : pad + SHAPE[1]], expected)
        assert item[c, :pad].max() == 0
    seg = np.asarray(nib.load(brats_tree / subj / f"{subj}_seg.nii.gz").dataobj)[:, :, z].T
    np.testing.assert_array_equal(
        item[4, pad : pad + SHAPE[0], pad : pad + SHAPE[1]],
        (seg.astype(np.float32) * 255 / 5).astype(np.uint8),
    )


def test_prepare_brats_volumes_and_options(brats_tree, tmp_path):
    ds = prepare_dataset(
        brats_tree,
        tmp_path / "vol",
        PrepareOptions(layout="brats", volumes=True, modalities=("flair", "t1"), size=48),
    )
    assert ds.item_shape == (2, 48, 48, SHAPE[2]) and ds.spatial_dims == 3 and ds.n_items == 5
    assert ds.channels == ("flair", "t1")
    assert ds.manifest["id"].iloc[0].endswith("_flair.nii.gz")


def test_prepare_cxr(cxr_tree, tmp_path):
    ds = prepare_dataset(cxr_tree, tmp_path / "cxr", PrepareOptions(layout="auto", size=32))
    assert ds.info["layout"] == "cxr"
    assert ds.item_shape == (1, 32, 32) and ds.dtype == np.uint8
    m = ds.manifest
    assert set(m["label"]) <= {"NORMAL", "PNEUMONIA"} and set(m["split"]) <= {"train", "test", "val"}
    assert m["subject"].nunique() == 6
    assert m["subject"].nunique() < len(m)  # several images per patient
    assert all(i.split("/")[0] in {"train", "test", "val"} for i in m["id"])


def test_prepare_folder_of_volumes_and_images(tmp_path):
    src = tmp_path / "src"
    (src / "subjA").mkdir(parents=True)
    (src / "subjB").mkdir()
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image(rng.random((16, 16, 5)).astype(np.float32), np.eye(4)), src / "subjA" / "t1.nii.gz"
    )
    stack = rng.random((3, 16, 16)).astype(np.float32)
    np.save(src / "subjB" / "samples.npy", stack)  # N x H x W: three images (the array-file rule)
    ds = prepare_dataset(src, tmp_path / "ds")
    assert ds.info["layout"] == "folder" and ds.item_shape == (1, 16, 16)
    assert list(ds.ids[:2]) == ["subjA/t1.nii.gz#z000", "subjA/t1.nii.gz#z001"]
    assert list(ds.ids[5:]) == [f"subjB/samples.npy[{i}]" for i in range(3)]
    assert ds.manifest["stack_index"].tolist()[5:] == [0, 1, 2]
    np.testing.assert_array_equal(ds.read(5, 8)[:, 0], stack)
    assert set(ds.subjects) == {"subjA", "subjB"}
    assert ds.n_items == 8
    assert ds.info["orientation"]["frame"] == "PLS"
    assert ds.info["orientation"]["volumes_reoriented_from"] == {"RAS": 1}


def test_prepare_array_rule_refuses_ambiguous_and_reads_volumes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    np.save(src / "rgb.npy", rng.random((16, 16, 3)).astype(np.float32))
    with pytest.raises(InputError, match=r"rgb\.npy.*channels last.*the rule for array files"):
        prepare_dataset(src, tmp_path / "ds")
    (src / "rgb.npy").unlink()
    vols = rng.random((2, 6, 7, 5)).astype(np.float32)
    np.save(src / "vols.npy", vols)
    ds = prepare_dataset(src, tmp_path / "ds", PrepareOptions(volumes=True))
    assert ds.item_shape == (1, 6, 7, 5) and list(ds.ids) == ["vols.npy[0]", "vols.npy[1]"]
    np.testing.assert_array_equal(ds.read(0, 2)[:, 0], vols)


def test_prepare_excludes_constant_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(src / "b.png")
    ds = prepare_dataset(src, tmp_path / "ds")
    assert list(ds.ids) == ["a.png"]
    assert ds.info["excluded"][0]["id"] == "b.png" and "constant" in ds.info["excluded"][0]["reason"]


def test_mixed_shapes_error_and_size_fix(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (9, 8), dtype=np.uint8)).save(src / "b.png")
    with pytest.raises(InputError, match=r"b\.png.*mixed sizes; use --size"):
        prepare_dataset(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
    ds = prepare_dataset(src, tmp_path / "ds", PrepareOptions(size=8))
    assert ds.n_items == 2


def test_refuses_different_dataset_and_keeps_it(tmp_path, cxr_tree, brats_tree):
    out = tmp_path / "ds"
    prepare_dataset(cxr_tree, out, PrepareOptions(size=16))
    before = (out / "dataset.json").read_text()
    # same inputs and options: up to date, nothing rewritten
    prepare_dataset(cxr_tree, out, PrepareOptions(size=16))
    with pytest.raises(InputError, match="already holds a different dataset"):
        prepare_dataset(cxr_tree, out, PrepareOptions(size=24))
    assert (out / "dataset.json").read_text() == before
    ds = prepare_dataset(cxr_tree, out, PrepareOptions(size=24), overwrite=True)
    assert ds.item_shape == (1, 24, 24)
    assert json.loads((out / "dataset.json").read_text())["recipe"]["size"] == 24


def test_brats_missing_modality(tmp_path):
    root = tmp_path / "b"
    phantoms.write_brats_tree(root, 2, seed=0, shape=(16, 16, 8))
    (root / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="flair"):
        prepare_dataset(root, tmp_path / "ds", PrepareOptions(layout="brats"))
    assert not (tmp_path / "ds").exists()


def test_empty_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        prepare_dataset(tmp_path / "empty", tmp_path / "ds")
    with pytest.raises(InputError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "ds")
