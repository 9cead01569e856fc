"""What counts as "the same image": mirror images, small shifts, and the pixels that are compared.

* Flips: the scan searches the mirrored queries too (:func:`flip_lr`) and keeps, per train item, the
  best of the variants (:func:`merge_variants`).
* Masks: only foreground pixels are compared (:func:`apply_mask`, :func:`foreground_mask`), so an empty
  background does not inflate correlations.
* Shifts are **candidate-based**: an all-pairs search over every shift would cost (2s+1)² full scans.
  Instead the scan driver runs :func:`memscan.search.engine.search_topk` with a larger k' to get
  candidates, then :func:`shift_rerank` evaluates each candidate exactly (float64) over all integer
  shifts in ``[-s, s]²``, on the overlapping region only. A shifted copy that is not among the k'
  unshifted candidates is not found; k' trades time for recall.

Shapes: 2D items ``[n, C, H, W]``, 3D items ``[n, C, X, Y, Z]`` (NIfTI order: x is left-right).
"""

from __future__ import annotations

import numpy as np

from memscan.errors import InputError
from memscan.search.engine import SearchResult

_TIE_TOL = 1e-12

__all__ = ["apply_mask", "flip_lr", "foreground_mask", "merge_variants", "shift_label", "shift_rerank"]


def flip_lr(items: np.ndarray) -> np.ndarray:
    """Mirror items left-right.

    'Left-right' is the W axis (the last one) of 2D items ``[n, C, H, W]`` (image columns), and the x
    axis (axis 2) of 3D volumes ``[n, C, X, Y, Z]`` stored in NIfTI x, y, z order, where x runs from
    the patient's right to left.

    Args:
        items: ``[n, C, H, W]`` or ``[n, C, X, Y, Z]``.

    Returns:
        A C-contiguous mirrored copy of the same shape and dtype.
    """
    items = np.asarray(items)
    if items.ndim == 4:
        axis = 3
    elif items.ndim == 5:
        axis = 2
    else:
        raise InputError(f"flip_lr expects items [n, C, H, W] or [n, C, X, Y, Z], got shape {items.shape}")
    return np.ascontiguousarray(np.flip(items, axis=axis))


