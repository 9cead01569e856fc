"""The exact path for 16-bit integer items (MR and CT from NIfTI/DICOM, 16-bit PNG): an int8 screen of
each item quantised to 8 bits (an integer step) under a proven bound, then an exact integer re-rank of the
pairs it cannot rule out.

Why not byte-split products for every pair: ``x = 2^8 h + l`` makes the exact product four int8 products
(``h·h``, ``h·l``, ``l·h``, ``l·l``), four times the 8-bit path's work on the matrix unit for every pair,
while a screen of 8-bit quantised values alone leaves only a few pairs per query to finish exactly.

**Quantisation** (per item, exact integer arithmetic): with ``m = min x`` and the integer step
``t = max(1, ceil((max x - m) / 255))``, ``x - m = t q + e`` with ``q = (x - m) // t`` in ``0..255``
(uint8) and ``e`` in ``[0, t)`` (``t <= 257`` for 16-bit values, so ``e <= 256``). The step uses the full
8-bit range (a power-of-two step, ``x >> s``, leaves up to half of it unused: 0..187 for a 0–3,000 MR
scale), and the screen's error bound below is proportional to ``t``. Items whose range is below 256 have
``t = 1``, ``e = 0``: their screen is exact.

**Bound.** Pearson correlation is the dot product of the centred, unit-normalised items: with ``P`` the
centring projection, ``u = Px = t Pq + Pe`` and ``w = t Pq``. Every point of the ball of radius
``||Pe||`` around ``w`` makes an angle ``θ <= arcsin ρ`` with ``w``, ``ρ = ||Pe|| / (t ||Pq||)`` (ρ < 1), so
the unit vectors differ by ``||û - ŵ|| = 2 sin(θ/2) <= δ := ρ sqrt(2 / (1 + sqrt(1 - ρ²)))`` (``δ = 2`` when
ρ >= 1). With ``â = û_x``, ``b̂ = û_y``: ``â·b̂ - ŵ_x·ŵ_y = (â - ŵ_x)·b̂ + ŵ_x·(b̂ - ŵ_y)``, so
``|corr(x, y) - corr(q_x, q_y)| <= δ_x + δ_y`` (Cauchy–Schwarz, unit vectors). ``corr(q_x, q_y)`` is what
the 8-bit path ranks (its float32 ranking G = corr_q · √V_q within its own proven ``ε_G``,
:meth:`~memscan.search.screen_int._IntScreen.epsilon`). This screen ranks ``T = G + √V_q δ_t``, so with
``ε_q = ε_G + √V_q (δ_q + 2^-20)`` (the 2^-20 covers the float32 roundings of the added term; |T| < 4 √V_q)
every exact value ``r`` obeys ``T - 2√V_q δ_t - ε_q <= r √V_q <= T + ε_q``: the candidate line of
:func:`~memscan.search.candidates._thresholds` holds with ``ε_q``, where the k-th value of a block is taken
over the lower bounds ``L = T - 2√V_q δ_t``.

**Exact values** (:func:`exact_int_correlation`), one routine for every pair: with ``c`` the item's mean
rounded to an integer, ``x' = x - c`` (``|Σx'| <= d/2``), ``A = Σx'y'`` is a float64 dot product of
integers below 2^16 in magnitude: every partial sum is an integer below ``d 2^32 <= 2^53``
(d <= ``limits.INT16_MAX_D`` = 2^21), so it is exact in any summation order (BLAS included, any thread
count). Then ``r = (A - B C / d) / sqrt((S_x - B²/d)(S_y - C²/d))`` with ``B = Σx'``, ``C = Σy'``,
``S = Σx'²`` exact int64 and ``B C = d Q + R`` split exactly (int64 ``divmod``): ``A - Q`` is exact and the
only roundings are ``- R/d``, the product, the root and the division, in the same order for every pair, so
values are bitwise reproducible across block sizes, devices and thread counts and within a few ulp of the
exact rational value.

Shapes: queries ``[nq, d]``, blocks ``[nb, d]``; dtypes uint8, int8, int16, uint16.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from memscan.errors import InputError
from memscan.search import limits
from memscan.search.blocks import _Groups, _kth, _Prepared, _Screened
from memscan.search.candidates import _round_down_f32, _thresholds
from memscan.search.screen_int import _IntScreen
from memscan.search.stats import _executor

# rows quantised per task (bounded int32/float64 temporaries)
_QUANT_ELEMS = 2**20
# columns per exact int32 partial sum of values in 0..256 (256² · 2^14 = 2^30 < 2^31)
_SEG = 2**14
# margin for the float32 roundings of T = G + √V_q δ_t (module doc)
_ADD_MARGIN = 2.0**-20


def int16_ok(dtype: np.dtype | None) -> bool:
    """Whether items of ``dtype`` take the 16-bit integer path."""
    return dtype is not None and np.dtype(dtype) in limits.INT16_DTYPES


@dataclass
class IntStats:
    """Per-item exact statistics of the 16-bit path (all ``[n]``).

    Attributes:
        centre: int64 ``c`` = the item's mean rounded to an integer.
        sum_c: int64 ``B = Σ(x - c)`` (``|B| <= d/2``).
        sq_c: int64 ``S = Σ(x - c)²``.
        var_d: float64 ``S - B²/d`` (= d · variance), rounded once after the exact integer part.
        delta: float64 ``δ``: the quantised screen's error bound on the unit vector (module doc).
        valid: bool, not constant.
        rho: float64 ``ρ`` (``sin θ <= ρ``, θ the angle between the item's and its quantisation's centred
            vectors), ``inf`` when ρ >= 1; 0 when the screen is exact.
        sums_q: int64 ``[n, 2]`` ``Σq`` and ``Σq²`` of the quantised item (the 8-bit screen's own sums).
    """

    centre: np.ndarray
    sum_c: np.ndarray
    sq_c: np.ndarray
    var_d: np.ndarray
    delta: np.ndarray
    valid: np.ndarray
    rho: np.ndarray
    sums_q: np.ndarray


def _over_d(p: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``p = d Q + R`` exactly (int64 floor division, ``0 <= R < d``)."""
    q, r = np.divmod(p, np.int64(d))
    return q, r


def _row_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Exact per-row ``Σ a`` (``b`` None) or ``Σ a b`` of int32 arrays with values in 0..256, in int64:
    int32 sums over column segments of 2^14 (at most 256² · 2^14 = 2^30 < 2^31), segments added in int64."""
    out = np.zeros(a.shape[0], dtype=np.int64)
    for c in range(0, a.shape[1], _SEG):
        if b is None:
            out += np.einsum("ij->i", a[:, c : c + _SEG])
        else:
            out += np.einsum("ij,ij->i", a[:, c : c + _SEG], b[:, c : c + _SEG])
    return out


def _quantise_rows(raw: np.ndarray, out_q: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, ...]:
    """Quantise rows ``r0:r1`` into ``out_q`` (uint8) and return their exact statistics."""
    d = raw.shape[1]
    x = raw[r0:r1]
    lo = x.min(axis=1)
    rng = x.max(axis=1).astype(np.int64) - lo
    t = np.maximum(1, -(-rng // 255)).astype(np.int32)  # ceil(rng / 255): q = y // t <= 255
    # y = x - m in 0 .. 2^16 - 1, computed in 16 bits (wrapping) and read as uint16: exact, as the true
    # value is in that range; uint16 division is ~3x faster than int32 here
    wide = x if x.dtype.itemsize == 2 else x.astype(np.int16)
    y = np.subtract(wide, lo.astype(wide.dtype)[:, None], dtype=wide.dtype).view(np.uint16)
    t16 = t.astype(np.uint16)[:, None]
    q16 = y // t16
    out_q[r0:r1] = q16
    e = (y - q16 * t16).astype(np.int32)  # y = t q + e, 0 <= e < t <= 257 (q t <= y: no wrap)
    q = q16.astype(np.int32)
    sum_q, sum_e = _row_sums(q), _row_sums(e)
    sq_q, sq_e, qe = _row_sums(q, q), _row_sums(e, e), _row_sums(q, e)
    t64 = t.astype(np.int64)
    sum_y = t64 * sum_q + sum_e
    sq_y = t64 * t64 * sq_q + 2 * t64 * qe + sq_e
    # centring by c = m + round(Σy / d): B = Σy - d r, S = Σy² - 2 r Σy + d r² (exact int64)
    r = (2 * sum_y + d) // (2 * d)
    centre = lo.astype(np.int64) + r
    sum_c = sum_y - d * r
    sq_c = sq_y - 2 * r * sum_y + d * r * r
    qq, rr = _over_d(sum_c * sum_c, d)
    var_d = (sq_c - qq).astype(np.float64) - rr / d
    valid = rng > 0
    # ρ = ||Pe|| / (t ||Pq||) from the exact sums (float64; rounded up by 2^-30 relative)
    ve = np.maximum(sq_e.astype(np.float64) - sum_e.astype(np.float64) ** 2 / d, 0.0)
    vq = sq_q.astype(np.float64) - sum_q.astype(np.float64) ** 2 / d
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.sqrt(ve) / (t.astype(np.float64) * np.sqrt(vq)) * (1.0 + 2.0**-30)
        delta = np.where(
            rho < 1.0, rho * np.sqrt(2.0 / (1.0 + np.sqrt(np.maximum(1.0 - rho * rho, 0.0)))), 2.0
        )
    delta = np.where(t == 1, 0.0, delta)
    delta = np.where(valid, delta, 0.0)
    rho = np.where(rho < 1.0, rho, np.inf)
    rho = np.where((t == 1) | ~valid, 0.0, rho)
    return centre, sum_c, sq_c, var_d, delta, valid, rho, np.stack([sum_q, sq_q], axis=1)


def quantise(raw: np.ndarray) -> tuple[np.ndarray, IntStats]:
    """16-bit integer items → (their 8-bit quantisation ``q`` as uint8 ``[n, d]``, :class:`IntStats`).

    Args:
        raw: ``[n, d]`` uint8/int8/int16/uint16.

    Returns:
        ``(q, stats)``.
    """
    n, d = raw.shape
    q = np.empty((n, d), dtype=np.uint8)
    step = max(1, _QUANT_ELEMS // max(d, 1))
    ranges = [(r, min(n, r + step)) for r in range(0, n, step)]
    if len(ranges) <= 1:
        parts = [_quantise_rows(raw, q, r0, r1) for r0, r1 in ranges]
    else:
        parts = list(_executor().map(lambda rr: _quantise_rows(raw, q, rr[0], rr[1]), ranges))
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        empty = (z, z, z, np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0))
        return q, IntStats(*empty, np.zeros((0, 2), dtype=np.int64))
    cols = [np.concatenate([p[i] for p in parts]) for i in range(8)]
    return q, IntStats(*cols)


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS thread pools (found once; threadpoolctl)."""
    return ThreadpoolController()


def exact_int_correlation(
    qraw: np.ndarray, qs: IntStats, qi: np.ndarray, traw: np.ndarray, ts: IntStats, ti: np.ndarray
) -> np.ndarray:
    """THE exact routine of the 16-bit path: correlations of the pairs ``(qi[p], ti[p])`` (module doc).

    Pairs are grouped by train row; each train row is centred once (float64, exact) and multiplied with its
    queries' raw rows (an exact integer dot product in float64: one read of each query row, no centred
    copy), on the thread pool; the queries' centring is then applied exactly in int64.

    Args:
        qraw: ``[nq, d]`` query items; qs: their :class:`IntStats`.
        qi: int ``[p]`` query rows.
        traw: ``[nt, d]`` train items; ts: their :class:`IntStats`.
        ti: int ``[p]`` train rows.

    Returns:
        float64 ``[p]``.
    """
    p = len(qi)
    d = qraw.shape[1]
    dots = np.empty(p, dtype=np.float64)
    if p == 0:
        return dots
    order = np.argsort(ti, kind="stable")
    uniq, starts = np.unique(ti[order], return_index=True)
    ends = np.append(starts[1:], p)
    rows_per_task = max(1, limits._STATS_ELEMS // max(d, 1))

    def run(u0: int) -> None:
        u1 = min(len(uniq), u0 + rows_per_task)
        tc = traw[uniq[u0:u1]].astype(np.float64)
        tc -= ts.centre[uniq[u0:u1], None].astype(np.float64)
        for j in range(u0, u1):
            for p0 in range(starts[j], ends[j], rows_per_task):  # bounded float64 copies of query rows
                pos = order[p0 : min(ends[j], p0 + rows_per_task)]
                # Σ x_q (y - c_y): integers below d 2^32 <= 2^53, exact in any order (BLAS on float64 rows)
                dots[pos] = qraw[qi[pos]].astype(np.float64) @ tc[j - u0]

    # One BLAS thread per pool worker: BLAS's own threads, spinning beside the pool's, made each small
    # product ~40x slower on this project's 2-core CPU (900 vs 16-21 us per pair of 16,384 values).
    with _blas_controller().limit(limits=1, user_api="blas"):
        list(_executor().map(run, range(0, len(uniq), rows_per_task)))
    # A = Σ (x - c_x)(y - c_y) = Σ x (y - c_y) - c_x Σ (y - c_y), exact in int64
    a_int = dots.astype(np.int64) - qs.centre[qi] * ts.sum_c[ti]
    bq, rq = _over_d(qs.sum_c[qi] * ts.sum_c[ti], d)
    num = (a_int - bq).astype(np.float64) - rq / d
    return num / np.sqrt(qs.var_d[qi] * ts.var_d[ti])


def pair_error_bound(c_lo: np.ndarray, c_hi: np.ndarray, rho_x: np.ndarray, rho_y: np.ndarray) -> np.ndarray:
    """Bound on ``|r - c|`` for pairs whose quantised correlation ``c`` lies in ``[c_lo, c_hi]`` (float64
    ``[p]``; ``inf`` where a ``ρ`` is infinite): ``|c| (1 - √((1 - ρ_x²)(1 - ρ_y²))) + (ρ_x + ρ_y) √(1 - c²)
    + ρ_x ρ_y`` at its worst over the interval, plus 2^-36 for the float64 roundings (proof:
    :func:`_pair_filter`)."""
    m = np.where(c_lo > 0, c_lo, np.where(c_hi < 0, -c_hi, 0.0))  # min |c| over [c_lo, c_hi]
    big = np.maximum(np.abs(c_lo), np.abs(c_hi))
    finite = np.isfinite(rho_x) & np.isfinite(rho_y)
    rx, ry = np.where(finite, rho_x, 0.0), np.where(finite, rho_y, 0.0)
    err = (
        big * (1.0 - np.sqrt((1.0 - rx * rx) * (1.0 - ry * ry)))
        + (rx + ry) * np.sqrt(np.maximum(1.0 - m * m, 0.0))
        + rx * ry
        + 2.0**-36
    )
    return np.where(finite, err, np.inf)


def _pair_filter(
    qi: np.ndarray,
    ti: np.ndarray,
    t_pair: np.ndarray,
    root: np.ndarray,
    eps_g: np.ndarray,
    qs: IntStats,
    ts: IntStats,
    v_k: np.ndarray,
    k: int,
) -> np.ndarray:
    """Which of the candidate pairs survive the per-pair bound (bool ``[p]``); a proven subset filter.

    The block's candidate line uses ``|r - c| <= δ_x + δ_y`` (module doc) for every pair; near the top of
    a row, where ``c`` (the quantised items' correlation) is close to 1, a much tighter bound holds.
    Write the unit centred vectors as ``â = cos θ_x ŵ_x + sin θ_x n_x`` with ``n_x ⊥ ŵ_x`` unit and
    ``sin θ_x <= ρ_x`` (module doc), likewise ``b̂``. Then
    ``â·b̂ = cos θ_x cos θ_y c + cos θ_x sin θ_y ŵ_x·n_y + sin θ_x cos θ_y n_x·ŵ_y + sin θ_x sin θ_y n_x·n_y``,
    and since ``ŵ_x = c ŵ_y + v`` with ``v ⊥ ŵ_y``, ``|v| = √(1 - c²)``: ``|ŵ_x·n_y| <= √(1 - c²)`` (and
    ``|n_x·ŵ_y|`` likewise). So ``|r - c| <= |c| (1 - √((1 - ρ_x²)(1 - ρ_y²))) + (ρ_x + ρ_y) √(1 - c²)
    + ρ_x ρ_y`` — for ``c = 0.99`` the first-order term is 7× smaller than ``δ_x + δ_y``.
    ``c`` is known from the screen's value ``T = G + √V_q δ_t`` within ``ε_G/√V_q + 2^-20`` (the bound of G
    and the float32 rounding of the added term); over that interval the bound is evaluated at its worst
    (smallest ``|c|`` in the root, largest in the first term), plus 2^-36 for the float64 roundings here.
    With ``U``/``L`` the resulting upper/lower bounds of each pair's exact value, a pair is kept iff
    ``U >= max(v_k, s)``, ``s`` the row's k-th largest ``L`` among these pairs (``-inf`` below k pairs):
    ``U < v_k`` means ``r < v_k <= `` the final k-th value; ``U < s`` means k pairs of this block are
    strictly better. Pairs of an item with ``ρ >= 1`` are always kept.

    Args:
        qi, ti: int ``[p]`` query rows and block-local train rows, ``qi`` non-decreasing.
        t_pair: float64 ``[p]`` the screen's values ``T`` of the pairs.
        root: float64 ``[nq]`` ``√V_q`` of the quantised queries; eps_g: float64 ``[nq]`` the block's ε_G.
        qs, ts: the queries' and the block's :class:`IntStats`.
        v_k: float64 ``[nq]`` each query's running exact k-th value (``-inf`` while unknown).
        k: neighbours kept.
    """
    r_q = root[qi]
    ec = eps_g[qi] / r_q + _ADD_MARGIN
    c_mid = t_pair / r_q - ts.delta[ti]
    c_lo, c_hi = np.maximum(c_mid - ec, -1.0), np.minimum(c_mid + ec, 1.0)
    err = pair_error_bound(c_lo, c_hi, qs.rho[qi], ts.rho[ti])
    upper, lower = c_hi + err, c_lo - err
    # each row's k-th largest lower bound among its pairs (qi is sorted: rows are contiguous)
    s_row = np.full(len(root), -np.inf)
    order = np.lexsort((-lower, qi))
    rows, starts, counts = np.unique(qi[order], return_index=True, return_counts=True)
    full = counts >= k
    s_row[rows[full]] = lower[order[starts[full] + k - 1]]
    with np.errstate(invalid="ignore"):
        return upper >= np.maximum(v_k[qi], s_row[qi])


class _Int16Screen:
    """The 16-bit integer path: the 8-bit screen of the quantised items, widened by ``δ``, then exact."""

    exact_scores = True
    precision = "int16"
    rounded_output = False

    def __init__(self, queries: np.ndarray, device: str, k: int) -> None:
        if not int16_ok(queries.dtype):
            raise InputError(f"precision 'int16' needs 8- or 16-bit integer items, got {queries.dtype}")
        self.nq, self.d = queries.shape
        if self.d > limits.INT16_MAX_D:
            raise InputError(f"precision 'int16' supports d <= 2^21, got d={self.d}")
        self.k = k
        self.queries = queries
        qq, self.qs = quantise(queries)
        self.inner = _IntScreen(qq, device, k, sums=self.qs.sums_q)
        self.device = self.inner.device
        self.q_valid = self.inner.q_valid  # q is constant exactly when x is (module doc)
        self.q_root = self.inner.q_root
        self.q_root_f32 = torch.from_numpy(self.q_root.astype(np.float32)).to(self.device)
        self._groups: _Groups | None = None

    @property
    def groups(self) -> _Groups | None:
        return self._groups

    @groups.setter
    def groups(self, value: _Groups | None) -> None:
        self._groups = value
        self.inner.groups = value

    def prepare(self, start: int, raw: np.ndarray) -> _Prepared:
        if not int16_ok(raw.dtype):
            raise InputError(
                f"precision 'int16' needs 8- or 16-bit integer items, got a block of {raw.dtype}"
            )
        qb, st = quantise(raw)
        prep = self.inner.prepare(start, qb, sums=st.sums_q)
        prep.raw = raw
        prep.extra = st
        return prep

    def screen(self, prep: _Prepared) -> _Screened:
        sc = self.inner.screen(prep)
        delta_t = torch.from_numpy(prep.extra.delta.astype(np.float32)).to(self.device)
        sc.scores.addr_(self.q_root_f32, delta_t)  # T = G + √V_q δ_t (-inf stays -inf)
        sc.acc = None  # the quantised products are not the exact ones
        return sc

    def candidates(self, sc: _Screened, v_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The block's pairs that can still enter the top-k and their exact values (query, block-local
        train index, value); ``v_k``: each query's running exact k-th value (``-inf`` while unknown)."""
        prep = sc.prep
        st: IntStats = prep.extra
        if not prep.valid.any():  # a block of constant items: nothing to match (and ε would be infinite)
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64), np.zeros(0)
        root = self.q_root
        eps_g = self.inner.epsilon(prep)
        eps = eps_g + root * (self.qs.delta + _ADD_MARGIN)
        s_k = np.full(self.nq, -np.inf)
        fresh = np.flatnonzero(self.q_valid & ~np.isfinite(v_k))
        if len(fresh):  # k-th largest lower bound L = T - 2 √V_q δ_t of the rows without a running k-th
            # in row chunks: a float64 copy of the whole score block would double the budget's score share
            two_delta = 2.0 * torch.from_numpy(st.delta).to(self.device)[None, :]
            step = max(1, limits._EXACT_ELEMS // max(1, sc.scores.shape[1]))
            for c in range(0, len(fresh), step):
                part = fresh[c : c + step]
                low = sc.scores[torch.from_numpy(part).to(self.device)].double()
                low.sub_(torch.from_numpy(root[part]).to(self.device)[:, None] * two_delta)
                s_k[part] = _kth(low, self.k).cpu().numpy()
                del low
        with np.errstate(invalid="ignore"):
            thr = _thresholds(v_k * root, s_k, eps, self.q_valid, floor=-2.0 * root - 2.0 * eps)
        mask = sc.scores >= torch.from_numpy(_round_down_f32(thr)).to(self.device)[:, None]
        if mask.is_cuda:
            pairs = torch.nonzero(mask).cpu().numpy()
            qi, ti = pairs[:, 0].astype(np.intp), pairs[:, 1].astype(np.intp)
        else:
            flat = np.flatnonzero(mask.numpy())
            qi, ti = (flat // mask.shape[1]).astype(np.intp), (flat % mask.shape[1]).astype(np.intp)
        del mask
        if len(qi):
            if sc.scores.is_cuda:
                dev = sc.scores.device
                at = (torch.from_numpy(qi).to(dev), torch.from_numpy(ti).to(dev))
                t_pair = sc.scores[at].double().cpu().numpy()
            else:
                t_pair = sc.scores.numpy()[qi, ti].astype(np.float64)
            keep = _pair_filter(qi, ti, t_pair, root, eps_g, self.qs, st, v_k, self.k)
            qi, ti = qi[keep], ti[keep]
        vals = exact_int_correlation(self.queries, self.qs, qi, prep.raw, st, ti)
        return qi, ti.astype(np.int64), vals
