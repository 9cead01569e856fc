"""Tests for memscan.preprocess.recipes: the study's BraTS recipe (hand-computed), chest x-ray, generic.

The BraTS phantom below is built so that the expected result of every step of the study's recipe can be
written down by hand: which slices pass the "> 15% of 256×256 with T1 > 50" filter, where the 240×240
slice lands after centred zero-padding, what each modality becomes after division by its own maximum and
8-bit truncation, and the segmentation's 0/1/2/4 → 0/51/102/204 mapping.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from memscan.errors import InputError
from memscan.preprocess.recipes import (
    RECIPES,
    STUDY_CHANNELS,
    BratsRecipe,
    CxrRecipe,
    GenericRecipe,
    brats_subject_items,
    cxr_item,
    generic_items,
    get_recipe,
    pad_or_crop,
    scale_to_255,
    seg_to_channel,
    split_subjects,
)

N, Z = 240, 6
# 15% of 256² = 9830.4 pixels: 9830 bright pixels are not enough, 9831 are.
NOT_ENOUGH, ENOUGH = 9830, 9831


def _fill(
    plane: np.ndarray, count: int, value: float, row0: int = 20, col0: int = 20, width: int = 100
) -> None:
    """Set ``count`` pixels to ``value``: full rows of ``width`` from (row0, col0), then the rest."""
    rows, rest = divmod(count, width)
    plane[row0 : row0 + rows, col0 : col0 + width] = value
    plane[row0 + rows, col0 : col0 + rest] = value


@pytest.fixture
def phantom() -> dict[str, np.ndarray]:
    """A BraTS subject of 240×240×6 voxels with hand-placed content (T1 max is 255, so T1 scaling is exact).

    T1 (float64, scaled value = raw value):
      z0 empty                                         -> dropped
      z1 9830 px at 100                                -> dropped (9830/65536 = 0.149994 < 0.15)
      z2 9831 px at 100                                -> kept
      z3 9829 px at 100, 1 px at 255 (the volume max), 1 px at 50.5, 500 px at exactly 50
                                                       -> kept (50.5 > 50 counts, 50 does not: 9831)
      z4 9830 px at 100, 1000 px at exactly 50         -> dropped (strictly greater than 50)
      z5 20000 px at 100                               -> kept
    T2 (int16, max 4000): 4000, 2000, 1000 at (0,0), (1,1), (2,2)   -> 255, 127 (127.5), 63 (63.75)
    T1ce (int16, max 7): 7, 3 at (5,5), (6,6)                        -> 255, 109 (109.29)
    FLAIR (float32, max 0.5): 0.5, 0.25 at (10,10), (11,11)          -> 255, 127 (127.5)
    seg (uint8): labels 1, 2, 4 at (20,20), (21,21), (22,22)          -> 51, 102, 204
    """
    t1 = np.zeros((N, N, Z))
    _fill(t1[:, :, 1], NOT_ENOUGH, 100.0)
    _fill(t1[:, :, 2], ENOUGH, 100.0)
    _fill(t1[:, :, 3], 9829, 100.0)
    t1[200, 200, 3] = 255.0
    t1[201, 201, 3] = 50.5
    _fill(t1[:, :, 3], 500, 50.0, row0=150, col0=0)
    _fill(t1[:, :, 4], NOT_ENOUGH, 100.0)
    _fill(t1[:, :, 4], 1000, 50.0, row0=150, col0=0)
    _fill(t1[:, :, 5], 20000, 100.0)
    t2 = np.zeros((N, N, Z), np.int16)
    t2[0, 0], t2[1, 1], t2[2, 2] = 4000, 2000, 1000
    t1ce = np.zeros((N, N, Z), np.int16)
    t1ce[5, 5], t1ce[6, 6] = 7, 3
    flair = np.zeros((N, N, Z), np.float32)
    flair[10, 10], flair[11, 11] = 0.5, 0.25
    seg = np.zeros((N, N, Z), np.uint8)
    seg[20, 20], seg[21, 21], seg[22, 22] = 1, 2, 4
    # deliberately not in the study's order: the channel order must come from the recipe
    return {"seg": seg, "flair": flair, "t1ce": t1ce, "t2": t2, "t1": t1}


KEPT = [2, 3, 5]
P = 8  # (256 - 240) / 2


# ---------------------------------------------------------------------------------- BraTS recipe


def test_study_recipe_defaults() -> None:
    r = BratsRecipe()
    assert STUDY_CHANNELS == ("t1", "t2", "t1ce", "flair", "seg")
    assert (r.modalities, r.axis, r.size, r.t1_threshold, r.min_fraction) == (
        STUDY_CHANNELS,
        "z",
        256,
        50.0,
        0.15,
    )
    assert (r.slice_range, r.volumes, r.dtype, r.name) == (None, False, "uint8", "study")


def test_kept_slices(phantom: dict[str, np.ndarray]) -> None:
    items = brats_subject_items(phantom, BratsRecipe(), subject="BraTS_001")
    assert [i for i, _ in items] == KEPT
    for _, item in items:
        assert item.shape == (5, 256, 256)
        assert item.dtype == np.uint8


def test_min_fraction_is_strict_at_exact_boundary() -> None:
    # size 16: 64 of 256 pixels is exactly 25% -> not kept; 65 -> kept
    t1 = np.zeros((16, 16, 3))
    t1[:, :, 0].flat[:64] = 200.0
    t1[:, :, 1].flat[:65] = 200.0
    t1[0, 0, 2] = 255.0
    recipe = BratsRecipe(modalities=("t1",), size=16, min_fraction=0.25)
    assert [i for i, _ in brats_subject_items({"t1": t1}, recipe)] == [1]


def test_threshold_and_fraction_are_parameters(phantom: dict[str, np.ndarray]) -> None:
    # threshold 49.9: the 50-valued pixels now count, so z4 (9830 + 1000) is kept as well
    assert [i for i, _ in brats_subject_items(phantom, BratsRecipe(t1_threshold=49.9))] == [2, 3, 4, 5]
    # 20000 / 65536 = 0.305: only z5 passes a 0.3 fraction
    assert [i for i, _ in brats_subject_items(phantom, BratsRecipe(min_fraction=0.3))] == [5]


def test_padding_offsets_and_t1_values(phantom: dict[str, np.ndarray]) -> None:
    items = dict(brats_subject_items(phantom, BratsRecipe()))
    t1_z3 = items[3][0]
    # the 240×240 slice sits at [8:248, 8:248]; T1 max is 255 so scaled == raw, truncated to 8 bits
    np.testing.assert_array_equal(
        t1_z3[P : P + N, P : P + N], np.floor(phantom["t1"][:, :, 3]).astype(np.uint8)
    )
    assert t1_z3[P + 200, P + 200] == 255
    assert t1_z3[P + 201, P + 201] == 50  # 50.5 truncated toward zero
    assert t1_z3[P + 20, P + 20] == 100
    # z2's own max is 100 (it would become 255 if scaled per slice): scaled by the volume max
    assert items[2][0][P + 20, P + 20] == 100
    # the border is zero in every channel
    for item in items.values():
        border = np.ones((256, 256), bool)
        border[P : P + N, P : P + N] = False
        assert not item[:, border].any()
        assert item[:, P : P + N, P : P + N].any()


def test_each_modality_scaled_by_its_own_max_and_truncated(phantom: dict[str, np.ndarray]) -> None:
    item = dict(brats_subject_items(phantom, BratsRecipe()))[5]
    t1, t2, t1ce, flair, seg = item  # study channel order
    assert t1[P + 20, P + 20] == 100
    assert (t2[P + 0, P + 0], t2[P + 1, P + 1], t2[P + 2, P + 2]) == (255, 127, 63)
    assert (t1ce[P + 5, P + 5], t1ce[P + 6, P + 6]) == (255, 109)
    assert (flair[P + 10, P + 10], flair[P + 11, P + 11]) == (255, 127)
    assert (seg[P + 20, P + 20], seg[P + 21, P + 21], seg[P + 22, P + 22]) == (51, 102, 204)
    assert np.count_nonzero(t2) == 3 and np.count_nonzero(t1ce) == 2 and np.count_nonzero(flair) == 2
    assert np.count_nonzero(seg) == 3


def test_float32_keeps_unrounded_values(phantom: dict[str, np.ndarray]) -> None:
    item = dict(brats_subject_items(phantom, BratsRecipe(dtype="float32")))[5]
    assert item.dtype == np.float32
    assert item[1, P + 1, P + 1] == np.float32(127.5)
    assert item[1, P + 2, P + 2] == np.float32(63.75)
    assert item[2, P + 6, P + 6] == pytest.approx(3 / 7 * 255, rel=1e-6)
    # the same slices are kept whatever the storage dtype
    assert [i for i, _ in brats_subject_items(phantom, BratsRecipe(dtype="float32"))] == KEPT


def test_channel_order_follows_recipe(phantom: dict[str, np.ndarray]) -> None:
    full = dict(brats_subject_items(phantom, BratsRecipe()))[5]
    sub = dict(brats_subject_items(phantom, BratsRecipe(modalities=("flair", "t1"))))[5]
    assert sub.shape == (2, 256, 256)
    np.testing.assert_array_equal(sub[0], full[3])
    np.testing.assert_array_equal(sub[1], full[0])


def test_t1_required_for_filter_even_when_not_a_channel(phantom: dict[str, np.ndarray]) -> None:
    recipe = BratsRecipe(modalities=("t2", "seg"))
    items = brats_subject_items(phantom, recipe)
    assert [i for i, _ in items] == KEPT  # filtered by T1
    assert items[0][1].shape == (2, 256, 256)
    no_t1 = {k: v for k, v in phantom.items() if k != "t1"}
    with pytest.raises(InputError, match="T1 is required by the slice filter"):
        brats_subject_items(no_t1, recipe, subject="BraTS_007")


def test_missing_modality(phantom: dict[str, np.ndarray]) -> None:
    del phantom["seg"]
    with pytest.raises(InputError, match=r"subject 'BraTS_009': missing modalities \['seg'\]"):
        brats_subject_items(phantom, BratsRecipe(), subject="BraTS_009")


def test_shape_mismatch_names_subject_and_shapes(phantom: dict[str, np.ndarray]) -> None:
    phantom["flair"] = np.zeros((N, N, Z + 1), np.float32)
    with pytest.raises(InputError, match=r"BraTS_042.*shapes disagree.*'flair': \(240, 240, 7\)"):
        brats_subject_items(phantom, BratsRecipe(), subject="BraTS_042")


def test_non_3d_modality(phantom: dict[str, np.ndarray]) -> None:
    phantom["t2"] = np.zeros((N, N))
    with pytest.raises(InputError, match="3D volume"):
        brats_subject_items(phantom, BratsRecipe())


def test_bad_segmentation_label(phantom: dict[str, np.ndarray]) -> None:
    phantom["seg"][30, 30, 0] = 3  # in slice 0, which the filter drops: still an error
    with pytest.raises(InputError, match=r"segmentation has unexpected labels \[3\]"):
        brats_subject_items(phantom, BratsRecipe())
    with pytest.raises(InputError, match="unexpected labels"):
        brats_subject_items(phantom, BratsRecipe(slice_range=(0, 1)))  # no slice kept


def test_negative_intensities_rejected_for_uint8(phantom: dict[str, np.ndarray]) -> None:
    phantom["t2"][0, 1, 0] = -5
    with pytest.raises(InputError, match="negative"):
        brats_subject_items(phantom, BratsRecipe())
    brats_subject_items(phantom, BratsRecipe(dtype="float32"))  # allowed when not stored as 8 bits


def test_nan_rejected(phantom: dict[str, np.ndarray]) -> None:
    phantom["flair"][0, 1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        brats_subject_items(phantom, BratsRecipe())


def test_all_zero_modality_gives_zero_channel(phantom: dict[str, np.ndarray]) -> None:
    phantom["flair"][:] = 0
    items = brats_subject_items(phantom, BratsRecipe())
    assert [i for i, _ in items] == KEPT
    assert not any(item[3].any() for _, item in items)


def test_slice_range(phantom: dict[str, np.ndarray]) -> None:
    assert [i for i, _ in brats_subject_items(phantom, BratsRecipe(slice_range=(3, 6)))] == [3, 5]
    assert [i for i, _ in brats_subject_items(phantom, BratsRecipe(slice_range=(0, 3)))] == [2]
    assert brats_subject_items(phantom, BratsRecipe(slice_range=(0, 2))) == []
    with pytest.raises(InputError, match="out of bounds"):
        brats_subject_items(phantom, BratsRecipe(slice_range=(0, 7)))


def test_axis_x_slices_y_z_planes() -> None:
    # [X=3, Y=16, Z=16], size 16, slicing along x: only x=1 is bright enough
    t1 = np.zeros((3, 16, 16))
    t1[1] = np.arange(256, dtype=float).reshape(16, 16)  # max 255 -> scaled == raw; 204 px > 50
    items = brats_subject_items({"t1": t1}, BratsRecipe(modalities=("t1",), axis="x", size=16))
    assert [i for i, _ in items] == [1]
    np.testing.assert_array_equal(items[0][1][0], t1[1].astype(np.uint8))  # [Y, Z], not transposed


def test_axis_x_on_phantom_keeps_nothing(phantom: dict[str, np.ndarray]) -> None:
    # an x-slice is [Y=240, Z=6] padded to 256×256: at most 1440 bright pixels, never > 9830.4
    assert brats_subject_items(phantom, BratsRecipe(axis="x")) == []
    # volumes along x keep X and pad Y (240 -> 256) and Z (6 -> 256: 125 before, 125 after)
    ((_, vol),) = brats_subject_items(phantom, BratsRecipe(axis="x", volumes=True, modalities=("t1",)))
    assert vol.shape == (1, N, 256, 256)
    np.testing.assert_array_equal(vol[0, :, P : P + N, 125:131], phantom["t1"].astype(np.uint8))


def test_volumes_mode(phantom: dict[str, np.ndarray]) -> None:
    ((index, vol),) = brats_subject_items(phantom, BratsRecipe(volumes=True))
    assert index is None
    assert vol.shape == (5, 256, 256, Z) and vol.dtype == np.uint8
    slices = dict(brats_subject_items(phantom, BratsRecipe()))
    for z, item in slices.items():
        np.testing.assert_array_equal(vol[..., z], item)  # same values as the slice path
    ((_, part),) = brats_subject_items(phantom, BratsRecipe(volumes=True, slice_range=(1, 4)))
    assert part.shape == (5, 256, 256, 3)
    np.testing.assert_array_equal(part, vol[..., 1:4])


def test_volumes_mode_does_not_need_t1(phantom: dict[str, np.ndarray]) -> None:
    del phantom["t1"]
    ((_, vol),) = brats_subject_items(phantom, BratsRecipe(modalities=("t2",), volumes=True, size=240))
    assert vol.shape == (1, 240, 240, Z)


def test_crop_when_slice_larger_than_size(phantom: dict[str, np.ndarray]) -> None:
    # size 200 crops 20 from each side; the area is now 200² = 40000: z5's 20000 px -> 0.5, z2's 9831 -> 0.246
    items = dict(brats_subject_items(phantom, BratsRecipe(size=200)))
    assert sorted(items) == [1, 2, 3, 4, 5]  # 15% of 40000 is 6000: every non-empty slice passes
    t1_z5 = items[5][0]
    assert t1_z5.shape == (200, 200)
    np.testing.assert_array_equal(t1_z5, phantom["t1"][20:220, 20:220, 5].astype(np.uint8))


def _naive_study_recipe(vols: dict[str, np.ndarray], axis: int, size: int) -> list[tuple[int, np.ndarray]]:
    """The study's recipe written the slow, obvious way: per slice, np.pad / crop, count, floor."""

    def fit(img: np.ndarray) -> np.ndarray:
        for ax in (0, 1):
            n = img.shape[ax]
            if n < size:
                widths = [(0, 0), (0, 0)]
                widths[ax] = ((size - n) // 2, size - n - (size - n) // 2)
                img = np.pad(img, widths)
            else:
                img = np.take(img, range((n - size) // 2, (n - size) // 2 + size), axis=ax)
        return img

    scaled = {m: v.astype(np.float64) / v.max() * 255 for m, v in vols.items() if m != "seg"}
    scaled["seg"] = vols["seg"].astype(np.float64) * 255 / 5
    out = []
    for i in range(vols["t1"].shape[axis]):
        t1 = fit(np.take(scaled["t1"], i, axis=axis))
        if (t1 > 50).sum() / (size * size) > 0.15:
            chans = [np.floor(fit(np.take(scaled[m], i, axis=axis))).astype(np.uint8) for m in STUDY_CHANNELS]
            out.append((i, np.stack(chans)))
    return out


@pytest.mark.parametrize(("axis", "size"), [("z", 32), ("z", 20), ("x", 24), ("y", 32)])
def test_matches_naive_reference(axis: str, size: int) -> None:
    rng = np.random.default_rng(3)
    shape = (24, 22, 12)
    x, y, _ = np.meshgrid(np.arange(24), np.arange(22), np.arange(12), indexing="ij")
    blob = ((x - 12) ** 2 + (y - 11) ** 2 < rng.integers(10, 120, size=12)).astype(
        float
    )  # radius varies by z
    vols = {
        m: (rng.random(shape) * 60 + blob * rng.uniform(300, 900)).astype(np.int16)
        for m in STUDY_CHANNELS[:4]
    }
    vols["seg"] = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape)
    got = brats_subject_items(vols, BratsRecipe(axis=axis, size=size))
    want = _naive_study_recipe(vols, "xyz".index(axis), size)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert 0 < len(got) < shape["xyz".index(axis)]  # the filter both keeps and drops slices here
    for (_, a), (_, b) in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------- building blocks


def test_scale_to_255_per_volume_max() -> None:
    v = np.array([[0, 1000], [2000, 4000]], np.int16)
    s = scale_to_255(v)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, np.array([[0, 63.75], [127.5, 255]], np.float32))
    assert scale_to_255(v, dtype=np.float64).dtype == np.float64


def test_scale_to_255_all_zero_volume_gives_zeros() -> None:
    s = scale_to_255(np.zeros((4, 4, 2), np.int16))
    assert s.dtype == np.float32 and not s.any()


def test_scale_to_255_rejects_nan_and_empty() -> None:
    with pytest.raises(InputError):
        scale_to_255(np.array([1.0, np.nan]))
    with pytest.raises(InputError):
        scale_to_255(np.zeros((0, 3)))


def test_seg_to_channel() -> None:
    out = seg_to_channel(np.array([0, 1, 2, 4], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0, 51, 102, 204])
    np.testing.assert_array_equal(seg_to_channel(np.array([4.0, 1.0])), [204, 51])  # nibabel gives floats


@pytest.mark.parametrize(
    ("labels", "shown"), [([0, 3], r"\[3\]"), ([0, 5, 7], r"\[5, 7\]"), ([0.5], r"\[0.5\]")]
)
def test_seg_to_channel_bad_labels(labels: list[float], shown: str) -> None:
    with pytest.raises(InputError, match=rf"segmentation has unexpected labels {shown}"):
        seg_to_channel(np.array(labels))


def test_pad_or_crop() -> None:
    img = np.arange(240 * 240, dtype=np.float32).reshape(1, 240, 240) + 1
    out = pad_or_crop(img, 256)
    assert out.shape == (1, 256, 256)
    np.testing.assert_array_equal(out[0, 8:248, 8:248], img[0])
    assert out[0, :8].sum() == 0 and out[0, 248:].sum() == 0 and out[0, :, :8].sum() == 0
    odd = pad_or_crop(np.ones((239, 239)), 256)  # 17 extra: 8 before, 9 after
    assert odd[8:247, 8:247].all() and not odd[7].any() and not odd[247].any()
    big = np.arange(260 * 250).reshape(260, 250)
    np.testing.assert_array_equal(pad_or_crop(big, 256)[:, 3:253], big[2:258])  # crop rows, pad columns
    assert pad_or_crop(np.ones((2, 3, 256, 256)), 256).shape == (2, 3, 256, 256)


# ---------------------------------------------------------------------------------- split


def test_split_subjects_study_counts() -> None:
    subjects = [f"BraTS20_Training_{i:03d}" for i in range(1, 370)]
    split = split_subjects(subjects, 56, seed=0)
    test = {s for s, v in split.items() if v == "test"}
    train = {s for s, v in split.items() if v == "train"}
    assert (len(train), len(test)) == (313, 56)
    assert not train & test and train | test == set(subjects)
    big = split_subjects([f"BraTS2021_{i:05d}" for i in range(1251)], 56, seed=0)
    assert sorted(big.values()).count("train") == 1195


def test_split_subjects_deterministic_and_seeded() -> None:
    subjects = [f"s{i:03d}" for i in range(369)]
    a = split_subjects(subjects, 56, seed=1)
    assert a == split_subjects(list(reversed(subjects)), 56, seed=1)  # input order does not matter
    b = split_subjects(subjects, 56, seed=2)
    assert a != b
    # documented algorithm: permutation of the sorted list, first 56 are test
    perm = np.random.default_rng(1).permutation(369)
    assert {s for s, v in a.items() if v == "test"} == {sorted(subjects)[i] for i in perm[:56]}


@pytest.mark.parametrize("n_test", [-1, 5, 6])
def test_split_subjects_rejects_bad_count(n_test: int) -> None:
    with pytest.raises(InputError, match="test_subjects"):
        split_subjects(list("abcde"), n_test, seed=0)


def test_split_subjects_zero_test_and_duplicates() -> None:
    assert set(split_subjects(list("abc"), 0, seed=0).values()) == {"train"}
    with pytest.raises(InputError, match="unique"):
        split_subjects(["a", "b", "a"], 1, seed=0)


# ---------------------------------------------------------------------------------- chest x-ray


def test_cxr_rgb_luminance_like_pillow() -> None:
    rgb = np.zeros((3, 2, 2), np.uint8)
    rgb[0, 0, 0] = 255  # red   -> 0.299 * 255 = 76.2  -> 76
    rgb[1, 0, 1] = 255  # green -> 0.587 * 255 = 149.7 -> 150
    rgb[2, 1, 0] = 255  # blue  -> 0.114 * 255 = 29.1  -> 29
    rgb[:, 1, 1] = 255  # white -> 255
    out = cxr_item(rgb, CxrRecipe(size=2))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2)
    np.testing.assert_array_equal(out[0], [[76, 150], [29, 255]])


