"""Tests of the deterministic brain-MRI and chest-x-ray phantoms and their on-disk writers."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from memscan import phantoms as ph

SHAPE = (64, 64, 40)


@pytest.fixture(scope="module")
def subjects() -> list[dict[str, np.ndarray]]:
    return [ph.brain_subject(i, seed=3, shape=SHAPE) for i in range(3)]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_brain_determinism() -> None:
    a = ph.brain_volumes(np.random.default_rng(7), SHAPE)
    b = ph.brain_volumes(np.random.default_rng(7), SHAPE)
    c = ph.brain_volumes(np.random.default_rng(8), SHAPE)
    for k in (*ph.BRATS_MODALITIES, "seg"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["t1"], c["t1"])


def test_brain_keys_dtypes_ranges(subjects: list[dict[str, np.ndarray]]) -> None:
    maxima = []
    for s in subjects:
        assert set(s) == {"t1", "t1ce", "t2", "flair", "seg"}
        for m in ph.BRATS_MODALITIES:
            v = s[m]
            assert v.shape == SHAPE and v.dtype == np.float32
            assert v.min() >= 0 and 100 < v.max() < 6000
            assert np.all(v[0] == 0) and np.all(v[:, :, 0] == 0)  # zero background
        assert s["seg"].dtype == np.uint8
        assert set(np.unique(s["seg"])) <= {0, 1, 2, 4}
        assert (s["seg"] == 4).sum() > 0 and (s["seg"] == 2).sum() > 0
        maxima.append([s[m].max() for m in ph.BRATS_MODALITIES])
    mx = np.array(maxima)
    # intensity scales differ per modality and per subject
    assert all(len(np.unique(row.round())) > 2 for row in mx)
    assert all(len(np.unique(col.round())) == len(col) for col in mx.T)


def test_brain_tissue_contrasts() -> None:
    s = ph.brain_subject(0, seed=1, shape=(96, 96, 60))
    seg = s["seg"]
    t1 = s["t1"]
    brain_wm = (seg == 0) & (t1 > np.percentile(t1[t1 > 0], 70)) & (t1 < np.percentile(t1[t1 > 0], 90))
    oed = seg == 2
    enh = seg == 4
    assert oed.sum() > 20 and enh.sum() > 20
    for m in ("t2", "flair"):
        assert s[m][oed].mean() > 1.2 * s[m][brain_wm].mean()
    assert s["t1ce"][enh].mean() > 1.5 * s["t1ce"][oed].mean()
    if (seg == 1).sum() > 5:
        assert s["t1ce"][seg == 1].mean() < 0.5 * s["t1ce"][enh].mean()
    # ventricles: the brightest T2 voxels deep inside the head are dark in T1 and FLAIR
    x, y, z = (n // 2 for n in t1.shape)
    core = (slice(x - 12, x + 12), slice(y - 20, y + 20), slice(z - 6, z + 10))
    t2c, t1c, flc, segc = s["t2"][core], t1[core], s["flair"][core], seg[core]
    vent = (t2c > 0.8 * s["t2"].max()) & (segc == 0)
    assert vent.sum() > 10
    assert t1c[vent].mean() < 0.5 * t1c[(segc == 0) & ~vent].mean()
    assert flc[vent].mean() < 0.5 * flc[(segc == 0) & ~vent].mean()


def test_end_slices_empty_middle_kept(subjects: list[dict[str, np.ndarray]]) -> None:
    for s in subjects:
        t1 = s["t1"] / s["t1"].max() * 255
        # BraTS recipe on a 256x256 canvas: fraction of the padded area with T1 > 50
        frac = (t1 > 50).sum(axis=(0, 1)) / (SHAPE[0] * SHAPE[1]) * (240 * 240 / 256**2)
        assert frac[0] < 0.01 and frac[-1] < 0.01
        assert frac[:3].max() < 0.15 and frac[-3:].max() < 0.15
        assert frac[SHAPE[2] // 2] > 0.15
        kept = np.nonzero(frac > 0.15)[0]
        assert 0.3 * SHAPE[2] < len(kept) < 0.85 * SHAPE[2]


def test_slice_correlations(subjects: list[dict[str, np.ndarray]]) -> None:
    z = SHAPE[2] // 2
    for s in subjects:
        for dz in (-3, 0, 3):
            assert _corr(s["t1"][:, :, z + dz], s["t1"][:, :, z + dz + 1]) > 0.9
    neigh = np.mean([_corr(s["t1"][:, :, z], s["t1"][:, :, z + 1]) for s in subjects])
    between = np.mean(
        [_corr(subjects[i]["t1"][:, :, z], subjects[j]["t1"][:, :, z]) for i, j in ((0, 1), (0, 2), (1, 2))]
    )
    assert between < neigh - 0.1


def test_small_and_large_shapes_look_alike() -> None:
    small = ph.brain_subject(5, seed=0, shape=(48, 48, 31))["t1"]
    big = ph.brain_subject(5, seed=0, shape=(96, 96, 62))["t1"]
    down = big.reshape(48, 2, 48, 2, 31, 2).mean(axis=(1, 3, 5))
    assert _corr(small, down) > 0.9


@pytest.mark.parametrize(
    ("naming", "first", "second"),
    [
        ("2020", "BraTS20_Training_001", "BraTS20_Training_002"),
        ("2021", "BraTS2021_00000", "BraTS2021_00001"),
    ],
)
def test_write_brats_tree(tmp_path: Path, naming: str, first: str, second: str) -> None:
    shape = (32, 32, 20)
    names = ph.write_brats_tree(tmp_path, 2, seed=4, shape=shape, naming=naming)
    assert names == [first, second]
    assert sorted(p.name for p in tmp_path.iterdir()) == [first, second]
    files = sorted(p.name for p in (tmp_path / first).iterdir())
    assert files == sorted(f"{first}_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg"))
    ref = ph.brain_subject(0, seed=4, shape=shape)
    for k in ("t1", "t1ce", "t2", "flair", "seg"):
        img = nib.load(str(tmp_path / first / f"{first}_{k}.nii.gz"))
        assert img.shape == shape
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # stored as BraTS stores its files
        data = np.asarray(img.dataobj)[:, ::-1, :]  # back to the generator's LAS
        if k == "seg":
            assert data.dtype == np.uint8
            np.testing.assert_array_equal(data, ref["seg"])
        else:
            assert data.dtype == np.int16
            np.testing.assert_allclose(data, ref[k], atol=0.5)


def test_brats_tree_float32_and_subject_independent_of_n(tmp_path: Path) -> None:
    shape = (32, 32, 20)
    ph.write_brats_tree(tmp_path / "a", 1, seed=2, shape=shape, image_dtype="float32")
    ph.write_brats_tree(tmp_path / "b", 3, seed=2, shape=shape, image_dtype="float32")
    for k in ("t1", "flair", "seg"):
        a = np.asarray(
            nib.load(str(tmp_path / "a/BraTS20_Training_001" / f"BraTS20_Training_001_{k}.nii.gz")).dataobj
        )
        b = np.asarray(
            nib.load(str(tmp_path / "b/BraTS20_Training_001" / f"BraTS20_Training_001_{k}.nii.gz")).dataobj
        )
        assert a.dtype == (np.uint8 if k == "seg" else np.float32)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        ph.write_brats_tree(tmp_path / "c", 1, shape=shape, naming="2019")


def test_chest_xray_basics() -> None:
    a = ph.chest_xray(np.random.default_rng(0), 128)
    b = ph.chest_xray(np.random.default_rng(0), 128)
    c = ph.chest_xray(np.random.default_rng(1), 128)
    assert a.shape == (128, 128) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # lungs darker than the mediastinum; background darker than the body
    assert a[40:80, 30:45].mean() < a[40:80, 60:68].mean() - 20
    assert a[64:100, :4].mean() < a[64:100, 60:68].mean() - 60


def test_chest_patient_images_share_anatomy() -> None:
    rng = np.random.default_rng(5)
    same, other = [], []
    for _ in range(4):
        p, q = ph.chest_patient(rng), ph.chest_patient(rng)
        a, b = (ph.chest_xray_from(p, rng, 96).astype(float) for _ in range(2))
        assert not np.array_equal(a, b)
        same.append(_corr(a, b))
        other.append(_corr(a, ph.chest_xray_from(q, rng, 96).astype(float)))
    assert np.mean(same) > np.mean(other) + 0.05
    sick = ph.chest_xray_from(p, np.random.default_rng(9), 128, pneumonia=True).astype(float)
    well = ph.chest_xray_from(p, np.random.default_rng(9), 128).astype(float)
    assert sick.mean() > well.mean()  # opacities whiten the lungs
    assert ph.chest_xray_from(p, rng, shape=(150, 110)).shape == (150, 110)


_PNEU = re.compile(r"^person(\d+)_(bacteria|virus)_(\d+)\.jpeg$")
_NORM = re.compile(r"^(NORMAL2-)?IM-(\d{4})-(\d{4})\.jpeg$")


def _patient(name: str) -> str:
    m = _PNEU.match(name)
    if m:
        return f"person{m.group(1)}"
    m = _NORM.match(name)
    assert m, name
    return f"IM-{m.group(2)}"


def test_write_cxr_tree(tmp_path: Path) -> None:
    paths = ph.write_cxr_tree(tmp_path, 9, seed=1, images_per_patient=(2, 3), size=64)
    assert {p.parent.parent.name for p in paths} == {"train", "test", "val"}
    for split in ("train", "test", "val"):
        for cls in ("NORMAL", "PNEUMONIA"):
            assert (tmp_path / split / cls).is_dir()
            assert any((tmp_path / split / cls).glob("*.jpeg"))
    folders: dict[str, set[Path]] = {}
    for p in paths:
        assert p.is_file() and p.suffix == ".jpeg"
        cls = p.parent.name
        assert (_PNEU if cls == "PNEUMONIA" else _NORM).match(p.name), p.name
        folders.setdefault(_patient(p.name), set()).add(p.parent)
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "L"
            w, h = im.size
            assert 0.75 * 64 <= w <= 1.35 * 64 and 0.75 * 64 <= h <= 1.35 * 64
    assert len(folders) == 9
    assert all(len(f) == 1 for f in folders.values())  # one split/class per patient
    counts = {k: sum(_patient(p.name) == k for p in paths) for k in folders}
    assert min(counts.values()) >= 2
    assert any(p.name.startswith("NORMAL2-") for p in paths)
    sizes = {Image.open(p).size for p in paths}
    assert len(sizes) > 3 and any(w != h for w, h in sizes)
    # patient i does not depend on n_patients
    again = ph.write_cxr_tree(tmp_path / "b", 3, seed=1, images_per_patient=(2, 3), size=64)
    for p in again:
        rel = p.relative_to(tmp_path / "b")
        assert (tmp_path / rel).read_bytes() == p.read_bytes()


def test_write_folder_tree(tmp_path: Path) -> None:
    paths = ph.write_folder_tree(tmp_path, 2, seed=0, size=32, n_slices=4)
    assert len(paths) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subj_000", "subj_001"]
    for p in paths:
        assert re.fullmatch(r"slice_\d{3}\.png", p.name)
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (32, 32)
            assert np.asarray(im).max() > 100


def test_brats_phantom_reads_in_radiological_display(tmp_path: Path) -> None:
    """The phantom's anatomy and its file's affine agree: memscan's reader (frame PLS) gives, for axial slice
    k, the generator's slice shown radiologically (rows anterior->posterior, columns right->left), which is
    np.rot90 of the generator's LAS [x, y] plane."""
    from memscan.io.readers import read_image

    shape = (20, 24, 10)
    ph.write_brats_tree(tmp_path, 1, seed=5, shape=shape, image_dtype="float32")
    name = "BraTS20_Training_001"
    data = read_image(tmp_path / name / f"{name}_t1.nii.gz", spatial_dims=3)
    assert data.frame == "PLS" and data.source_frame == "LPS"
    ref = ph.brain_subject(0, seed=5, shape=shape)["t1"]  # LAS
    for k in (3, 6):
        np.testing.assert_array_equal(data.array[0, :, :, k], np.rot90(ref[:, :, k]).astype(np.float32))