def apply_mask(items: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the masked pixels of every item, flattened.

    Args:
        items: ``[n, C, *S]``.
        mask: bool ``[*S]`` (the same pixels in every channel) or ``[C, *S]``.

    Returns:
        ``[n, d_masked]`` (channel-major: all selected pixels of channel 0, then channel 1, ...).
    """
    items = np.asarray(items)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise InputError(f"mask must be boolean, got dtype {mask.dtype}")
    if items.ndim < 3:
        raise InputError(f"items must be [n, C, *spatial], got shape {items.shape}")
    spatial = items.shape[2:]
    if mask.shape == spatial:
        full = np.broadcast_to(mask, items.shape[1:])
    elif mask.shape == items.shape[1:]:
        full = mask
    else:
        raise InputError(
            f"mask shape {mask.shape} does not match items shape {items.shape}: expected {spatial} "
            f"or {items.shape[1:]}"
        )
    if not full.any():
        raise InputError(f"mask of shape {mask.shape} selects no pixel")
    n = items.shape[0]
    return np.ascontiguousarray(items.reshape(n, -1)[:, full.reshape(-1)])


def foreground_mask(mean_image: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Foreground from the training set's mean image: pixels whose mean exceeds ``fraction × max``.

    For skull-stripped MRI or x-rays with black borders, pixels that are (almost) always background have
    a mean near zero; ``fraction`` = 0.05 keeps everything brighter than 5% of the brightest mean
    pixel. Pass the mean over the training items, ``[*S]`` or ``[C, *S]``; the mask has the same shape.

    Args:
        mean_image: ``[*S]`` or ``[C, *S]`` mean over training items (intensities ≥ 0 expected).
        fraction: threshold as a fraction of the maximum, in (0, 1).

    Returns:
        bool mask of the same shape.
    """
    mean_image = np.asarray(mean_image, dtype=np.float64)
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    if mean_image.size == 0 or not np.isfinite(mean_image).all():
        raise InputError(f"mean image must be non-empty and finite, got shape {mean_image.shape}")
    top = float(mean_image.max())
    if top <= 0.0:
        raise InputError(f"mean image has no positive pixel (max {top}); cannot find a foreground")
    mask = mean_image > fraction * top
    return mask


def merge_variants(
    results: list[tuple[str, SearchResult]], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine per-query top-k lists found with several query variants (e.g. 'none', 'flip').

    A train item found by several variants keeps its best value; on equal values the variant listed
    first wins (so list 'none' before 'flip'). Then the top k by value, ties to the lower train index.

    Args:
        results: ``[(transform_name, SearchResult), ...]``, all with the same number of queries.
        k: number of neighbours to keep.

    Returns:
        ``(values float64 [nq, k], indices int64 [nq, k], transforms object [nq, k])``; NaN / -1 / None
        where fewer than k matches exist.
    """
    if not results:
        raise InputError("merge_variants needs at least one result")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    nq = results[0][1].indices.shape[0]
    qs, vs, ts, var = [], [], [], []
    for order, (_name, res) in enumerate(results):
        if res.indices.shape[0] != nq:
            raise InputError(f"variant {_name!r} has {res.indices.shape[0]} queries, expected {nq}")
        ok = res.indices >= 0
        rows = np.nonzero(ok)[0]
        qs.append(rows)
        vs.append(res.values[ok])
        ts.append(res.indices[ok])
        var.append(np.full(len(rows), order))
    q = np.concatenate(qs)
    v = np.concatenate(vs).astype(np.float64)
    t = np.concatenate(ts).astype(np.int64)
    w = np.concatenate(var)
    # best value per (query, train item); tie -> earlier variant
    o = np.lexsort((w, -v, t, q))
    q, v, t, w = q[o], v[o], t[o], w[o]
    first = np.ones(len(q), dtype=bool)
    first[1:] = (q[1:] != q[:-1]) | (t[1:] != t[:-1])
    q, v, t, w = q[first], v[first], t[first], w[first]
    # top k per query; tie -> lower train index
    o = np.lexsort((t, -v, q))
    q, v, t, w = q[o], v[o], t[o], w[o]
    starts = np.searchsorted(q, np.arange(nq))
    rank = np.arange(len(q)) - starts[q]
    keep = rank < k
    values = np.full((nq, k), np.nan)
    indices = np.full((nq, k), -1, dtype=np.int64)
    transforms = np.full((nq, k), None, dtype=object)
    names = np.array([name for name, _ in results], dtype=object)
    values[q[keep], rank[keep]] = v[keep]
    indices[q[keep], rank[keep]] = t[keep]
    transforms[q[keep], rank[keep]] = names[w[keep]]
    return values, indices, transforms


def shift_label(dy: int, dx: int) -> str:
    """Transform label of a shift, e.g. ``shift(+2,-1)``: the train item moved down 2 and left 1 pixels.

    Callers label the zero shift 'none' (the contract's name for no transform).
    """
    return f"shift({int(dy):+d},{int(dx):+d})"


def _shift_order(max_shift: int) -> list[tuple[int, int]]:
    """All shifts, (0, 0) first, then by distance |dy| + |dx|, then dy, dx."""
    r = range(-max_shift, max_shift + 1)
    return sorted(((dy, dx) for dy in r for dx in r), key=lambda s: (abs(s[0]) + abs(s[1]), s[0], s[1]))


def shift_rerank(
    query: np.ndarray, train_items: np.ndarray, max_shift: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Best correlation over integer shifts, exactly, on the overlapping region only.

    Shift ``(dy, dx)`` compares ``query[:, y, x]`` with ``train[:, y - dy, x - dx]``: both are cropped
    to the overlap (``H - |dy|`` by ``W - |dx|`` pixels, all channels) and correlated in float64
    (centre, elementwise product, pairwise sum, divide by the norms). The zero shift wins ties, then the
    smaller shift (|dy| + |dx|), then the lower (dy, dx); values within 1e-12 (float64 rounding of
    sums over differently cropped regions) count as ties.

    Args:
        query: ``[C, H, W]``.
        train_items: ``[m, C, H, W]`` candidates for this query.
        max_shift: largest |dy|, |dx| in pixels (0 … min(H, W) - 2).

    Returns:
        ``(best float64 [m] (NaN if constant on every overlap), shifts [(dy, dx)] * m)``.
    """
    query = np.asarray(query)
    train_items = np.asarray(train_items)
    if query.ndim != 3 or train_items.ndim != 4 or train_items.shape[1:] != query.shape:
        raise InputError(
            f"shift_rerank expects query [C, H, W] and train_items [m, C, H, W]; got {query.shape} and "
            f"{train_items.shape}"
        )
    _, h, w = query.shape
    if not isinstance(max_shift, int | np.integer) or max_shift < 0 or max_shift > min(h, w) - 2:
        raise InputError(f"max_shift must be an integer in 0..{min(h, w) - 2}, got {max_shift!r}")
    m = train_items.shape[0]
    best = np.full(m, -np.inf)
    shifts: list[tuple[int, int]] = [(0, 0)] * m
    q64 = query.astype(np.float64)
    t64 = train_items.astype(np.float64)
    for dy, dx in _shift_order(int(max_shift)):
        qc = q64[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)].reshape(1, -1)
        tc = t64[:, :, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)].reshape(m, -1)
        vals = _pearson_rows(qc, tc)
        # a later shift must win by more than the rounding of the overlap sums: earlier shifts, (0, 0)
        # first, win ties; NaN never wins
        better = vals > best + _TIE_TOL
        best[better] = vals[better]
        for i in np.flatnonzero(better):
            shifts[i] = (dy, dx)
    best[np.isneginf(best)] = np.nan
    return best, shifts


def _pearson_rows(q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Correlation of one row ``q [1, n]`` with each row of ``t [m, n]`` (float64, NaN if constant)."""
    qc = q - q.sum(axis=1, keepdims=True) / q.shape[1]
    tc = t - t.sum(axis=1, keepdims=True) / t.shape[1]
    qn = np.sqrt((qc * qc).sum(axis=1))
    tn = np.sqrt((tc * tc).sum(axis=1))
    q_const = q.max() == q.min()
    t_const = t.max(axis=1) == t.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = (qc * tc).sum(axis=1) / (qn * tn)
    vals[t_const | q_const | ~np.isfinite(vals)] = np.nan
    return vals