def test_cxr_matches_pillow_pipeline_and_ignores_aspect() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 60, 40), dtype=np.uint8)
    out = cxr_item(rgb, CxrRecipe(size=32))
    ref = Image.fromarray(np.moveaxis(rgb, 0, -1)).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out[0], np.asarray(ref))
    assert cxr_item(rgb[:1], CxrRecipe()).shape == (1, 256, 256)


def test_cxr_uint8_not_rescaled() -> None:
    gray = np.full((1, 300, 200), 100, np.uint8)
    out = cxr_item(gray, CxrRecipe())
    assert out.shape == (1, 256, 256) and (out == 100).all()  # constant stays constant, no min/max stretch


def test_cxr_16bit_rescaled_by_min_max() -> None:
    img = np.array([[[1000, 3000], [5000, 5000]]], np.uint16)
    out = cxr_item(img, CxrRecipe(size=2))
    np.testing.assert_array_equal(out[0], [[0, 127], [255, 255]])  # (v - 1000) / 4000 * 255, truncated
    rgb16 = np.repeat(img, 3, axis=0)  # gray RGB: luminance = value
    np.testing.assert_array_equal(cxr_item(rgb16, CxrRecipe(size=2))[0], [[0, 127], [255, 255]])


def test_cxr_float32_output() -> None:
    img = np.array([[[1000, 3000], [5000, 5000]]], np.uint16)
    out = cxr_item(img, CxrRecipe(size=2, dtype="float32"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[0, 127.5], [255, 255]])


