"""Row statistics and normalisation in float64, deterministic per row (independent of the block)."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memscan.errors import InputError
from memscan.search import limits

logger = logging.getLogger(__name__)


_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        workers = max(1, min(os.cpu_count() or 1, 16))
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memscan")
    return _pool


def _check_real(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{what} must be a 2D array [n, d], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise InputError(f"{what} must have a real numeric dtype, got {a.dtype}")
    return a


def _rows_f64(block: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 as a fresh C-contiguous float64 array (exact for every integer/float input ≤ 53 bits)."""
    return np.array(block[r0:r1], dtype=np.float64, order="C", copy=True)


def _segments(d: int) -> list[tuple[int, int]]:
    return [(a, min(d, a + limits._SEGMENT)) for a in range(0, d, limits._SEGMENT)]


def _stats_long_rows(
    block: np.ndarray, r0: int, r1: int, z_out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stats_rows` for rows longer than ``_SEGMENT`` (3D volumes: tens of MB per row), in
    cache-resident float64 segments: two or three reads of the raw row instead of ~9 passes over a
    row-sized float64 copy. Each sum is the segments' pairwise sums added in order: it depends on the row
    and ``d`` only, like the short-row path (the same definition as :func:`_long_dot`)."""
    d = block.shape[1]
    segs = _segments(d)
    buf = np.empty(min(d, limits._SEGMENT))
    mean = np.empty(r1 - r0)
    norm = np.empty(r1 - r0)
    for i, r in enumerate(range(r0, r1)):
        row = block[r]
        total = 0.0
        for a, b in segs:
            seg = buf[: b - a]
            seg[...] = row[a:b]
            total += float(seg.sum())
        m = total / d
        acc = 0.0
        for a, b in segs:
            seg = np.subtract(
                row[a:b], m, out=buf[: b - a], dtype=np.float64
            )  # exact cast, then one rounding
            acc += float(np.multiply(seg, seg, out=seg).sum())
        mean[i], norm[i] = m, math.sqrt(acc)
        # a constant row's float64 mean can be off by a few ulp (sums of float32 values are exact up to
        # 2^29 terms; of float64 ones, pairwise sums err by ~log2(d) ulp), leaving a spurious tiny norm:
        # only a norm that small (the values within ~64 ulp of the mean, on average) is worth the pass that
        # tells
        if norm[i] <= 128.0 * limits._U64 * abs(m) * math.sqrt(d) and np.all(row == row[0]):
            mean[i], norm[i] = float(row[0]), 0.0
        if z_out is not None:
            if not (norm[i] > 0 and math.isfinite(norm[i]) and math.isfinite(mean[i])):
                z_out[r] = 0.0
                continue
            _normalise_long_row(row, mean[i], norm[i], z_out[r], buf)
    return mean, norm


def _normalise_long_row(row: np.ndarray, mean: float, norm: float, out: np.ndarray, buf: np.ndarray) -> None:
    """``out = (row - mean) / norm`` segment by segment through the float64 buffer ``buf`` (the same values
    as the short rows' whole-row float64 path: one exact cast, one rounding each for − and ÷)."""
    for a, b in _segments(len(row)):
        seg = np.subtract(row[a:b], mean, out=buf[: b - a], dtype=np.float64)
        np.divide(seg, norm, out=out[a:b], casting="same_kind")


def _stats_rows(
    block: np.ndarray, r0: int, r1: int, z_out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if block.shape[1] > limits._SEGMENT:
        return _stats_long_rows(block, r0, r1, z_out)
    f = _rows_f64(block, r0, r1)
    d = f.shape[1]
    mean = f.sum(axis=1) / d
    const = f.max(axis=1) == f.min(axis=1)
    first = f[:, 0].copy()
    f -= mean[:, None]
    norm = np.sqrt((f * f).sum(axis=1))
    norm[const] = 0.0
    mean[const] = first[const]
    if z_out is not None:
        valid = (norm > 0) & np.isfinite(norm) & np.isfinite(mean)
        f /= np.where(valid, norm, np.inf)[:, None]
        f[~valid] = 0.0
        z_out[r0:r1] = f
    return mean, norm


def _map_rows(block: np.ndarray, z_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    n, d = block.shape
    step = max(1, limits._STATS_ELEMS // max(d, 1))
    ranges = [(r, min(n, r + step)) for r in range(0, n, step)]
    if len(ranges) <= 1:
        parts = [_stats_rows(block, r0, r1, z_out) for r0, r1 in ranges]
    else:
        parts = list(_executor().map(lambda rr: _stats_rows(block, rr[0], rr[1], z_out), ranges))
    if not parts:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def item_stats(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item mean and centred norm in float64.

    Computed row by row (independent of the block the row sits in): ``mean = sum(x) / d`` and
    ``norm = sqrt(sum((x - mean)²))`` with NumPy pairwise summation over the contiguous row (rows longer
    than ``_SEGMENT``: over each segment of that length, the segments' sums added in order). Rows whose
    values are all equal get ``norm = 0`` exactly (the float64 mean of equal values can be off by an
    ulp, which would otherwise give a spurious tiny norm).

    Args:
        block: ``[n, d]`` any real dtype.

    Returns:
        ``(mean, norm)``, both float64 ``[n]``.
    """
    block = _check_real(block, "block")
    return _map_rows(block, None)


def _valid(mean: np.ndarray, norm: np.ndarray) -> np.ndarray:
    return (norm > 0) & np.isfinite(norm) & np.isfinite(mean)
