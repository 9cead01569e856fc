"""Exactness of the blockwise screen + re-rank search against a naive float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memscan.errors import InputError
from memscan.search import engine, limits
from memscan.search import precision as precision_module
from memscan.search.engine import (
    SearchResult,
    exact_correlation,
    item_stats,
    resolve_precision,
    screen_epsilon,
    search_topk,
)

# --------------------------------------------------------------------------------------------------
# helpers


def reference_topk(q: np.ndarray, t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Naive float64 brute force: centre, normalise, full matrix, stable sort by (-value, index)."""

    def normalise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = a.astype(np.float64)
        c = a - a.mean(axis=1, keepdims=True)
        n = np.sqrt((c * c).sum(axis=1))
        valid = (n > 0) & (a.max(axis=1) != a.min(axis=1))
        z = np.zeros_like(c)
        z[valid] = c[valid] / n[valid, None]
        return z, valid

    zq, qv = normalise(q)
    zt, tv = normalise(t)
    # elementwise products summed per pair (no BLAS): identical rows give identical values
    full = np.stack([(zt * zq[i]).sum(axis=1) for i in range(len(zq))]) if len(zq) else np.zeros((0, len(zt)))
    vals = np.full((len(q), k), np.nan)
    idx = np.full((len(q), k), -1, dtype=np.int64)
    cols = np.flatnonzero(tv)
    for i in np.flatnonzero(qv):
        row = full[i, cols]
        order = np.lexsort((cols, -row))[:k]
        vals[i, : len(order)] = row[order]
        idx[i, : len(order)] = cols[order]
    return vals, idx


def blocks_of(t: np.ndarray, size: int):
    def gen():
        for s in range(0, len(t), size):
            yield s, t[s : s + size]

    return gen


def check_against_reference(res: SearchResult, q: np.ndarray, t: np.ndarray, k: int) -> None:
    ref_v, ref_i = reference_topk(q, t, k)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.values, ref_v, atol=1e-6, rtol=0, equal_nan=True)
    assert res.values.dtype == np.float64 and res.indices.dtype == np.int64


def assert_same(a: SearchResult, b: SearchResult) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)  # bitwise (NaN == NaN here)


