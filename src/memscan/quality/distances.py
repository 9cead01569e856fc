"""Euclidean distances between feature sets, in float64 and in row blocks (never an N x M matrix at once).

Shared by the k-nearest-neighbour metrics (PRDC, α-precision/β-recall/authenticity, C_T).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

#: Rows of the left-hand set per block: a block holds ``BLOCK_ROWS x M`` float64 distances.
BLOCK_ROWS = 1024


def as_features(x: np.ndarray, name: str = "features") -> np.ndarray:
    """``x`` as a C-contiguous float64 array ``[N, D]``; rejects other shapes and non-finite values."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D array [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(a)


def distance_blocks(a: np.ndarray, b: np.ndarray, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, D)`` with ``D[i, j] ≈ ||a[start + i] - b[j]||``, float64 ``[rows, M]``.

    Computed as ``sqrt(|a|² + |b|² − 2 a·b)`` with one float64 matrix product per block (6x faster than the
    direct form on this project's CPU: 0.56 s vs 3.1 s for 1024 x 4000 x 512). Its absolute error is about
    1e-16 · |x|², i.e. ~1e-8 · |x| after the square root: far below any gap the metrics' comparisons
    resolve, and the same formula as scikit-learn's, which the ``prdc`` package uses. Where a *value* is
    kept (nearest distances, k-NN radii) :func:`exact_distances` recomputes it directly, so an exact copy
    has distance 0, not 1e-8.
    """
    tb = torch.from_numpy(b)
    for lo in range(0, len(a), rows):
        ta = torch.from_numpy(a[lo : lo + rows])
        yield lo, torch.cdist(ta, tb, compute_mode="use_mm_for_euclid_dist").numpy()


def exact_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``||a[i] − b[i]||`` of two ``[n, D]`` arrays, from the differences (no cancellation)."""
    return np.sqrt(((a - b) ** 2).sum(axis=1))


def refine_near(d: np.ndarray, a: np.ndarray, b: np.ndarray, *radii: np.ndarray) -> np.ndarray:
    """Recompute exactly the entries of a block ``d [n, M]`` (rows ``a [n, D]``, columns ``b [M, D]``) that
    lie within the matrix product's rounding of a radius they are compared with (``radii`` broadcast
    against ``d``: ``[n, 1]`` per row or ``[1, M]`` per column), so that ``d < r`` is decided as in exact
    arithmetic. Ties matter: a copy of a real item lies exactly on the k-NN ball of each item whose k-th
    neighbour is that real item, and is not strictly inside it. Returns ``d`` (modified in place).
    """
    # |fl(d) − d| <= sqrt(|fl(d²) − d²|) ~ sqrt(D · 2^-52 · (|a|² + |b|²)) ≈ 1e-7 (|a| + |b|) for D ≤ 1e4
    scale = np.linalg.norm(a, axis=1)[:, None] + np.linalg.norm(b, axis=1)[None, :]
    near = np.zeros(d.shape, dtype=bool)
    for r in radii:
        near |= np.abs(d - r) <= 1e-6 * scale
    i, j = np.nonzero(near)
    if i.size:
        d[i, j] = exact_distances(a[i], b[j])
    return d


def kth_neighbour_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of ``x [N, D]`` to its ``k``-th nearest other row (the row itself excluded).

    An exact duplicate of a row counts as a neighbour at distance 0 (as in Naeem et al.'s reference code).
    The ``k + 1`` nearest candidates of a row (itself included) come from the matrix-product distances;
    their distances are then recomputed exactly and the ``(k + 1)``-th smallest taken.

    Returns:
        float64 ``[N]``.
    """
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs at least {k + 1} items, got {len(x)}")
    out = np.empty(len(x))
    for lo, d in distance_blocks(x, x):
        rows = np.arange(lo, lo + len(d))
        cand = np.argpartition(d, k, axis=1)[:, : k + 1]  # [rows, k+1]
        exact = np.stack([exact_distances(x[rows], x[cand[:, j]]) for j in range(k + 1)], axis=1)
        out[lo : lo + len(d)] = np.sort(exact, axis=1)[:, k]
    return out


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a [N, D]``: the distance to and the index of its nearest row of ``b [M, D]``.

    Returns:
        ``(distance float64 [N], index int64 [N])``; the distance is recomputed exactly.
    """
    idx = np.empty(len(a), dtype=np.int64)
    for lo, d in distance_blocks(a, b):
        idx[lo : lo + len(d)] = np.argmin(d, axis=1)
    return exact_distances(a, b[idx]), idx


def nearest_other(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x [N, D]``: distance to and index of its nearest *other* row (N >= 2)."""
    if len(x) < 2:
        raise ValueError("the nearest other item needs at least 2 items")
    idx = np.empty(len(x), dtype=np.int64)
    for lo, d in distance_blocks(x, x):
        rows = np.arange(len(d))
        d[rows, lo + rows] = np.inf
        idx[lo : lo + len(d)] = np.argmin(d, axis=1)
    return exact_distances(x, x[idx]), idx