def test_cxr_rejects_bad_shapes() -> None:
    with pytest.raises(InputError, match="C in 1, 3, 4"):
        cxr_item(np.zeros((2, 8, 8), np.uint8), CxrRecipe())
    with pytest.raises(InputError):
        cxr_item(np.zeros((8, 8), np.uint8), CxrRecipe())


# ---------------------------------------------------------------------------------- generic


def test_generic_2d_no_resize_keeps_values() -> None:
    img = np.arange(12, dtype=np.uint16).reshape(1, 3, 4)
    ((index, item),) = generic_items(img, 2, GenericRecipe())
    assert index is None and item.dtype == np.uint16  # integer sources stay integer ('auto')
    np.testing.assert_array_equal(item, img)
    ((_, item32),) = generic_items(img, 2, GenericRecipe(dtype="float32"))
    assert item32.dtype == np.float32
    np.testing.assert_array_equal(item32, img)


def test_generic_2d_resize_per_channel() -> None:
    rng = np.random.default_rng(1)
    ch0 = rng.random((20, 30)).astype(np.float32)
    img = np.stack([ch0, 2 * ch0, np.full_like(ch0, 7)])
    ((_, item),) = generic_items(img, 2, GenericRecipe(size=8))
    assert item.shape == (3, 8, 8) and item.dtype == np.float32
    ref = np.asarray(Image.fromarray(ch0).resize((8, 8), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(item[0], ref, rtol=1e-6)
    np.testing.assert_allclose(item[1], 2 * item[0], rtol=1e-5)  # channels resized independently, linearly
    np.testing.assert_allclose(item[2], 7, rtol=1e-6)


def test_generic_3d_slices_and_volumes() -> None:
    vol = np.arange(2 * 4 * 5 * 6, dtype=np.float64).reshape(2, 4, 5, 6)
    items = generic_items(vol, 3, GenericRecipe(axis="y"))
    assert [i for i, _ in items] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(items[2][1], vol[:, :, 2, :])
    assert items[2][1].shape == (2, 4, 6) and items[2][1].dtype == np.float32
    ranged = generic_items(vol, 3, GenericRecipe(slice_range=(1, 3)))
    assert [i for i, _ in ranged] == [1, 2]
    ((index, whole),) = generic_items(vol, 3, GenericRecipe(volumes=True))
    assert index is None
    np.testing.assert_array_equal(whole, vol)
    ((_, part),) = generic_items(vol, 3, GenericRecipe(volumes=True, axis="x", slice_range=(1, 3), size=8))
    assert part.shape == (2, 2, 8, 8)
    resized = generic_items(vol, 3, GenericRecipe(size=8))
    assert all(item.shape == (2, 8, 8) for _, item in resized)
    np.testing.assert_array_equal(part[:, 0], generic_items(vol, 3, GenericRecipe(axis="x", size=8))[1][1])


def test_generic_uint8_and_errors() -> None:
    img = np.array([[[0, 128], [255, 3]]], np.uint8)
    ((_, item),) = generic_items(img, 2, GenericRecipe(dtype="uint8"))
    assert item.dtype == np.uint8
    np.testing.assert_array_equal(item, img)
    with pytest.raises(InputError, match=r"\[0, 255\]"):
        generic_items(img.astype(np.int16) * 10, 2, GenericRecipe(dtype="uint8"))
    with pytest.raises(InputError, match="spatial_dims"):
        generic_items(img, 4, GenericRecipe())
    with pytest.raises(InputError, match=r"\[C, X, Y, Z\]"):
        generic_items(img, 3, GenericRecipe())
    with pytest.raises(InputError, match="NaN"):
        generic_items(np.full((1, 2, 2), np.nan), 2, GenericRecipe())


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("t1c", "t1ce"), ("T1", "t1"), ("flare", "flair"), ("sge", "seg")]
)
def test_modality_typo_suggests_nearest(typo: str, suggestion: str) -> None:
    with pytest.raises(InputError, match=rf"did you mean '{suggestion}'"):
        BratsRecipe(modalities=("t2", typo))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"size": 0}, "size"),
        ({"size": 25.5}, "size"),
        ({"axis": "w"}, "axis"),
        ({"dtype": "uint16"}, "dtype"),
        ({"min_fraction": 1.5}, "min_fraction"),
        ({"min_fraction": float("nan")}, "min_fraction"),
        ({"t1_threshold": 300}, "t1_threshold"),
        ({"slice_range": (5, 2)}, "slice_range"),
        ({"slice_range": (1, 2, 3)}, "slice_range"),
        ({"modalities": ("t1", "t1")}, "repeat"),
        ({"modalities": ()}, "non-empty"),
        ({"modalities": "t1"}, "non-empty"),
        ({"volumes": "yes"}, "volumes"),
        ({"name": ""}, "name"),
    ],
)
def test_brats_recipe_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        BratsRecipe(**params)


