"""Exact blockwise top-k Pearson correlation: a low-precision screen plus an exact float64 re-rank.

Why by hand and not faiss: faiss ``IndexFlatIP`` is exact only in float32 (its scores carry float32
rounding, so near-ties can come out in the wrong order), it has no low-precision screen followed by an
exact re-rank with a *proven* margin, and no float64-exact Pearson top-k that streams the training
set from disk block by block. This module does all three:

1. **Normalise** every item once (per block): subtract its mean, divide by ``||x - mean||`` (both in
   float64, :func:`item_stats`). Constant items (norm 0, or not finite) are invalid: never matched;
   a constant query gets ``-1`` / ``NaN``. The correlation is then the dot product of normalised items.
2. **Screen**: ``S = Zq @ Ztᵀ`` with ``torch.mm`` in the screen precision (bf16 on AMX / GPUs), with the
   reduction split into chunks of at most ``chunk`` terms; :func:`screen_epsilon` proves
   ``|S - exact| <= ε`` for *every* pair, whatever the data.
3. **Candidates** (per block, no buffering across blocks): with ``s_k`` the query's k-th largest
   screened value inside the block and ``v_k`` its running exact k-th value (``-inf`` while fewer than
   k are known), every item that can still enter the final top-k satisfies
   ``S_j >= max(v_k - ε, s_k - 2ε)`` (proof in :func:`_thresholds`). If a query has more than
   ``candidate_cap`` candidates in a block it is evaluated exactly against the whole block instead
   (counted in ``n_fallback``).
4. **Re-rank** candidates exactly on the CPU with ONE routine (:func:`exact_correlation`) used for
   every pair on every path, so results do not depend on block size, device, thread count or on which
   path found the pair: ``sum((x_q - μ_q) * (x_t - μ_t)) / (norm_q * norm_t)`` as a float64 elementwise
   product summed along contiguous rows (NumPy pairwise summation, never BLAS, whose rounding can
   depend on the thread count).
5. **Merge** the running top-k with ``np.lexsort``: by value (descending), ties to the LOWER train index.

So ``precision='bf16'`` and ``precision='float64'`` return bitwise identical results; the screen
precision only changes how many candidates are re-ranked.

**Exact integer path** (``precision='int8'``, the default for 8-bit data such as the study's PNG-like
slices): Pearson correlation is invariant to shifts, so with ``x' = x - 128`` (int8, exact) it is
``(d Σx'y' - Σx' Σy') / sqrt((d Σx'² - (Σx')²) (d Σy'² - (Σy')²))``. ``Σx'y'`` comes from the int8
matrix unit (``torch._int_mm``: AMX/VNNI on CPUs, int8 tensor cores on GPUs) with int32 accumulation,
which is *exact* as long as a chunk has fewer than 2^31 / 2^14 = 131,072 terms; chunk sums add up in
int64, and the numerator and variances are exact int64 for d ≤ 2^24. The block's products are then
*ranked* in float32 (one scaled copy per block, no float64 pass over all pairs) with a proven
per-query bound (:meth:`_IntScreen.epsilon`), the same candidate line as step 3 selects the pairs
that can still enter the top-k, and only those are evaluated exactly from their integer products
(:meth:`_IntScreen.exact`). The only rounding in a value is the final float64 product of the
variances, square root and division (a few ulp), performed in the same order for every pair, so
values are bitwise reproducible across block sizes, devices and thread counts. ``epsilon`` is
reported as 0: no value carries screen error. Values agree with the float64 routine to ~1e-15 (not
bitwise: a different, equally exact formula).

The error bound follows the standard rounding-error model and the inner-product bound
``|fl(xᵀy) - xᵀy| <= γ_m Σ|x_i y_i|``, ``γ_m = m u / (1 - m u)``, valid for any summation order
(N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002, §2.2, Lemma 3.1,
§3.1 (3.4)-(3.5)). See :func:`screen_epsilon` for the derivation.

What torch does on the CPU (torch 2.13): ``torch.mm(a, b, out_dtype=torch.float32)`` is *not*
implemented for the CPU backend (``aten::mm.dtype`` raises ``NotImplementedError``), and
``out=float32`` is rejected for bf16 inputs; the bf16 product (oneDNN/AMX) accumulates in float32 and
rounds the *output* to bf16. That final rounding is therefore part of ε on the CPU (the term
``u_out (1 + γ_m) P`` below, ≈ 3.9e-3 for bf16). On CUDA the engine uses ``out_dtype=float32`` when
the build supports it (and disables cuBLAS reduced-precision reductions), which removes that term.

Shapes: queries ``[nq, d]``, train blocks ``[n_b, d]`` (items flattened; any real dtype, raw values).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from memscan.errors import InputError
from memscan.search import limits
from memscan.search.blocks import _Groups, _Prepared, _Screened
from memscan.search.bounds import screen_epsilon
from memscan.search.candidates import _round_down_f32, _thresholds
from memscan.search.exact import _exact_grouped, exact_correlation
from memscan.search.limits import AUTO_SWITCH_FRACTION, INT8_CHUNK, INT8_MAX_D, PRECISIONS, SCREEN_CHUNK
from memscan.search.precision import resolve_precision
from memscan.search.screen_float import _fill_normalised, _Screen
from memscan.search.screen_int import _IntScreen, int8_block
from memscan.search.screen_int16 import _Int16Screen
from memscan.search.stats import _check_real, _map_rows, _rows_f64, _valid, item_stats
from memscan.search.topk import merge_running as _merge

logger = logging.getLogger(__name__)

# the names scanning, variants, cluster, the benchmarks and the tests import from here
__all__ = [
    "AUTO_SWITCH_FRACTION",
    "INT8_CHUNK",
    "INT8_MAX_D",
    "PRECISIONS",
    "SCREEN_CHUNK",
    "_IntScreen",
    "_Screen",
    "_fill_normalised",
    "_map_rows",
    "_valid",
    "int8_block",
    "SearchResult",
    "exact_correlation",
    "item_stats",
    "resolve_precision",
    "screen_epsilon",
    "search_topk",
]


@dataclass
class SearchResult:
    """Exact top-k result.

    Attributes:
        values: float64 ``[nq, k]`` correlations, descending per row; ``NaN`` where no match.
        indices: int64 ``[nq, k]`` train indices; ``-1`` where no match (constant query, or fewer valid
            train items than ``k``). Equal values are ordered by the lower train index.
        n_candidates: total number of (query, train) pairs evaluated exactly.
        n_fallback: number of (query, sub-block) pairs evaluated exactly against the whole sub-block
            because the query had more than ``candidate_cap`` candidates there.
        precision: the resolved screen precision (the last one used, when 'auto' switched).
        epsilon: the proven bound on the screen's error that was used (of the last precision).
        switched_from: the precision 'auto' started with before it switched to ``precision`` (see
            :data:`AUTO_SWITCH_FRACTION`), else None.
    """

    values: np.ndarray
    indices: np.ndarray
    n_candidates: int
    n_fallback: int
    precision: str
    epsilon: float
    switched_from: str | None = None


def search_topk(
    queries: np.ndarray,
    train_blocks: Callable[[], Iterable[tuple[int, np.ndarray]]],
    k: int,
    *,
    precision: str = "auto",
    device: str = "cpu",
    candidate_cap: int = 2048,
    progress: Callable[[int], None] | None = None,
    chunk: int = limits.SCREEN_CHUNK,
    query_groups: np.ndarray | None = None,
    train_groups: np.ndarray | None = None,
) -> SearchResult:
    """Exact top-k Pearson correlation of every query against a streamed training set.

    Args:
        queries: ``[nq, d]`` raw items (uint8/uint16/float32/float64 ...), not normalised.
        train_blocks: called once; yields ``(start_index, block [n_b, d])`` in increasing, contiguous
            start order covering ``0 .. n_train - 1``.
        k: number of neighbours per query (≥ 1).
        precision: screen precision, 'auto' | 'bf16' | 'fp16' | 'tf32' (CUDA) | 'float32' | 'float64'.
            Results do not depend on it (only the number of re-ranked candidates does).
        device: 'cpu' | 'cuda' (screen on the GPU; the exact re-rank always runs on the CPU).
        candidate_cap: above this many candidates in a sub-block, a query is evaluated exactly against
            the whole sub-block.
        progress: called with the number of train items finished after each block.
        chunk: maximal reduction length of one screened product (1 … 65,536).
        query_groups: optional int ``[nq]`` group ids; with ``train_groups`` (int ``[n_train]``), a query
            is never matched with a train item of its own group (train-vs-train baselines: the item
            itself, or its whole subject).

    Returns:
        :class:`SearchResult` with float64 values and int64 indices ``[nq, k]``.
    """
    queries = _check_real(queries, "queries")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if candidate_cap < 1:
        raise InputError(f"candidate_cap must be >= 1, got {candidate_cap}")
    if not 1 <= chunk <= 65536:
        raise InputError(f"chunk must be in 1..65536, got {chunk}")
    adaptive = precision == "auto"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch.cuda.is_available() is False")
    nq, d = queries.shape
    if d == 0:
        raise InputError("items have no values (d = 0)")
    if (query_groups is None) != (train_groups is None):
        raise InputError("query_groups and train_groups go together")
    if query_groups is not None and len(query_groups) != nq:
        raise InputError(f"query_groups has {len(query_groups)} entries for {nq} queries")
    best_v = np.full((nq, k), -np.inf)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    n_cand = 0
    n_fallback = 0
    sub_rows = max(1, min(limits._SCORE_ELEMS // max(nq, 1), limits._ROW_ELEMS // d))

    def sub_blocks() -> Iterator[tuple[int, np.ndarray, int]]:
        expected = 0
        for start, block in train_blocks():
            block = _check_real(block, "train block")
            if block.shape[1] != d:
                raise InputError(f"train block at {start} has d={block.shape[1]}, queries have d={d}")
            if int(start) != expected:
                raise InputError(
                    f"train blocks must be contiguous and increasing: expected start {expected}, got {start}"
                )
            n_b = block.shape[0]
            for r in range(0, n_b, sub_rows):
                yield int(start) + r, block[r : r + sub_rows], (n_b if r + sub_rows >= n_b else 0)
            expected += n_b

    def candidate_mask(sc: _Screened, v_k: np.ndarray, eps: float) -> torch.Tensor:
        """The screened pairs of a float screen that can still enter the top-k (:func:`_thresholds`)."""
        assert sc.s_k is not None
        thr = _thresholds(v_k, sc.s_k.double().cpu().numpy(), eps, q_valid)
        if sc.scores.dtype == torch.float32:
            thr_t = torch.from_numpy(_round_down_f32(thr)).to(sc.scores.device)
        else:
            thr_t = torch.from_numpy(thr).to(sc.scores.device)
        return sc.scores >= thr_t[:, None]

    def finish(sc: _Screened, eps: float) -> None:
        nonlocal best_v, best_i, n_cand, n_fallback
        prep = sc.prep
        v_k = best_v[:, -1]
        if isinstance(screen, _IntScreen | _Int16Screen):  # integer paths: their candidates come exact
            qi, ti, vals = screen.candidates(sc, v_k)
            n_cand += len(qi)
            best_v, best_i = _merge(best_v, best_i, qi, ti + prep.start, vals)
            return
        mask = candidate_mask(sc, v_k, eps)
        counts = mask.sum(dim=1)
        over = counts > candidate_cap
        n_over = int(over.sum())
        if n_over:
            mask[over] = False
        pairs = torch.nonzero(mask).cpu().numpy()
        qi = pairs[:, 0].astype(np.intp)
        ti = pairs[:, 1].astype(np.intp)
        if n_over:
            fq = torch.nonzero(over).flatten().cpu().numpy().astype(np.intp)
            vt = np.flatnonzero(prep.valid).astype(np.intp)
            fqi, fti = np.repeat(fq, len(vt)), np.tile(vt, len(fq))
            if screen.groups is not None:  # never the excluded same-group pairs
                keep = screen.groups.query[fqi] != screen.groups.train[fti + prep.start]
                fqi, fti = fqi[keep], fti[keep]
            qi = np.concatenate([qi, fqi])
            ti = np.concatenate([ti, fti])
            n_fallback += n_over
        del mask, sc.scores
        if q_centred is not None:
            vals = _exact_grouped(q_centred, q_norm, qi, prep.raw, prep.mean, prep.norm, ti)
        else:
            vals = exact_correlation(queries, q_mean, q_norm, qi, prep.raw, prep.mean, prep.norm, ti)
        n_cand += len(qi)
        best_v, best_i = _merge(best_v, best_i, qi, ti.astype(np.int64) + prep.start, vals)

    def probe_bf16(prepared: _Prepared) -> _Screened | None:
        """'auto' on float data: screen the first block in bf16 and count the pairs it leaves for the exact
        re-rank beyond each query's top-k. Above :data:`AUTO_SWITCH_FRACTION` of the block (an exact pair
        costs ~100-1,000 screened ones), the scan screens in float32 instead and this block is screened
        again; the results cannot change (every screen is followed by the same exact re-rank). Returns the
        block's bf16 screen when it is kept."""
        nonlocal screen, eps, precision, started_with
        assert isinstance(screen, _Screen)
        z, raw_dev = prepared.z, prepared.raw_dev  # screen() lets go of them; a float32 screen needs them
        sc = screen.screen(prepared)
        n_pairs = int(sc.scores.shape[0] * sc.scores.shape[1])
        # beyond the k per query that any screen leaves in a first block
        n_extra = int(candidate_mask(sc, best_v[:, -1], eps).sum()) - k * int(q_valid.sum())
        zq32, screen.zq32 = screen.zq32, None
        if n_extra <= limits.AUTO_SWITCH_FRACTION * n_pairs:
            return sc
        logger.info(
            "the bf16 screen leaves %d pairs beyond the top-%d of the first block's %d for the exact re-rank "
            "(> %.1f%%): screening in float32",
            n_extra,
            k,
            n_pairs,
            100 * limits.AUTO_SWITCH_FRACTION,
        )
        started_with, precision = precision, "float32"
        screen.zq = []  # free the bf16 queries before the float32 copy is made
        del sc
        screen = _Screen(
            queries if zq32 is None else zq32, q_mean, q_norm, q_valid, precision, device, chunk, k
        )
        screen.groups = groups
        eps = screen_epsilon(precision, d, chunk, rounded_output=screen.rounded_output)
        prepared.z, prepared.raw_dev = z, raw_dev  # the block, ready for the float32 screen
        return None

    it = sub_blocks()
    cur = next(it, None)
    # the first sub-block tells the train items' dtype: the integer paths need both sides integer
    precision = resolve_precision(
        precision, device, queries.dtype, d, train_dtype=cur[1].dtype if cur is not None else None
    )
    adaptive = adaptive and precision == "bf16"

    screen: _Screen | _IntScreen | _Int16Screen
    if precision in ("int8", "int16"):
        screen = _IntScreen(queries, device, k) if precision == "int8" else _Int16Screen(queries, device, k)
        q_valid = screen.q_valid
        q_mean = q_norm = np.zeros(0)
        eps = 0.0
    else:
        q_mean, q_norm = item_stats(queries)
        q_valid = _valid(q_mean, q_norm)
        screen = _Screen(queries, q_mean, q_norm, q_valid, precision, device, chunk, k, keep_float32=adaptive)
        eps = screen_epsilon(precision, d, chunk, rounded_output=screen.rounded_output)
    groups = None
    if query_groups is not None and train_groups is not None:
        groups = _Groups(np.asarray(query_groups, dtype=np.int64), np.asarray(train_groups, dtype=np.int64))
        screen.groups = groups
    started_with: str | None = None
    logger.debug(
        "search_topk: nq=%d d=%d k=%d precision=%s device=%s eps=%.3e", nq, d, k, precision, device, eps
    )

    # centred float64 queries, kept when they fit in limits._QUERY_CACHE_BYTES (faster exact re-rank)
    q_centred: np.ndarray | None = None  # (long rows are re-ranked segment by segment: no cache)
    if not screen.exact_scores and nq * d * 8 <= limits._QUERY_CACHE_BYTES and d <= limits._SEGMENT:
        q_centred = np.empty((nq, d), dtype=np.float64)
        for r in range(0, nq, 1024):
            q_centred[r : r + 1024] = _rows_f64(queries, r, min(nq, r + 1024))
            q_centred[r : r + 1024] -= q_mean[r : r + 1024, None]
    pending: _Screened | None = None
    pending_eps = eps
    done_after: int = 0
    prepared = screen.prepare(cur[0], cur[1]) if cur is not None else None
    first: _Screened | None = None
    if adaptive and prepared is not None:
        first = probe_bf16(prepared)
    while prepared is not None and cur is not None:
        # Taking the next sub-block first starts the stream's read-ahead of the block after it now, so
        # that the read overlaps this product (long, on all cores) rather than the next block's
        # statistics (short products, which stall when a reader thread holds a core). Preparing the next
        # block in a background thread during the product was measured too: no faster on 2 cores
        # (2.51 vs 2.38 s, five alternating runs), so it stays sequential.
        nxt = next(it, None)
        screened = first if first is not None else screen.screen(prepared)
        screened_eps, first = eps, None
        # the next block's statistics (and on CUDA its copy) overlap this block's product on the GPU
        prepared = screen.prepare(nxt[0], nxt[1]) if nxt is not None else None
        if pending is not None:
            finish(pending, pending_eps)
            if progress is not None and done_after:
                progress(done_after)
        pending, pending_eps, done_after = screened, screened_eps, cur[2]
        cur = nxt
    if pending is not None:
        finish(pending, pending_eps)
        if progress is not None and done_after:
            progress(done_after)

    values = np.where(best_i >= 0, best_v, np.nan)
    return SearchResult(
        values=values,
        indices=best_i,
        n_candidates=n_cand,
        n_fallback=n_fallback,
        precision=precision,
        epsilon=eps,
        switched_from=started_with,
    )
