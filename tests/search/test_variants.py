"""Flips, masks, variant merging and shift re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from memscan.errors import InputError
from memscan.search.engine import SearchResult
from memscan.search.variants import (
    apply_mask,
    flip_lr,
    foreground_mask,
    merge_variants,
    shift_label,
    shift_rerank,
)


def result(values: list[list[float]], indices: list[list[int]]) -> SearchResult:
    return SearchResult(
        values=np.array(values, dtype=np.float64),
        indices=np.array(indices, dtype=np.int64),
        n_candidates=0,
        n_fallback=0,
        precision="float64",
        epsilon=0.0,
    )


def test_flip_lr_2d_mirrors_width() -> None:
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    f = flip_lr(a)
    assert f.shape == a.shape and f.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(f[..., 0], a[..., 4])
    np.testing.assert_array_equal(flip_lr(f), a)


def test_flip_lr_3d_mirrors_y_axis() -> None:
    """Volumes are stored PLS: Y (axis 3 of [n, C, X, Y, Z]) is the patient's right-left axis."""
    a = np.arange(1 * 2 * 3 * 4 * 5).reshape(1, 2, 3, 4, 5)
    f = flip_lr(a)
    np.testing.assert_array_equal(f[:, :, :, 0], a[:, :, :, 3])
    np.testing.assert_array_equal(f[..., 0], a[:, :, :, ::-1, 0])


def test_flip_lr_bad_shape() -> None:
    with pytest.raises(InputError, match=r"\(3, 4\)"):
        flip_lr(np.zeros((3, 4)))


def test_apply_mask_spatial_and_channel_masks() -> None:
    items = np.arange(2 * 2 * 3 * 3).reshape(2, 2, 3, 3)
    m = np.zeros((3, 3), dtype=bool)
    m[1, 1] = m[0, 2] = True
    out = apply_mask(items, m)
    assert out.shape == (2, 4)
    expected = [items[0, 0, 0, 2], items[0, 0, 1, 1], items[0, 1, 0, 2], items[0, 1, 1, 1]]
    np.testing.assert_array_equal(out[0], expected)
    mc = np.zeros((2, 3, 3), dtype=bool)
    mc[1, 2, 2] = True
    np.testing.assert_array_equal(apply_mask(items, mc), items[:, 1, 2, 2][:, None])


def test_apply_mask_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputError, match=r"\(4, 4\).*\(2, 2, 3, 3\)"):
        apply_mask(np.zeros((2, 2, 3, 3)), np.ones((4, 4), dtype=bool))


def test_apply_mask_rejects_non_bool_and_empty() -> None:
    with pytest.raises(InputError, match="boolean"):
        apply_mask(np.zeros((2, 1, 3, 3)), np.ones((3, 3)))
    with pytest.raises(InputError, match="no pixel"):
        apply_mask(np.zeros((2, 1, 3, 3)), np.zeros((3, 3), dtype=bool))


def test_foreground_mask() -> None:
    mean = np.array([[0.0, 0.04, 0.06], [1.0, 0.5, 0.0]])
    np.testing.assert_array_equal(foreground_mask(mean), [[False, False, True], [True, True, False]])
    with pytest.raises(InputError):
        foreground_mask(mean, fraction=1.5)
    with pytest.raises(InputError):
        foreground_mask(np.zeros((3, 3)))


def test_merge_variants_best_value_and_tie_rules() -> None:
    none = result([[0.9, 0.8, 0.7], [0.5, np.nan, np.nan]], [[1, 2, 3], [4, -1, -1]])
    flip = result([[0.95, 0.8, 0.6], [0.5, 0.4, np.nan]], [[3, 0, 2], [4, 7, -1]])
    v, i, tr = merge_variants([("none", none), ("flip", flip)], k=4)
    # query 0: item 3 best via flip (0.95); item 1 0.9; items 0 and 2 tie at 0.8 -> lower index 0 first
    assert i[0].tolist() == [3, 1, 0, 2]
    assert v[0].tolist() == [0.95, 0.9, 0.8, 0.8]
    assert tr[0].tolist() == ["flip", "none", "flip", "none"]  # item 2: equal 0.8 -> earlier variant 'none'
    # query 1: item 4 ties at 0.5 in both -> 'none'; padding
    assert i[1].tolist() == [4, 7, -1, -1]
    assert tr[1].tolist() == ["none", "flip", None, None]
    assert np.isnan(v[1, 2:]).all()
    v2, i2, tr2 = merge_variants([("flip", flip), ("none", none)], k=2)
    assert tr2[1, 0] == "flip"


def test_shift_label() -> None:
    assert shift_label(2, -1) == "shift(+2,-1)"
    assert shift_label(0, 3) == "shift(+0,+3)"


def test_shift_rerank_finds_planted_shift() -> None:
    rng = np.random.default_rng(0)
    h = w = 32
    base = rng.random((1, h + 8, w + 8))
    query = base[:, 4 : 4 + h, 4 : 4 + w]
    # train item 1 is the query moved by (dy, dx) = (+3, -2): query[y, x] == train[y - 3, x + 2]
    shifted = base[:, 4 + 3 : 4 + 3 + h, 4 - 2 : 4 - 2 + w]
    train = np.stack([rng.random((1, h, w)), shifted, query.copy()])
    best, shifts = shift_rerank(query, train, max_shift=4)
    assert shifts[1] == (3, -2)
    assert best[1] == pytest.approx(1.0, abs=1e-12)
    assert shifts[2] == (0, 0) and best[2] == pytest.approx(1.0, abs=1e-12)
    assert best[0] < 0.5


