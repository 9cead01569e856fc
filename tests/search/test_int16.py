"""The exact 16-bit integer path: quantisation, its bound, and top-k equal to an exact reference."""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from test_engine import assert_same, blocks_of, reference_topk, smooth_field

from memscan.errors import InputError
from memscan.search.engine import resolve_precision, search_topk
from memscan.search.screen_int16 import exact_int_correlation, pair_error_bound, quantise


def exact_topk(q: np.ndarray, t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact reference: integer numerators and variances (Python ints), r to 40 significant digits, ties
    (equal to those digits) to the lower index."""
    getcontext().prec = 60
    d = q.shape[1]

    def stats(a):
        rows = [[int(v) for v in row] for row in a]
        return rows, [sum(r) for r in rows], [d * sum(v * v for v in r) - sum(r) ** 2 for r in rows]

    qr, qs, qv = stats(q)
    tr, ts, tv = stats(t)
    vals = np.full((len(q), k), np.nan)
    idx = np.full((len(q), k), -1, dtype=np.int64)
    for i in range(len(q)):
        if qv[i] == 0:
            continue
        scored = []
        for j in range(len(t)):
            if tv[j] == 0:
                continue
            num = d * sum(a * b for a, b in zip(qr[i], tr[j], strict=True)) - qs[i] * ts[j]
            r = Decimal(num) / (Decimal(qv[i]) * Decimal(tv[j])).sqrt()
            scored.append((-round(r, 40), j, float(r)))
        scored.sort()
        for n, (_, j, r) in enumerate(scored[:k]):
            vals[i, n], idx[i, n] = r, j
    return vals, idx


def check_exact(res, q, t, k) -> None:
    ref_v, ref_i = exact_topk(q, t, k)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.values, ref_v, atol=1e-13, rtol=0, equal_nan=True)


@pytest.fixture(scope="module")
def mr_like():
    """int16 slices of one smooth volume (0..3000, like MR): neighbours correlate > 0.99; queries are the
    odd slices with ±1 noise, so near-ties differ by ~1e-6 and less."""
    rng = np.random.default_rng(3)
    vol = np.round(smooth_field((120, 24, 24), sigma_px=(10.0, 3.0, 3.0), rng=rng) * 3000).astype(np.int16)
    slices = vol.reshape(120, -1)
    t = slices[::2].copy()
    q = (slices[1::2][:20] + rng.integers(-1, 2, size=(20, slices.shape[1]))).astype(np.int16)
    return q, t


def test_quantise_is_exact_below_256_levels_and_bounded_above() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(-100, 150, size=(5, 300)).astype(np.int16)  # range < 256: s = 0, exact
    q, st = quantise(small)
    np.testing.assert_array_equal(q.astype(np.int64), small - small.min(axis=1, keepdims=True))
    assert (st.delta == 0).all() and st.valid.all()
    wide = rng.integers(0, 4000, size=(5, 300)).astype(np.uint16)
    q, st = quantise(wide)
    assert q.max() <= 255 and (st.delta > 0).all()
    # the bound holds: |corr(x, y) - corr(q_x, q_y)| <= δ_x + δ_y

    def z(a: np.ndarray) -> np.ndarray:
        c = a.astype(np.float64) - a.mean(axis=1, keepdims=True)
        return c / np.linalg.norm(c, axis=1)[:, None]

    zx, zq = z(wide), z(q)
    err = np.abs(zx @ zx.T - zq @ zq.T)
    assert (err <= st.delta[:, None] + st.delta[None, :] + 1e-12).all()
    assert err.max() > 0  # the quantisation does lose information here
    const = np.full((1, 300), 7, dtype=np.int16)
    assert not quantise(const)[1].valid[0]


def test_exact_values_are_exact_integers() -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(-32768, 32767, size=(3, 2000)).astype(np.int16)  # full range: |x - c| up to 2^16
    t = np.concatenate([q[:1] * 0 + q[:1] // 2, rng.integers(0, 65535, size=(2, 2000))]).astype(np.int64)
    t16 = t.astype(np.uint16) if t.min() >= 0 else None
    t = np.concatenate([rng.integers(0, 65535, size=(3, 2000))]).astype(np.uint16)
    _, qs = quantise(q)
    _, ts = quantise(t)
    qi, ti = np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)
    got = exact_int_correlation(q, qs, qi, t, ts, ti)
    ref_v, _ = exact_topk(q, t, 3)
    want = np.sort(ref_v, axis=1)
    np.testing.assert_allclose(np.sort(got.reshape(3, 3), axis=1), want, atol=1e-14, rtol=0)
    assert t16 is None or t16.dtype == np.uint16


@pytest.mark.parametrize("block", [1, 7, 60])
def test_int16_top_k_equals_exact_reference(mr_like, block: int) -> None:
    q, t = mr_like
    res = search_topk(q, blocks_of(t, block), 4, precision="auto")
    assert res.precision == "int16" and res.epsilon == 0.0
    check_exact(res, q, t, 4)
    assert_same(res, search_topk(q, blocks_of(t, 60), 4, precision="int16"))
    ref_v, ref_i = reference_topk(q, t, 4)  # the float64 brute force agrees
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.values, ref_v, atol=1e-12, rtol=0)


def test_int16_adversarial_ties_offsets_and_dtypes() -> None:
    """Exact ties from affine maps (the lower index wins), ±1 single-pixel near-ties, a CT-like negative
    range, uint16 up to 65535, constant items, and mixed uint8 / int16 sides."""
    rng = np.random.default_rng(7)
    d = 400
    base = rng.integers(-1024, 3000, size=(6, d)).astype(np.int64)
    t = np.zeros((16, d), dtype=np.int64)
    t[:6] = base
    t[6] = 3 * base[0] + 11  # an exact tie with item 0 (correlation invariant to x -> 3x + 11)
    t[7] = base[1].copy()
    t[7, 5] += 1  # near-tie with item 1
    t[8] = base[1].copy()
    t[8, 9] -= 1
    t[9] = 500  # constant: never matched
    t[10:] = rng.integers(-1024, 3000, size=(6, d))
    t16 = np.clip(t, -32768, 32767).astype(np.int16)
    q = np.concatenate([base[:3] + rng.integers(-2, 3, size=(3, d)), t[6:7], t[9:10]]).astype(np.int16)
    for block in (1, 4, 16):
        res = search_topk(q, blocks_of(t16, block), 3, precision="int16")
        check_exact(res, q, t16, 3)
    assert list(search_topk(t16[:1], blocks_of(t16, 16), 2).indices[0]) == [0, 6]
    assert (res.indices[4] == -1).all()
    u16 = rng.integers(0, 65536, size=(12, d)).astype(np.uint16)
    u16[3] = u16[0] // 2 + 1000
    check_exact(search_topk(u16[:4], blocks_of(u16, 5), 3), u16[:4], u16, 3)
    small = rng.integers(0, 256, size=(10, d)).astype(np.uint8)
    res = search_topk(small[:3], blocks_of(small.astype(np.int16) * 40, 4), 3)
    assert res.precision == "int16"
    check_exact(res, small[:3], small.astype(np.int16) * 40, 3)


def test_resolve_precision_for_16_bit_items() -> None:
    assert resolve_precision("auto", "cpu", np.int16, 1000) == "int16"
    assert resolve_precision("auto", "cpu", np.uint8, 1000, train_dtype=np.uint16) == "int16"
    assert resolve_precision("auto", "cpu", np.uint8, 1000, train_dtype=np.uint8) == "int8"
    assert resolve_precision("auto", "cpu", np.int16, 2**21 + 1) != "int16"
    assert resolve_precision("auto", "cpu", np.int16, 1000, train_dtype=np.float32) not in ("int8", "int16")
    with pytest.raises(InputError, match="int16"):
        resolve_precision("int16", "cpu", np.float32, 1000)
    with pytest.raises(InputError, match="int8"):
        resolve_precision("int8", "cpu", np.uint8, 1000, train_dtype=np.int16)


def test_float_and_int16_paths_agree(mr_like) -> None:
    q, t = mr_like
    a = search_topk(q, blocks_of(t, 16), 3, precision="int16")
    b = search_topk(q, blocks_of(t, 16), 3, precision="float64")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, atol=1e-13, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")
def test_cuda_int16_identical_to_cpu(mr_like) -> None:
    q, t = mr_like
    cpu = search_topk(q, blocks_of(t, 16), 4, precision="int16")
    assert_same(cpu, search_topk(q, blocks_of(t, 16), 4, precision="int16", device="cuda"))


@pytest.mark.parametrize("hi", [256, 3001, 40000, 65536])
def test_quantise_integer_step_stats_exact_and_bound_holds(hi: int) -> None:
    """The integer step ``t = ceil(range / 255)`` (up to 257 for full-range uint16, so ``e`` reaches 256):
    statistics equal a direct int64 computation, more than half the 8-bit range is used, the bound holds."""
    rng = np.random.default_rng(hi)
    x = rng.integers(0, hi, size=(6, 5000)).astype(np.uint16 if hi > 32768 else np.int16)
    x[:, 0], x[:, 1] = 0, hi - 1  # the full range
    q, st = quantise(x)
    assert q.max() <= 255 and (q.max(axis=1) >= 128).all()
    x64 = x.astype(np.int64)
    np.testing.assert_array_equal(st.sum_c, (x64 - st.centre[:, None]).sum(axis=1))
    np.testing.assert_array_equal(st.sq_c, ((x64 - st.centre[:, None]) ** 2).sum(axis=1))
    t = np.maximum(1, -(-(x64.max(axis=1) - x64.min(axis=1)) // 255))
    np.testing.assert_array_equal(q, (x64 - x64.min(axis=1, keepdims=True)) // t[:, None])

    def z(a: np.ndarray) -> np.ndarray:
        c = a.astype(np.float64) - a.mean(axis=1, keepdims=True)
        return c / np.linalg.norm(c, axis=1)[:, None]

    err = np.abs(z(x) @ z(x).T - z(q) @ z(q).T)
    assert (err <= st.delta[:, None] + st.delta[None, :] + 1e-12).all()


@pytest.mark.parametrize("hi", [3000, 600, 65535])
def test_pair_error_bound_holds(hi: int) -> None:
    """``|r - c| <= pair_error_bound`` (the per-pair filter's bound) for pairs across the whole range of c,
    near-copies (c close to 1, where the bound is tightest) and residuals aligned with the other item."""
    rng = np.random.default_rng(hi)
    d = 3000
    base = rng.integers(0, hi, size=(8, d))
    near = base[:, None, :] + rng.integers(-3, 4, size=(8, 4, d))  # near-copies: c in 0.99..1
    mixed = (base[:, None, :] * np.array([1.0, 0.7, 0.3, -0.5])[None, :, None]).round()  # c spread out
    # adversarial: y's residual below the step of its quantisation put along x's pattern
    t_step = -(-(hi + 6) // 255)
    steps = (np.arange(d) % t_step)[None, :]
    aligned = base[:, None, :] - (base[:, None, :] % t_step) + np.where(base[:, None, :] > hi / 2, steps, 0)
    items = np.concatenate([base[:, None, :], near, mixed, aligned], axis=1).reshape(-1, d)
    items = np.clip(items - items.min(), 0, 65535).astype(np.uint16)
    q8, st = quantise(items)

    def unit(a):
        a = a.astype(np.float64) - a.mean(axis=1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    r = unit(items) @ unit(items).T
    c = unit(q8) @ unit(q8).T
    n = len(items)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    bound = pair_error_bound(c.ravel(), c.ravel(), st.rho[i.ravel()], st.rho[j.ravel()]).reshape(n, n)
    assert np.all(np.abs(r - c) <= bound)
    # and it is the tighter bound where it matters: near-copies get much less than δ_x + δ_y
    loose = st.delta[i] + st.delta[j]
    top = (c > 0.99) & (loose > 0)
    assert top.any()
    assert np.median(bound[top] / loose[top]) < 0.5