def test_recipes_are_frozen_and_normalized() -> None:
    r = BratsRecipe(modalities=["t1", "seg"], slice_range=[2, 10])  # type: ignore[arg-type]
    assert r.modalities == ("t1", "seg") and r.slice_range == (2, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.size = 128  # type: ignore[misc]
    with pytest.raises(InputError):
        CxrRecipe(size=-1)
    with pytest.raises(InputError):
        GenericRecipe(axis="q")
    assert GenericRecipe(size=None).size is None


def test_get_recipe_and_round_trip() -> None:
    assert set(RECIPES) == {"study", "cxr", "generic"}
    assert get_recipe("study") == BratsRecipe()
    assert get_recipe("cxr", size=128) == CxrRecipe(size=128)
    for recipe in (
        BratsRecipe(slice_range=(1, 5), modalities=("t1", "flair")),
        CxrRecipe(),
        GenericRecipe(size=64),
    ):
        d = json.loads(json.dumps(recipe.to_dict()))
        assert get_recipe(d["kind"], **d) == recipe
    assert BratsRecipe().to_dict()["modalities"] == list(STUDY_CHANNELS)


def test_get_recipe_errors_suggest() -> None:
    with pytest.raises(InputError, match="did you mean 'study'"):
        get_recipe("studdy")
    with pytest.raises(InputError, match="did you mean 'size'"):
        get_recipe("cxr", sise=128)
    with pytest.raises(InputError, match="not 'cxr'"):
        get_recipe("cxr", kind="study")