def test_shift_rerank_prefers_zero_shift_on_ties() -> None:
    # a constant-along-x image correlates equally at every dx: (0, 0) must win
    col = np.random.default_rng(1).random(16)
    img = np.repeat(col[:, None], 16, axis=1)[None]
    best, shifts = shift_rerank(img, img[None].copy(), max_shift=3)
    assert shifts == [(0, 0)]
    assert best[0] == pytest.approx(1.0)


def naive_shift_correlations(query: np.ndarray, item: np.ndarray, s: int) -> dict[tuple[int, int], float]:
    """Every shift's Pearson correlation on the cropped overlap, one crop at a time, in float64."""
    _, h, w = query.shape
    out = {}
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            a = query[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)].astype(np.float64)
            b = item[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)].astype(np.float64)
            a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
            out[(dy, dx)] = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    return out


@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_shift_rerank_matches_a_naive_crop_per_shift(dtype: str) -> None:
    """Best value and shift equal a naive crop-and-correlate over every shift (3 channels, 4 candidates)."""
    rng = np.random.default_rng(5)
    base = rng.random((3, 30, 33))
    query = base[:, 2:26, 3:30]
    items = np.stack([base[:, 4:28, 1:28], base[:, 0:24, 5:32], rng.random((3, 24, 27)), base[:, 2:26, 3:30]])
    if dtype == "uint8":
        query, items = np.rint(query * 255).astype(np.uint8), np.rint(items * 255).astype(np.uint8)
    best, shifts = shift_rerank(query, items, max_shift=3)
    for i in range(len(items)):
        ref = naive_shift_correlations(query, items[i], 3)
        top = max(ref.values())
        assert best[i] == pytest.approx(top, abs=1e-12)
        assert ref[shifts[i]] == pytest.approx(top, abs=1e-12)
    assert shifts[0] == (2, -2) and shifts[1] == (-2, 2) and shifts[3] == (0, 0)


def test_shift_rerank_int8_chunks_long_items(monkeypatch) -> None:
    """Items longer than one int8 chunk (131,064 terms) are summed chunk by chunk, exactly."""
    from memscan.search import variants

    rng = np.random.default_rng(6)
    query = rng.integers(0, 256, size=(2, 12, 13), dtype=np.uint8)
    items = np.stack(
        [np.roll(query, (1, -2), axis=(1, 2)), rng.integers(0, 256, size=(2, 12, 13), dtype=np.uint8)]
    )
    whole = shift_rerank(query, items, max_shift=2)
    monkeypatch.setattr(variants, "_INT8_TERMS", 64)  # 312 values: 5 chunks
    chunked = shift_rerank(query, items, max_shift=2)
    np.testing.assert_array_equal(chunked[0], whole[0])
    assert chunked[1] == whole[1] and whole[1][0] == (-1, 2)  # query[y, x] == item[y + 1, x - 2]
    for i in range(2):
        assert whole[0][i] == pytest.approx(
            max(naive_shift_correlations(query, items[i], 2).values()), abs=1e-12
        )


def test_shift_rerank_validation() -> None:
    with pytest.raises(InputError):
        shift_rerank(np.zeros((1, 8, 8)), np.zeros((2, 1, 8, 9)), 1)
    with pytest.raises(InputError):
        shift_rerank(np.zeros((1, 8, 8)), np.zeros((2, 1, 8, 8)), 7)


def test_check_max_shift_requires_half_of_each_axis() -> None:
    from memscan.errors import InputError
    from memscan.search.variants import MIN_OVERLAP_FRACTION, check_max_shift

    assert MIN_OVERLAP_FRACTION == 0.5
    check_max_shift(0, (16, 16))
    check_max_shift(8, (16, 16))  # 8 of 16 rows still overlap
    check_max_shift(8, (17, 40))
    for bad in (9, 15, 16, 40):
        with pytest.raises(InputError, match=r"max_shift \d+ is too large for 16x16 images.*at most 8"):
            check_max_shift(bad, (16, 16))
    with pytest.raises(InputError, match="--max-shift 20 is too large for 40x33"):
        check_max_shift(20, (40, 33), name="--max-shift")
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="integer >= 0"):
            check_max_shift(bad, (16, 16))
    with pytest.raises(InputError, match="2D images only"):
        check_max_shift(1, (8, 8, 8))


def test_large_shifts_no_longer_make_noise_a_copy() -> None:
    """Pure 16x16 noise scored r = 1.0 at a shift of 15 (a 1-pixel overlap); such shifts are refused, and
    within the allowed range unrelated noise stays far from a copy."""
    from memscan.errors import InputError

    rng = np.random.default_rng(3)
    query = rng.random((1, 16, 16))
    items = rng.random((20, 1, 16, 16))
    with pytest.raises(InputError, match="too large"):
        shift_rerank(query, items, max_shift=15)
    best, _ = shift_rerank(query, items, max_shift=8)
    assert best.max() < 0.8
