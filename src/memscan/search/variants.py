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
import torch

from memscan.errors import InputError
from memscan.search.engine import INT8_CHUNK, SearchResult
from memscan.search.topk import select_topk

_TIE_TOL = 1e-12

__all__ = [
    "MIN_OVERLAP_FRACTION",
    "apply_mask",
    "check_max_shift",
    "flip_lr",
    "foreground_mask",
    "merge_variants",
    "shift_label",
    "shift_rerank",
]

#: Smallest overlap a shift may leave, as a fraction of the item along EACH axis: ``|dy| <= H/2`` and
#: ``|dx| <= W/2``, so the compared region always holds at least a quarter of the item. Why: the correlation
#: of a crop of n pixels of unrelated content spreads like 1/√n, so tiny overlaps score as copies (at 16×16,
#: a shift of 15 compares 1-pixel-wide strips and pure noise reaches r = 1.0); and an image moved by more
#: than half its size has lost most of its content, which is no longer "the same image". Half per axis is
#: the usual bound in registration-based copy detection (the overlap must hold the image's centre).
MIN_OVERLAP_FRACTION = 0.5


def check_max_shift(max_shift: int, spatial_shape: tuple[int, ...], *, name: str = "max_shift") -> None:
    """Raise :class:`InputError` unless every shift up to ``max_shift`` keeps the minimum overlap.

    Args:
        max_shift: largest |dy|, |dx| in pixels.
        spatial_shape: the items' ``(H, W)``.
        name: how the caller spells the parameter (the CLI passes ``--max-shift``).

    Raises:
        InputError: ``max_shift`` not an integer ≥ 0, or above ``floor(min(H, W) · (1 -``
            :data:`MIN_OVERLAP_FRACTION` ``))``.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int | np.integer) or max_shift < 0:
        raise InputError(f"{name} must be an integer >= 0, got {max_shift!r}")
    if len(spatial_shape) != 2:
        raise InputError(
            f"{name} works on 2D images only; these items have spatial shape {tuple(spatial_shape)}"
        )
    limit = int(min(spatial_shape) * (1.0 - MIN_OVERLAP_FRACTION))
    if max_shift > limit:
        h, w = spatial_shape
        raise InputError(
            f"{name} {max_shift} is too large for {h}x{w} images: a shift must keep at least half of each "
            f"axis overlapping (at most {limit})"
        )


def flip_lr(items: np.ndarray) -> np.ndarray:
    """Mirror items left-right.

    'Left-right' is the W axis (the last one) of 2D items ``[n, C, H, W]`` (image columns), and the Y
    axis (axis 3) of 3D volumes ``[n, C, X, Y, Z]``: memscan stores volumes in the frame PLS
    (:mod:`memscan.io.orientation`), where Y runs from the patient's right to left — the width axis of
    their axial slices.

    Args:
        items: ``[n, C, H, W]`` or ``[n, C, X, Y, Z]``.

    Returns:
        A C-contiguous mirrored copy of the same shape and dtype.
    """
    items = np.asarray(items)
    if items.ndim not in (4, 5):
        raise InputError(f"flip_lr expects items [n, C, H, W] or [n, C, X, Y, Z], got shape {items.shape}")
    return np.ascontiguousarray(np.flip(items, axis=3))  # W of 2D items, Y of 3D volumes


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
    # top k per query; tie -> lower train index (the one rule of memscan.search.topk)
    names = np.array([name for name, _ in results], dtype=object)
    values, indices, transforms = select_topk(q, v, t, nq, k, payload=names[w])
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
    """Best correlation over integer shifts, on the overlapping region only, all shifts at once.

    Shift ``(dy, dx)`` compares ``query[:, y, x]`` with ``train[:, y - dy, x - dx]``: both are cropped
    to the overlap (``H - |dy|`` by ``W - |dx|`` pixels, all channels) and correlated:
    ``(n Σqt - Σq Σt) / sqrt((n Σq² - (Σq)²)(n Σt² - (Σt)²))``. The cross sums ``Σqt`` of every shift
    come from one FFT cross-correlation per candidate (zero-padded, so no wrap-around); the crop sums
    ``Σq, Σq²`` from integral images.

    Exactness: for integer items (e.g. uint8) every sum is an integer below 2^42, the FFT's rounding
    error is far below 0.5 and ``Σqt`` is rounded back to the exact integer; the value is then computed
    exactly as the int8 engine does (bitwise equal to it at shift (0, 0)). For float items the sums are
    float64 after centring on the full-image mean (relative error ~1e-12). The zero shift wins ties,
    then the smaller shift (|dy| + |dx|), then the lower (dy, dx); for float items values within 1e-12
    count as ties.

    Args:
        query: ``[C, H, W]``.
        train_items: ``[m, C, H, W]`` candidates for this query.
        max_shift: largest |dy|, |dx| in pixels (0 … min(H, W) // 2, :func:`check_max_shift`).

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
    c, h, w = query.shape
    check_max_shift(max_shift, (h, w))
    s = int(max_shift)
    m = train_items.shape[0]
    if m == 0:
        return np.zeros(0), []
    best, shifts = shift_rerank_many(query[None], train_items, s)
    return best[0], shifts[0]


def shift_rerank_many(
    queries: np.ndarray, train_items: np.ndarray, max_shift: int
) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """:func:`shift_rerank` for several query images against the same candidates (e.g. an image and its
    mirror): the candidates' spectra are computed once. ``queries [b, C, H, W]``, ``train_items
    [m, C, H, W]`` → ``(best [b, m], shifts [b][m])``; validation is the caller's (see shift_rerank)."""
    bank = ShiftCandidates(train_items, max_shift, integer=_exact_integer(queries, train_items))
    return bank.score(queries)


class ShiftCandidates:
    """Candidate training items prepared once (spectra, integral images) for many shift re-ranks.

    Args:
        train_items: ``[m, C, H, W]`` candidates.
        max_shift: largest |dy|, |dx|.
        integer: exact integer mode (see :func:`shift_rerank`); only valid when every query and candidate
            is a non-negative integer image whose sums stay below 2^42 (:func:`integer_mode`).
    """

    def __init__(self, train_items: np.ndarray, max_shift: int, *, integer: bool) -> None:
        from scipy import fft as sfft

        self.m, self.c, self.h, self.w = train_items.shape
        check_max_shift(max_shift, (self.h, self.w))
        self.s = int(max_shift)
        self.integer = integer
        # 8-bit items: the cross sums on the int8 matrix unit, exactly, at the (2s+1)² lags needed only
        self.int8 = integer and train_items.dtype == np.uint8
        self.lags = list(_shift_order(self.s))
        if self.int8:  # a byte per value, and the crop sums' integral images 64 candidates at a time
            d = self.c * self.h * self.w
            self.dp = -(-d // 8) * 8
            t8 = np.zeros((self.m, self.dp), dtype=np.int8)
            np.bitwise_xor(train_items.reshape(self.m, d), np.uint8(128), out=t8[:, :d].view(np.uint8))
            self.t8 = torch.from_numpy(t8)
            self.t1 = np.empty((self.m, self.h + 1, self.w + 1), dtype=np.int64)
            self.t2 = np.empty_like(self.t1)
            for a in range(0, self.m, 64):
                t = train_items[a : a + 64].astype(np.int64)
                self.t1[a : a + 64], self.t2[a : a + 64] = _crop_integrals(t)
            return
        if integer:
            t = train_items.astype(np.int64)
        else:  # centring (shift-invariant) keeps the float sums well conditioned
            t = train_items.astype(np.float64)
            t -= t.mean(axis=(1, 2, 3), keepdims=True)
        self.fh = sfft.next_fast_len(self.h + self.s, real=True)
        self.fw = sfft.next_fast_len(self.w + self.s, real=True)
        self.ft = sfft.rfft2(t, s=(self.fh, self.fw), workers=-1).conj()  # [m, C, fh, fw//2+1]
        self.t1, self.t2 = _crop_integrals(t)  # [m, H+1, W+1]

    def score(
        self, queries: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Best correlation over shifts of every query against the candidates ``idx`` (default all).

        Returns:
            ``(best [b, m'], shifts [b][m'])``; NaN where constant on every overlap.
        """
        from scipy import fft as sfft

        b, c, h, w = queries.shape
        idx = np.arange(self.m) if idx is None else np.asarray(idx)
        m = len(idx)
        if self.integer:
            q = queries.astype(np.int64)
        else:
            q = queries.astype(np.float64)
            q -= q.mean(axis=(1, 2, 3), keepdims=True)
        int8 = self.int8 and queries.dtype == np.uint8
        if int8:
            cross = self._cross_int8(queries, idx)  # Σ x'y' over each overlap, x' = x - 128
        else:
            fh, fw = self.fh, self.fw
            fq = sfft.rfft2(q, s=(fh, fw), workers=-1)  # [b, C, fh, fw//2+1]
            ly = np.array([dy % fh for dy, _ in self.lags])
            lx = np.array([dx % fw for _, dx in self.lags])
            cross = np.empty((b, m, len(self.lags)))  # only the (2s+1)² lags are kept
            for a0 in range(0, m, 16):  # bounded memory: 16 candidates at a time
                full = sfft.irfft2(
                    np.einsum("mcyx,bcyx->bmyx", self.ft[idx[a0 : a0 + 16]], fq), s=(fh, fw), workers=-1
                )
                cross[:, a0 : a0 + 16] = full[:, :, ly, lx]
        dtype = np.int64 if self.integer else np.float64
        if self.integer and not int8:
            cross = np.rint(cross).astype(np.int64)
        q1, q2 = _crop_integrals(q)  # [b, H+1, W+1]
        t1, t2 = self.t1[idx], self.t2[idx]
        # every lag at once: overlap sizes [L], the query's crop sums [b, 1, L], the candidates' [1, m, L]
        boxes = [_overlap(dy, dx, h, w) for dy, dx in self.lags]
        qb = tuple(np.array([bx[i][j] for bx in boxes]) for i in (0, 1) for j in (0, 1))
        tb = tuple(np.array([bx[i][j] for bx in boxes]) for i in (2, 3) for j in (0, 1))
        n = (c * (qb[1] - qb[0]) * (qb[3] - qb[2])).astype(dtype)
        sq, sqq = _box_many(q1, qb)[:, None], _box_many(q2, qb)[:, None]
        st, stt = _box_many(t1, tb)[None], _box_many(t2, tb)[None]
        # 8-bit: Σqt = Σq't' + 128 (Σq + Σt) - 128² n over the overlap (q = q' + 128, t = t' + 128)
        qt = cross + 128 * (sq + st) - 16384 * n if int8 else cross
        num = n * qt - sq * st
        vq, vt = n * sqq - sq * sq, n * stt - st * st
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = num.astype(np.float64) / np.sqrt(vq.astype(np.float64) * vt.astype(np.float64))
        vals[np.broadcast_to((vt <= 0) | (vq <= 0), vals.shape) | ~np.isfinite(vals)] = np.nan
        best = np.full((b, m), -np.inf)
        where = np.zeros((b, m), dtype=np.int64)
        tol = 0.0 if self.integer else _TIE_TOL
        for j in range(len(self.lags)):
            # a later shift must win by more than the tie tolerance: earlier shifts, (0, 0) first, win ties
            better = vals[:, :, j] > best + tol
            best[better] = vals[:, :, j][better]
            where[better] = j
        best[np.isneginf(best)] = np.nan
        return best, [[self.lags[j] for j in row] for row in where]

    def _cross_int8(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Exact int64 ``[b, m, L]``: ``Σ q'[y, x] t'[y - dy, x - dx]`` over each lag's overlap, x' = x - 128.

        Each query is copied once per lag, moved by (-dy, -dx) with zeros (x' = 0) where it leaves the
        frame, so a lag's sums are a row of one int8 product with the candidates (int32 per chunk of
        < 131,072 terms, chunks added in int64): only the (2s+1)² lags needed, where an FFT computes all
        of them, at a byte per value.
        """
        b, c, h, w = queries.shape
        d, lags = c * h * w, self.lags
        q8 = np.bitwise_xor(queries, np.uint8(128)).view(np.int8)
        moved = np.zeros((b * len(lags), self.dp), dtype=np.int8)
        for k, (dy, dx) in enumerate(lags):
            (qy0, qy1), (qx0, qx1), (ty0, ty1), (tx0, tx1) = _overlap(dy, dx, h, w)
            for i in range(b):
                moved[i * len(lags) + k, :d].reshape(c, h, w)[:, ty0:ty1, tx0:tx1] = q8[
                    i, :, qy0:qy1, qx0:qx1
                ]
        a = torch.from_numpy(moved)
        t = self.t8[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        out = torch.zeros((a.shape[0], t.shape[0]), dtype=torch.int64)
        for c0 in range(0, self.dp, _INT8_TERMS):
            c1 = min(self.dp, c0 + _INT8_TERMS)
            out += torch._int_mm(a[:, c0:c1].contiguous(), t[:, c0:c1].contiguous().t())
        return out.numpy().reshape(b, len(lags), -1).transpose(0, 2, 1)


# terms per int8 product (exact in int32): the engine's chunk
_INT8_TERMS = INT8_CHUNK


def _overlap(dy: int, dx: int, h: int, w: int) -> tuple[tuple[int, int], ...]:
    """Shift (dy, dx): the query's rows/columns and the train item's rows/columns of their overlap."""
    qy, qx = (max(0, dy), h + min(0, dy)), (max(0, dx), w + min(0, dx))
    ty, tx = (max(0, -dy), h - max(0, dy)), (max(0, -dx), w - max(0, dx))
    return qy, qx, ty, tx


def integer_mode(dtype: np.dtype, item_size: int) -> bool:
    """Whether items of this dtype and size (values ≥ 0) keep every shift sum below 2^42 (exact mode)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.unsignedinteger):
        return False
    peak = int(np.iinfo(dtype).max)
    return item_size * peak * peak < 2**42


def _exact_integer(query: np.ndarray, train_items: np.ndarray) -> bool:
    """Integer items whose sums all stay below 2^42 (FFT error << 0.5, int64 formula exact)."""
    if not (np.issubdtype(query.dtype, np.integer) and np.issubdtype(train_items.dtype, np.integer)):
        return False
    if query.size == 0 or min(int(query.min()), int(train_items.min())) < 0:
        return False
    peak = max(int(query.max()), int(train_items.max()), 1)
    return query.size * peak * peak < 2**42


def _crop_integrals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integral images of the channel sums of ``x`` and of ``x²`` (``[n, C, H, W]`` → two ``[n, H+1, W+1]``):
    any crop's Σx and Σx² in four lookups."""
    return _integral(x.sum(axis=1)), _integral((x * x).sum(axis=1))


def _integral(a: np.ndarray) -> np.ndarray:
    """Integral image over the last two axes with a zero row/column in front: ``[..., H+1, W+1]``."""
    out = np.zeros((*a.shape[:-2], a.shape[-2] + 1, a.shape[-1] + 1), dtype=a.dtype)
    out[..., 1:, 1:] = a.cumsum(axis=-2).cumsum(axis=-1)
    return out


def _box_many(ii: np.ndarray, r: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sums over rectangles of an integral image: ``r = (y0, y1, x0, x1)``, arrays ``[L]`` → ``[..., L]``."""
    y0, y1, x0, x1 = r
    return ii[..., y1, x1] - ii[..., y0, x1] - ii[..., y1, x0] + ii[..., y0, x0]