def smooth_field(shape: tuple[int, ...], sigma_px: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise (via FFT; one sigma per axis, in pixels), scaled to [0, 1]."""
    noise = rng.standard_normal(shape)
    freq = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    r2 = sum((s * f) ** 2 for s, f in zip(sigma_px, freq, strict=True))
    f = np.real(np.fft.ifftn(np.fft.fftn(noise) * np.exp(-2 * np.pi**2 * r2)))
    return (f - f.min()) / (f.max() - f.min())


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((40, 256))
    t = rng.standard_normal((300, 256))
    t[5:15] = q[:10] + 0.3 * rng.standard_normal((10, 256))  # a few real neighbours
    return q, t


@pytest.fixture(scope="module")
def near_ties():
    """uint8 slices of one smooth 3D field: neighbours correlate ≥ 0.99 and differ by < 1e-3."""
    rng = np.random.default_rng(2)
    vol = smooth_field((160, 32, 32), sigma_px=(12.0, 3.0, 3.0), rng=rng)
    vol = np.round(vol * 250).astype(np.uint8)
    slices = vol.reshape(160, -1)
    t = slices[::2].copy()  # 80 train slices
    q = slices[1::2][:30].astype(np.int16) + rng.integers(-1, 2, size=(30, slices.shape[1]))
    q = np.clip(q, 0, 255).astype(np.uint8)
    return q, t


# --------------------------------------------------------------------------------------------------
# statistics and the exact routine


def test_item_stats_constant_rows_and_dtypes() -> None:
    a = np.array([[0.1, 0.1, 0.1], [1, 2, 3], [5, 5, 5]], dtype=np.float64)
    mean, norm = item_stats(a)
    assert norm[0] == 0.0 and norm[2] == 0.0
    assert mean[0] == 0.1 and mean[2] == 5.0
    np.testing.assert_allclose(mean[1], 2.0)
    np.testing.assert_allclose(norm[1], np.sqrt(2.0))
    m8, n8 = item_stats(a.astype(np.uint8))
    assert m8.dtype == np.float64 and n8.dtype == np.float64


def test_item_stats_and_exact_values_do_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((70, 5000)) * 100 + 7
    m_all, n_all = item_stats(a)
    for i in (0, 33, 69):
        m1, n1 = item_stats(a[i : i + 1])
        assert m1[0] == m_all[i] and n1[0] == n_all[i]
    qi = np.repeat(np.arange(5), 70)
    ti = np.tile(np.arange(70), 5)
    many = exact_correlation(a, m_all, n_all, qi, a, m_all, n_all, ti)
    one = [
        exact_correlation(a, m_all, n_all, qi[p : p + 1], a, m_all, n_all, ti[p : p + 1])[0]
        for p in (0, 77, 349)
    ]
    assert one == [many[0], many[77], many[349]]


def test_long_rows_are_summed_in_segments_exactly(near_ties, monkeypatch) -> None:
    """Rows longer than ``_SEGMENT`` (3D volumes) take the segmented statistics and exact routine: the same
    values as the float64 reference (1e-12), constant rows excluded, and bitwise the same results for every
    block size and float precision (here with 100-value segments, so d = 1,024 has 11)."""
    monkeypatch.setattr(limits, "_SEGMENT", 100)
    q, t = (a.astype(np.float32) for a in near_ties)
    t = t.copy()
    t[3] = 77.0  # constant
    mean, norm = item_stats(t)
    f = t.astype(np.float64)
    np.testing.assert_allclose(mean, f.mean(axis=1), rtol=1e-13)
    want = np.sqrt(((f - f.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    np.testing.assert_allclose(norm, want, rtol=1e-12)
    assert norm[3] == 0.0 and mean[3] == 77.0
    for i in (0, 3, 79):  # independent of the block the row sits in
        m1, n1 = item_stats(t[i : i + 1])
        assert (m1[0], n1[0]) == (mean[i], norm[i])
    z = np.empty(t.shape, dtype=np.float32)
    engine._map_rows(t, z)
    np.testing.assert_array_equal(z[3], 0.0)
    np.testing.assert_allclose(z[0], ((f[0] - mean[0]) / norm[0]).astype(np.float32), rtol=1e-6)
    z2 = np.full(t.shape, np.nan, dtype=np.float32)  # the queries' normalisation: the same values
    engine._fill_normalised(t, mean, norm, engine._valid(mean, norm), z2)
    np.testing.assert_array_equal(z2, z)
    base = search_topk(q, blocks_of(t, len(t)), 4, precision="float64")
    check_against_reference(base, q, t, 4)
    for precision in ("bf16", "float32"):
        for bs in (1, 13, len(t)):
            assert_same(search_topk(q, blocks_of(t, bs), 4, precision=precision), base)


# --------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("precision", ["bf16", "float32", "float64"])
def test_gaussian_matches_reference(gaussian, precision: str) -> None:
    q, t = gaussian
    res = search_topk(q, blocks_of(t, 64), 5, precision=precision)
    check_against_reference(res, q, t, 5)
    assert res.precision == precision and res.epsilon == screen_epsilon(precision, 256, engine.SCREEN_CHUNK)


def test_near_ties_all_block_sizes_and_precisions_identical(near_ties) -> None:
    q, t = near_ties
    k = 6
    ref_v, _ = reference_topk(q, t, k)
    assert np.min(ref_v[:, 0]) > 0.99
    assert np.max(ref_v[:, 0] - ref_v[:, 1]) < 1e-3  # the two best differ by less than 1e-3
    base = search_topk(q, blocks_of(t, len(t)), k, precision="float64")
    check_against_reference(base, q, t, k)
    for precision in ("bf16", "float64"):
        for bs in (1, 7, 64, len(t)):
            res = search_topk(q, blocks_of(t, bs), k, precision=precision)
            assert_same(res, base)
    assert search_topk(q, blocks_of(t, 64), k, precision="fp16").indices.tolist() == base.indices.tolist()


def test_exact_duplicates_lower_index_wins() -> None:
    rng = np.random.default_rng(4)
    t = rng.integers(0, 256, size=(50, 4096)).astype(np.uint8)
    t[30] = t[7]
    t[41] = t[7]
    q = t[[7]].copy()
    for precision in ("bf16", "float64"):
        res = search_topk(q, blocks_of(t, 16), 3, precision=precision)
        assert res.indices[0].tolist() == [7, 30, 41]
        assert res.values[0, 0] == res.values[0, 1] == res.values[0, 2]
    check_against_reference(res, q, t, 3)


def test_scalings_and_offsets_are_exact_ties() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 100, size=4096).astype(np.float64)  # d = 2^12: integer means are exact
    others = rng.integers(0, 100, size=(20, 4096)).astype(np.float64)
    t = np.vstack([others[:10], 4.0 * base + 17.0, others[10:], base, 0.5 * base - 3.0])  # rows 10, 21, 22
    q = (base + rng.normal(0, 5, size=4096))[None]
    res = search_topk(q, blocks_of(t, 4), 3, precision="bf16")
    assert res.indices[0].tolist() == [10, 21, 22]
    assert res.values[0, 0] == res.values[0, 1] == res.values[0, 2]
    check_against_reference(res, q, t, 3)


def test_constant_rows_are_excluded_and_padding() -> None:
    rng = np.random.default_rng(6)
    t = rng.standard_normal((12, 64))
    t[[2, 5, 6, 9, 11]] = 3.25  # constant train rows
    t[0] = 0.1  # constant, with an inexact float64 mean
    q = rng.standard_normal((4, 64))
    q[1] = 7.0  # constant query
    q[3, :] = np.nan  # non-finite query
    k = 8  # > 6 valid train items
    for precision in ("bf16", "float64"):
        res = search_topk(q, blocks_of(t, 5), k, precision=precision)
        valid = {1, 3, 4, 7, 8, 10}
        for row in (0, 2):
            assert set(res.indices[row, :6].tolist()) == valid
            assert res.indices[row, 6:].tolist() == [-1, -1]
            assert np.isnan(res.values[row, 6:]).all() and np.isfinite(res.values[row, :6]).all()
        for row in (1, 3):
            assert res.indices[row].tolist() == [-1] * k and np.isnan(res.values[row]).all()
    check_against_reference(search_topk(q[[0, 2]], blocks_of(t, 5), k), q[[0, 2]], t, k)


def test_candidate_cap_fallback_gives_identical_results(near_ties) -> None:
    q, t = near_ties
    normal = search_topk(q, blocks_of(t, 32), 4, precision="bf16")
    forced = search_topk(q, blocks_of(t, 32), 4, precision="bf16", candidate_cap=1)
    assert forced.n_fallback > 0
    assert forced.n_candidates >= normal.n_candidates
    assert_same(forced, normal)


def test_large_d_chunked_reduction() -> None:
    rng = np.random.default_rng(7)
    d = 200_000
    t = rng.integers(0, 1000, size=(24, d)).astype(np.uint16)
    q = t[[3, 17]].astype(np.float32) + rng.normal(0, 200, size=(2, d)).astype(np.float32)
    res = {}
    for precision, chunk in (("bf16", 65536), ("bf16", 16384), ("float64", 65536)):
        res[(precision, chunk)] = search_topk(q, blocks_of(t, 10), 3, precision=precision, chunk=chunk)
    base = res[("float64", 65536)]
    check_against_reference(base, q, t, 3)
    assert base.indices[:, 0].tolist() == [3, 17]
    for r in res.values():
        assert_same(r, base)


def test_progress_and_validation(gaussian) -> None:
    q, t = gaussian
    seen: list[int] = []
    search_topk(q, blocks_of(t, 100), 2, progress=seen.append)
    assert seen == [100, 100, 100]
    with pytest.raises(InputError):
        search_topk(q, blocks_of(t, 100), 0)
    with pytest.raises(InputError, match="did you mean 'bf16'"):
        search_topk(q, blocks_of(t, 100), 2, precision="bf61")
    with pytest.raises(InputError, match="d=256"):
        search_topk(q, lambda: iter([(0, t[:, :10])]), 2)
    with pytest.raises(InputError, match="expected start 0"):
        search_topk(q, lambda: iter([(5, t)]), 2)
    with pytest.raises(InputError):
        resolve_precision("tf32", "cpu")


def test_resolve_precision() -> None:
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") in ("bf16", "float32")
    assert resolve_precision("float64", "cpu") == "float64"


# --------------------------------------------------------------------------------------------------
# the bound itself


def _screen_error(x: np.ndarray, y: np.ndarray, precision: str, chunk: int) -> float:
    """Max |screened - exact| of the engine's screen for the normalised rows of x against y."""
    mx, nx = item_stats(x)
    my, ny = item_stats(y)
    sc = engine._Screen(x, mx, nx, engine._valid(mx, nx), precision, "cpu", chunk, 1)
    out = sc.screen(sc.prepare(0, y))
    s = out.scores.double().numpy()
    qi = np.repeat(np.arange(len(x)), len(y))
    ti = np.tile(np.arange(len(y)), len(x))
    exact = exact_correlation(x, mx, nx, qi, y, my, ny, ti).reshape(len(x), len(y))
    return float(np.max(np.abs(s - exact)))


def adversarial(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """A few huge entries plus sign-alternating tiny ones, and values that round badly in bf16."""
    a = np.empty((n, d))
    signs = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a[i] = signs * (1 + 2.0**-9) * 1e-3  # bf16 round-to-even worst case, alternating
            a[i, rng.integers(0, d, 3)] = rng.choice([-1.0, 1.0], 3) * 50.0
        elif kind == 1:
            a[i] = (1 + 2.0**-9 + rng.random(d) * 2.0**-12) * signs
        else:
            a[i] = rng.standard_normal(d) * np.exp(rng.normal(0, 3, d))
    return a


def worst_rounding_row(d: int, precision: str) -> np.ndarray:
    """Zero-mean, unit-norm row whose entries nearly all round DOWN by ≈ u (relative) in the format.

    Entries are ±α (α = (1 + u - 64u²)·2^e, just below a rounding midpoint) and ±β with β chosen so the
    norm is 1 and β also rounds down as much as possible; signs alternate so the mean is 0. Then
    ``x̃·x̃ ≈ (1 - u)²``: the input-rounding part of ε is attained, not just bounded.
    """
    u = {"bf16": 2.0**-8, "fp16": 2.0**-11}[precision]
    fmt = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    m = 1 + u - 64 * u * u
    best = (-1.0, 0.0, 0, 0.0)
    n_a = np.arange(2, d, 2)
    for e in range(-int(np.log2(d)) // 2 - 3, 0):
        alpha = m * 2.0**e
        rest = 1 - n_a * alpha**2
        ok = rest > 0
        beta = np.sqrt(rest[ok] / (d - n_a[ok]))
        beta = beta[beta > 2.0**-13]  # stay clear of subnormals
        if beta.size == 0:
            continue
        rounded = torch.from_numpy(beta).to(fmt).double().numpy()
        rel = (beta - rounded) / beta
        i = int(np.argmax(rel))
        if rel[i] > best[0]:
            best = (float(rel[i]), alpha, int(n_a[ok][i]), float(beta[i]))
    _, alpha, na, beta = best
    row = np.full(d, beta)
    row[:na] = alpha
    row[1::2] *= -1
    return row


@pytest.mark.parametrize(("precision", "d"), [("bf16", 4096), ("bf16", 300_000), ("fp16", 16384)])
def test_worst_case_rounding_attains_most_of_epsilon(precision: str, d: int) -> None:
    r = worst_rounding_row(d, precision)
    x = r[None]
    y = np.vstack([r, -r, np.roll(r, 2)])
    err = _screen_error(x, y, precision, 65536)
    eps = screen_epsilon(precision, d, 65536)
    assert err <= eps, (err, eps)
    if precision == "bf16":
        assert err >= 0.45 * eps  # the bound is not loose by orders of magnitude


@pytest.mark.parametrize(
    ("precision", "d", "chunk"),
    [
        ("bf16", 4096, 65536),
        ("bf16", 131_072, 65536),
        ("bf16", 300_000, 65536),
        ("bf16", 300_000, 16384),
        ("fp16", 16384, 65536),
        ("float32", 65536, 65536),
        ("float64", 16384, 65536),
    ],
)
def test_observed_screen_error_within_epsilon(precision: str, d: int, chunk: int) -> None:
    rng = np.random.default_rng(d + chunk)
    x = adversarial(6, d, rng)
    y = np.vstack([x, adversarial(6, d, rng)[::-1], -x[:2]])
    err = _screen_error(x, y, precision, chunk)
    eps = screen_epsilon(precision, d, chunk)
    assert err <= eps, (err, eps)
    assert err > 0 or precision == "float64"


def test_epsilon_values() -> None:
    assert 8.8e-3 < screen_epsilon("bf16", 16384, rounded_output=False) < 8.82e-3  # ARCHITECTURE.md §4
    assert screen_epsilon("bf16", 16384) > screen_epsilon("bf16", 16384, rounded_output=False)
    assert screen_epsilon("bf16", 327_680, 16384) < screen_epsilon("bf16", 327_680, 65536)
    assert screen_epsilon("float64", 327_680) < 1e-10
    with pytest.raises(InputError):
        screen_epsilon("bf16", 10**9, 10**9)


# --------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32", "float32", "float64"])
def test_cuda_identical_to_cpu(near_ties, gaussian, precision: str) -> None:
    for q, t in (near_ties, gaussian):
        cpu = search_topk(q, blocks_of(t, 17), 5, precision="float64", device="cpu")
        gpu = search_topk(q, blocks_of(t, 17), 5, precision=precision, device="cuda")
        assert_same(gpu, cpu)


# --------------------------------------------------------------------------------------------------
# the exact integer path (uint8 items)


def test_auto_takes_the_integer_path_for_uint8() -> None:
    assert resolve_precision("auto", "cpu", np.uint8, 1000) == "int8"
    assert resolve_precision("auto", "cpu", np.float32, 1000) != "int8"
    assert resolve_precision("auto", "cpu", np.uint8, engine.INT8_MAX_D + 1) != "int8"
    with pytest.raises(InputError, match="uint8"):
        resolve_precision("int8", "cpu", np.float32, 1000)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_int8_near_ties_exact_for_every_block_size(near_ties, block: int) -> None:
    q, t = near_ties
    res = search_topk(q, blocks_of(t, block), 5, precision="int8")
    assert res.precision == "int8" and res.epsilon == 0.0
    check_against_reference(res, q, t, 5)
    # the float32 ranking prunes: a handful of exact evaluations per query and block, not all pairs
    assert res.n_candidates <= 2 * 5 * len(q) * -(-len(t) // block)
    assert_same(res, search_topk(q, blocks_of(t, len(t)), 5, precision="int8"))
    # agrees with the float64 routine to rounding (a different exact formula: not bitwise)
    f64 = search_topk(q, blocks_of(t, block), 5, precision="float64")
    np.testing.assert_array_equal(res.indices, f64.indices)
    np.testing.assert_allclose(res.values, f64.values, atol=1e-13, rtol=0)


def test_int8_ties_constants_and_padding() -> None:
    rng = np.random.default_rng(7)
    t = rng.integers(0, 256, size=(40, 333), dtype=np.uint8)  # d not a multiple of 8
    t[9] = t[4]  # exact duplicate: the lower index must win
    t[20] = 17  # constant: never matched
    q = np.concatenate([t[[4, 20]], rng.integers(0, 256, size=(3, 333), dtype=np.uint8)])
    res = search_topk(q, blocks_of(t, 6), 3, precision="int8")
    assert list(res.indices[0, :2]) == [4, 9] and res.values[0, 0] == res.values[0, 1] == 1.0
    assert (res.indices[1] == -1).all() and np.isnan(res.values[1]).all()  # constant query
    assert 20 not in res.indices
    check_against_reference(res, q, t, 3)
    # k larger than the valid items pads with -1 / NaN
    small = search_topk(q[:1], blocks_of(t[:3], 2), 5, precision="int8")
    assert sorted(small.indices[0, :3]) == [0, 1, 2] and list(small.indices[0, 3:]) == [-1, -1]
    assert np.isnan(small.values[0, 3:]).all()


def test_int8_long_items_are_chunked_exactly() -> None:
    """d above one int8 chunk (131,064): chunk sums are added exactly in int64."""
    rng = np.random.default_rng(8)
    d = engine.INT8_CHUNK + 5_000
    t = rng.integers(0, 256, size=(6, d), dtype=np.uint8)
    t[3] = 255 - t[1]  # correlation exactly -1 with item 1
    q = np.concatenate([t[[1]], np.full((1, d), 255, np.uint8) - t[[1]]])
    res = search_topk(q, blocks_of(t, 4), 6, precision="int8")
    check_against_reference(res, q, t, 6)
    assert res.values[0, 0] == 1.0 and res.values[0, -1] == -1.0 and res.indices[0, -1] == 3


def adversarial_uint8(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Items that stress the int8 path's float32 ranking: near-constant items with extreme means (large
    α = √(1 + mean'²/variance)), full-range binary items, scaled copies (exact ties) and plain noise."""
    x = rng.integers(0, 256, size=(n, d), dtype=np.uint8)
    x[0] = 255
    x[0, :3] = 254  # almost white: α ≈ 1.5e3
    x[1] = 0
    x[1, 5] = 1  # almost black
    x[2] = np.where(rng.random(d) < 0.5, 0, 255)  # maximal variance
    x[3] = x[2] // 2  # an exact positive tie with item 2 (r = 1)
    x[4] = 255 - x[2]  # r = -1
    x[5] = np.clip(x[6].astype(np.int16) + rng.integers(-1, 2, d), 0, 255)  # a near copy of item 6
    return x


def test_int8_ranking_error_within_its_proven_bound() -> None:
    """|G - r·√V_q| <= ε_q for every pair of a block, G being the float32 ranking the int8 path screens."""
    rng = np.random.default_rng(11)
    for d in (64, 4099):
        t = adversarial_uint8(rng, 40, d)
        q = np.concatenate([adversarial_uint8(rng, 12, d), t[:6]])
        sc = engine._IntScreen(q, "cpu", 3)
        prep = sc.prepare(0, t)
        screened = sc.screen(prep)
        eps = sc.epsilon(prep)
        ref = np.array(
            [[float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]) for b in t] for a in q]
        )
        g = screened.scores.numpy().astype(np.float64)
        h = ref * sc.q_root[:, None]
        err = np.abs(g - h)[np.ix_(sc.q_valid, prep.valid)]
        assert (err <= eps[sc.q_valid, None]).all()
        # one near-constant item with an extreme mean widens its block's bound (more candidates, never a
        # wrong result); a block of ordinary items has a tight one
        rel = eps / sc.q_root
        assert rel[0] > 100 * rel[6:12].max()
        assert (sc.epsilon(sc.prepare(0, t[6:])) / sc.q_root)[6:12].max() < 1e-5
        # and the exact values from the integer products match the float64 reference
        pairs = torch.tensor(
            [[i, j] for i in range(len(q)) for j in range(len(t)) if sc.q_valid[i] and prep.valid[j]]
        )
        vals = sc.exact(screened, pairs[:, 0], pairs[:, 1])
        np.testing.assert_allclose(vals, ref[pairs[:, 0], pairs[:, 1]], atol=1e-12, rtol=0)


@pytest.mark.parametrize("block", [1, 5, 40])
def test_int8_adversarial_items_exact(block: int) -> None:
    rng = np.random.default_rng(12)
    t = adversarial_uint8(rng, 40, 515)
    q = np.concatenate([t[:8], adversarial_uint8(rng, 8, 515)])
    res = search_topk(q, blocks_of(t, block), 4, precision="int8")
    # queries 2 and 3 have an exact tie at r = 1 (items 2 and 3), which the float64 reference's own
    # rounding may order either way; the integer path computes both as exactly 1 and the lower index wins
    for row in (2, 3):
        assert list(res.indices[row, :2]) == [2, 3] and res.values[row, 0] == res.values[row, 1] == 1.0
    rows = np.r_[0:2, 4 : len(q)]
    ref_v, ref_i = reference_topk(q[rows], t, 4)
    np.testing.assert_array_equal(res.indices[rows], ref_i)
    np.testing.assert_allclose(res.values[rows], ref_v, atol=1e-6, rtol=0, equal_nan=True)
    f64 = search_topk(q, blocks_of(t, block), 4, precision="float64")
    np.testing.assert_array_equal(res.indices[rows], f64.indices[rows])
    np.testing.assert_allclose(res.values, f64.values, atol=1e-13, rtol=0)
    assert_same(res, search_topk(q, blocks_of(t, 40), 4, precision="int8"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")
def test_cuda_int8_identical_to_cpu(near_ties) -> None:
    q, t = near_ties
    cpu = search_topk(q, blocks_of(t, 17), 5, precision="int8", device="cpu")
    gpu = search_topk(q, blocks_of(t, 17), 5, precision="int8", device="cuda")
    assert_same(gpu, cpu)


@pytest.mark.parametrize("precision", ["int8", "bf16", "float64"])
def test_exclusion_groups_for_train_vs_train_baselines(near_ties, precision: str) -> None:
    """Train against itself: excluding the item itself, and excluding its whole group (subject)."""
    _, t = near_ties
    n = len(t)
    subject = np.arange(n) // 8  # 10 "subjects" of 8 neighbouring slices
    ref_v, ref_i = reference_topk(t, t, n)
    for groups in (np.arange(n), subject):
        res = search_topk(
            t,
            blocks_of(t, 13),
            3,
            precision=precision,
            query_groups=groups,
            train_groups=groups,
            candidate_cap=5,
        )
        for q in range(n):
            allowed = groups[ref_i[q]] != groups[q]
            exp_i, exp_v = ref_i[q][allowed][:3], ref_v[q][allowed][:3]
            np.testing.assert_array_equal(res.indices[q], exp_i)
            np.testing.assert_allclose(res.values[q], exp_v, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="go together"):
        search_topk(t, blocks_of(t, 13), 3, query_groups=subject)


@pytest.mark.parametrize("chunk", [engine.INT8_CHUNK, 104])
def test_device_int8_block_matches_the_host_statistics(chunk: int, monkeypatch) -> None:
    """The GPU path's conversion (run here on CPU tensors) equals the host path bit for bit, also when the
    host splits long items into chunk-major tensors (reused across blocks of different sizes)."""
    monkeypatch.setattr(limits, "INT8_CHUNK", chunk)
    rng = np.random.default_rng(9)
    raw = rng.integers(0, 256, size=(13, 301), dtype=np.uint8)
    raw[5] = 200  # constant
    sc = engine._IntScreen(raw[:3], "cpu", 2)
    assert len(sc.bounds) == (1 if chunk > 304 else 3)
    sc._to_int8(
        rng.integers(0, 256, size=(16, 301), dtype=np.uint8), pad_rows=16, reuse=True
    )  # dirty buffers
    z_host, s1_host, var_host, _ = sc._to_int8(raw, pad_rows=16, reuse=True)
    z_dev, s1_dev, var_dev = engine.int8_block(torch.from_numpy(raw), sc.dp, 16)
    np.testing.assert_array_equal(z_dev.numpy(), torch.cat(z_host, dim=1).numpy())
    z_q, s1_q, var_q, _ = sc._int8_on_device(raw, 16)  # the queries' conversion on CUDA, run here on the CPU
    assert [c.shape for c in z_q] == [c.shape for c in z_host]
    np.testing.assert_array_equal(torch.cat(z_q, dim=1).numpy(), torch.cat(z_host, dim=1).numpy())
    np.testing.assert_array_equal(s1_q, s1_host)
    np.testing.assert_array_equal(var_q, var_host)
    np.testing.assert_array_equal(s1_dev.numpy(), s1_host)
    np.testing.assert_array_equal(var_dev.numpy(), var_host)
    assert var_dev[5] == 0
    # and both equal the sums computed naively in int64
    wide = raw.astype(np.int64) - 128
    np.testing.assert_array_equal(s1_host[:13], wide.sum(axis=1))
    np.testing.assert_array_equal(var_host[:13], 301 * (wide**2).sum(axis=1) - wide.sum(axis=1) ** 2)


# --------------------------------------------------------------------------------------------------
# 'auto' on float data: bf16, or float32 when bf16 would leave too many pairs for the exact re-rank


def test_auto_switches_to_float32_when_bf16_leaves_many_pairs(near_ties, monkeypatch) -> None:
    """Near-tie float items: the bf16 screen's margin covers most of each block, so 'auto' screens in
    float32; the result is the float64 brute force's, identical to a float32 and a bf16 scan."""
    monkeypatch.setattr(precision_module, "_cpu_has_bf16", lambda: True)
    q, t = (a.astype(np.float32) for a in near_ties)
    res = search_topk(q, blocks_of(t, 16), 3, precision="auto")
    assert (res.switched_from, res.precision) == ("bf16", "float32")
    check_against_reference(res, q, t, 3)
    assert_same(res, search_topk(q, blocks_of(t, 16), 3, precision="float32"))
    bf16 = search_topk(q, blocks_of(t, 16), 3, precision="bf16")
    assert bf16.switched_from is None and bf16.n_candidates > res.n_candidates
    assert_same(res, bf16)
    groups = np.arange(len(q)), np.arange(len(t)) + 1000  # exclusion groups survive the switch
    grouped = search_topk(
        q, blocks_of(t, 16), 3, precision="auto", query_groups=groups[0], train_groups=groups[1]
    )
    assert grouped.switched_from == "bf16"
    assert_same(res, grouped)


def test_auto_keeps_bf16_when_it_prunes(monkeypatch) -> None:
    """Each query's near copy stands far above the rest: the bf16 screen leaves (almost) nothing beyond the
    top-k, so 'auto' keeps it, first block included."""
    monkeypatch.setattr(precision_module, "_cpu_has_bf16", lambda: True)
    rng = np.random.default_rng(5)
    t = rng.standard_normal((300, 512)).astype(np.float32)
    q = t[rng.permutation(64)[:40]] + 0.3 * rng.standard_normal((40, 512)).astype(np.float32)
    res = search_topk(q, blocks_of(t, 64), 1, precision="auto")
    assert (res.switched_from, res.precision) == (None, "bf16")
    check_against_reference(res, q, t, 1)
    assert_same(res, search_topk(q, blocks_of(t, 64), 1, precision="bf16"))


def test_train_set_as_array_or_plain_iterable_of_blocks(near_ties) -> None:
    """Like faiss' knn_ground_truth: an array, or a plain iterable of blocks, give the callable's result."""
    q, t = near_ties
    base = search_topk(q, blocks_of(t, 16), 3)
    assert_same(base, search_topk(q, t, 3))
    assert_same(base, search_topk(q, (t[s : s + 7] for s in range(0, len(t), 7)), 3))
    assert_same(base, search_topk(q, [(s, t[s : s + 9]) for s in range(0, len(t), 9)], 3))
    with pytest.raises(InputError, match="contiguous"):
        search_topk(q, [(0, t[:5]), (6, t[6:])], 3)


def test_one_tie_rule_for_every_merge() -> None:
    """The engine's running merge, the cluster's shard merge and select_topk break ties the same way."""
    from memscan.search.topk import RunningTopK, merge_topk, select_topk

    q = np.array([0, 0, 0, 0, 1, 1])
    v = np.array([0.5, 0.9, 0.9, 0.1, 0.3, 0.3])
    t = np.array([4, 7, 2, 9, 5, 1])
    vals, idx, _ = select_topk(q, v, t, 2, 3)
    assert idx.tolist() == [[2, 7, 4], [1, 5, -1]]
    run = RunningTopK(2, 3)
    run.add(q[:3], t[:3], v[:3])
    run.add(q[3:], t[3:], v[3:])
    rv, ri = run.result()
    np.testing.assert_array_equal(ri, idx)
    np.testing.assert_array_equal(rv, vals)
    parts = [
        (np.array([[0.9, 0.5], [0.3, np.nan]]), np.array([[7, 4], [5, -1]])),
        (np.array([[0.9, 0.1], [0.3, np.nan]]), np.array([[2, 9], [1, -1]])),
    ]
    mv, mi = merge_topk(parts, 3)
    np.testing.assert_array_equal(mi, idx)
    np.testing.assert_array_equal(mv, vals)
