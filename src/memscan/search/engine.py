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

**Exact 16-bit path** (``precision='int16'``, the default when both sides are 8- or 16-bit integers and
not both uint8): an int8 screen of each item quantised to 8 bits under a proven bound, then an exact integer
re-rank of the pairs it cannot rule out (:mod:`memscan.search.screen_int16`).

Where each piece lives (one concept per module): :mod:`~memscan.search.limits` (constants),
:mod:`~memscan.search.bounds` (ε), :mod:`~memscan.search.precision` (resolving ``auto``),
:mod:`~memscan.search.stats` (row statistics, normalisation), :mod:`~memscan.search.exact` (the float64
routine), :mod:`~memscan.search.candidates` (the candidate line), :mod:`~memscan.search.blocks` (a block
as the screens see it), :mod:`~memscan.search.topk` (the one top-k rule), :mod:`~memscan.search.screen_float`,
:mod:`~memscan.search.screen_int`, :mod:`~memscan.search.screen_int16`; this module is the driver.

Shapes: queries ``[nq, d]``, train blocks ``[n_b, d]`` (items flattened; any real dtype, raw values).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

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
from memscan.search.topk import RunningTopK

# mallopt(3) parameter number of M_MMAP_THRESHOLD (glibc malloc.h)
_M_MMAP_THRESHOLD = -3

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


#: The forms of a training set :func:`search_topk` takes (``[n_train, d]`` in all).
TrainBlocks = (
    np.ndarray
    | Callable[[], Iterable[tuple[int, np.ndarray]]]
    | Iterable[np.ndarray | tuple[int, np.ndarray]]
)


def _numbered(train_blocks: TrainBlocks) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, block)`` pairs from any accepted form of the training set (see :func:`search_topk`)."""
    if isinstance(train_blocks, np.ndarray):
        arr = _check_real(train_blocks, "train")
        step = max(1, limits._ROW_ELEMS // max(arr.shape[1], 1))
        for s in range(0, len(arr), step):
            yield s, arr[s : s + step]
        return
    source = train_blocks() if callable(train_blocks) else train_blocks
    start = 0
    for item in source:
        if isinstance(item, tuple):
            yield item
            start = int(item[0]) + len(item[1])
        else:  # a bare block, as faiss' knn_ground_truth takes them: numbered in order
            yield start, item
            start += len(item)


def _sub_blocks(train_blocks: TrainBlocks, d: int, sub_rows: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """Validated sub-blocks ``(start, rows [≤ sub_rows, d], n_done)``; ``n_done`` is the block's size on its
    last sub-block (for ``progress``), else 0. A block is cut into sub-blocks of equal size (± 1 row): a
    small remainder would be a product call of its own, and each call re-packs the queries (~10% slower
    per row at 944 rows than at 4,096–8,192 on this project's CPU)."""
    expected = 0
    for start, block in _numbered(train_blocks):
        block = _check_real(block, "train block")
        if block.shape[1] != d:
            raise InputError(f"train block at {start} has d={block.shape[1]}, queries have d={d}")
        if int(start) != expected:
            raise InputError(
                f"train blocks must be contiguous and increasing: expected start {expected}, got {start}"
            )
        n_b = block.shape[0]
        rows = -(-n_b // max(1, -(-n_b // sub_rows)))  # ceil(n_b / number of sub-blocks) <= sub_rows
        for r in range(0, n_b, rows):
            yield int(start) + r, block[r : r + rows], (n_b if r + rows >= n_b else 0)
        expected += n_b


@dataclass
class _FloatQueries:
    """The queries as the float paths' exact re-rank needs them (statistics, optional centred cache)."""

    raw: np.ndarray  # [nq, d]
    mean: np.ndarray  # float64 [nq]
    norm: np.ndarray  # float64 [nq]
    valid: np.ndarray  # bool [nq]
    centred: np.ndarray | None  # float64 [nq, d] when it fits limits._QUERY_CACHE_BYTES (short rows)

    @classmethod
    def of(cls, queries: np.ndarray, *, keep_centred: bool) -> _FloatQueries:
        mean, norm = item_stats(queries)
        nq, d = queries.shape
        centred = None
        if keep_centred and nq * d * 8 <= limits._QUERY_CACHE_BYTES and d <= limits._SEGMENT:
            centred = np.empty((nq, d), dtype=np.float64)
            for r in range(0, nq, 1024):
                centred[r : r + 1024] = _rows_f64(queries, r, min(nq, r + 1024))
                centred[r : r + 1024] -= mean[r : r + 1024, None]
        return cls(queries, mean, norm, _valid(mean, norm), centred)

    def exact(self, qi: np.ndarray, prep: _Prepared, ti: np.ndarray) -> np.ndarray:
        """Exact values of the pairs (query ``qi``, block row ``ti``) by THE float64 routine."""
        if self.centred is not None:
            return _exact_grouped(self.centred, self.norm, qi, prep.raw, prep.mean, prep.norm, ti)
        return exact_correlation(self.raw, self.mean, self.norm, qi, prep.raw, prep.mean, prep.norm, ti)


def _candidate_mask(sc: _Screened, v_k: np.ndarray, eps: float, q_valid: np.ndarray) -> torch.Tensor:
    """The screened pairs of a float screen that can still enter the top-k (:func:`_thresholds`)."""
    assert sc.s_k is not None
    thr = _thresholds(v_k, sc.s_k.double().cpu().numpy(), eps, q_valid)
    if sc.scores.dtype == torch.float32:
        thr_t = torch.from_numpy(_round_down_f32(thr)).to(sc.scores.device)
    else:
        thr_t = torch.from_numpy(thr).to(sc.scores.device)
    return sc.scores >= thr_t[:, None]


def _float_candidates(
    sc: _Screened, v_k: np.ndarray, eps: float, q_valid: np.ndarray, cap: int, groups: _Groups | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(query rows, block rows, number of queries over ``cap``) of a float screen's candidates; a query with
    more than ``cap`` candidates takes every valid item of the block (never an excluded same-group pair)."""
    prep = sc.prep
    mask = _candidate_mask(sc, v_k, eps, q_valid)
    over = mask.sum(dim=1) > cap
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
        if groups is not None:
            keep = groups.query[fqi] != groups.train[fti + prep.start]
            fqi, fti = fqi[keep], fti[keep]
        qi = np.concatenate([qi, fqi])
        ti = np.concatenate([ti, fti])
    return qi, ti, n_over


@dataclass
class _Search:
    """One search's state: the screen, the running top-k and the counters (the driver's loop below)."""

    queries: np.ndarray
    k: int
    device: str
    chunk: int
    candidate_cap: int
    precision: str
    screen: _Screen | _IntScreen | _Int16Screen
    eps: float
    fq: _FloatQueries | None
    q_valid: np.ndarray
    groups: _Groups | None
    top: RunningTopK
    n_fallback: int = 0
    switched_from: str | None = None

    def finish(self, sc: _Screened, eps: float) -> None:
        """Exact values of a screened block's candidates, merged into the running top-k."""
        prep = sc.prep
        v_k = self.top.kth()
        if isinstance(self.screen, _IntScreen | _Int16Screen):  # integer paths: candidates come exact
            qi, ti, vals = self.screen.candidates(sc, v_k)
            self.top.add(qi, ti + prep.start, vals)
            return
        assert self.fq is not None
        qi, ti, n_over = _float_candidates(sc, v_k, eps, self.q_valid, self.candidate_cap, self.groups)
        self.n_fallback += n_over
        del sc.scores
        self.top.add(qi, ti.astype(np.int64) + prep.start, self.fq.exact(qi, prep, ti))

    def probe_bf16(self, prepared: _Prepared) -> _Screened | None:
        """'auto' on float data: screen the first block in bf16 and count the pairs it leaves for the exact
        re-rank beyond each query's top-k. Above :data:`AUTO_SWITCH_FRACTION` of the block (an exact pair
        costs ~100-1,000 screened ones), the search screens in float32 instead and this block is screened
        again; the results cannot change (every screen is followed by the same exact re-rank). Returns the
        block's bf16 screen when it is kept."""
        screen = self.screen
        assert isinstance(screen, _Screen) and self.fq is not None
        z, raw_dev = prepared.z, prepared.raw_dev  # screen() lets go of them; a float32 screen needs them
        sc = screen.screen(prepared)
        n_pairs = int(sc.scores.shape[0] * sc.scores.shape[1])
        # beyond the k per query that any screen leaves in a first block
        n_extra = int(_candidate_mask(sc, self.top.kth(), self.eps, self.q_valid).sum())
        n_extra -= self.k * int(self.q_valid.sum())
        zq32, screen.zq32 = screen.zq32, None
        if n_extra <= limits.AUTO_SWITCH_FRACTION * n_pairs:
            return sc
        logger.info(
            "the bf16 screen leaves %d pairs beyond the top-%d of the first block's %d for the exact re-rank "
            "(> %.1f%%): screening in float32",
            n_extra,
            self.k,
            n_pairs,
            100 * limits.AUTO_SWITCH_FRACTION,
        )
        self.switched_from, self.precision = self.precision, "float32"
        screen.zq = []  # free the bf16 queries before the float32 copy is made
        del sc
        fq = self.fq
        self.screen = _Screen(
            self.queries if zq32 is None else zq32,
            fq.mean,
            fq.norm,
            fq.valid,
            self.precision,
            self.device,
            self.chunk,
            self.k,
        )
        self.screen.groups = self.groups
        d = self.queries.shape[1]
        self.eps = screen_epsilon(self.precision, d, self.chunk, rounded_output=self.screen.rounded_output)
        prepared.z, prepared.raw_dev = z, raw_dev  # the block, ready for the float32 screen
        return None


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system once per block (glibc ``malloc_trim(0)``).

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; blocks of that size
    then come from the heap arenas and stay in the process when freed. The search's per-block temporaries,
    allocated from several threads, so kept the int16 scan's RSS ~170 MiB above its live memory (385 MiB
    at ``--memory-budget 256MiB``, docs/benchmarks.md). Fixing the threshold instead (mallopt) made every
    temporary a fresh mapping and the scan 3-4x slower; one trim per block costs one walk of the heap.
    No-op where the C library is not glibc.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _fixed_mmap_threshold(query_bytes: int) -> None:
    """Fix glibc's mmap threshold at an eighth of the query block, within 4–32 MiB (mallopt(3); no-op
    elsewhere).

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed; blocks of that size
    then come from the heap arenas and stay in the process when freed: with the search's per-block
    temporaries allocated from several threads, the int16 scan's RSS at ``--memory-budget 256MiB`` was
    385 MiB above imports for ~213 MiB of live memory (docs/benchmarks.md). A fixed threshold maps and
    unmaps every block above it. The scan sizes query blocks from the memory budget, so the threshold
    follows the budget: small budgets return their temporaries at once; at large budgets only blocks above
    16–32 MiB are mapped, as glibc does by default. (A 128 KiB threshold made every row copy of the re-rank
    a fresh mapping: 3-4x slower.)
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, int(min(max(query_bytes // 8, 4 * 2**20), 32 * 2**20)))


def search_topk(
    queries: np.ndarray,
    train_blocks: TrainBlocks,
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
        queries: ``[nq, d]`` raw items (uint8/int16/uint16/float32/float64 ...), not normalised.
        train_blocks: the training items, ``[n_train, d]`` in one of three forms: an array; a callable
            returning an iterable of ``(start_index, block [n_b, d])`` in increasing, contiguous start order
            covering ``0 .. n_train - 1`` (called once); or a plain iterable of blocks ``[n_b, d]`` (or of
            such pairs), numbered in order, as faiss' ``knn_ground_truth`` takes them.
        k: number of neighbours per query (≥ 1).
        precision: screen precision, 'auto' | 'int8' | 'int16' | 'bf16' | 'fp16' | 'tf32' (CUDA) |
            'float32' | 'float64'. Results do not depend on it (only the number of re-ranked candidates
            does).
        device: 'cpu' | 'cuda' (screen on the GPU; the exact re-rank always runs on the CPU).
        candidate_cap: above this many candidates in a sub-block, a query is evaluated exactly against
            the whole sub-block (float paths).
        progress: called with the number of train items finished after each block.
        chunk: maximal reduction length of one screened product (1 … 65,536).
        query_groups: optional int ``[nq]`` group ids; with ``train_groups`` (int ``[n_train]``), a query
            is never matched with a train item of its own group (train-vs-train baselines: the item
            itself, or its whole subject).

    Returns:
        :class:`SearchResult` with float64 values and int64 indices ``[nq, k]``.
    """
    queries = _check_real(queries, "queries")
    _fixed_mmap_threshold(queries.nbytes)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if candidate_cap < 1:
        raise InputError(f"candidate_cap must be >= 1, got {candidate_cap}")
    if not 1 <= chunk <= 65536:
        raise InputError(f"chunk must be in 1..65536, got {chunk}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch.cuda.is_available() is False")
    nq, d = queries.shape
    if d == 0:
        raise InputError("items have no values (d = 0)")
    if (query_groups is None) != (train_groups is None):
        raise InputError("query_groups and train_groups go together")
    if query_groups is not None and len(query_groups) != nq:
        raise InputError(f"query_groups has {len(query_groups)} entries for {nq} queries")
    # the first block tells the train items' dtype: the integer paths need both sides integer
    numbered = _numbered(train_blocks)
    head = next(numbered, None)
    train_dtype = _check_real(head[1], "train block").dtype if head is not None else None
    resolved = resolve_precision(precision, device, queries.dtype, d, train_dtype=train_dtype)
    # a sub-block's screen copy: float32/bf16 rows on the float paths, int8 rows (a quarter of the bytes)
    # on the integer paths; its scores [nq, rows] bound it too
    row_elems = limits._ROW_ELEMS * (4 if resolved in ("int8", "int16") else 1)
    sub_rows = max(1, min(limits._SCORE_ELEMS // max(nq, 1), row_elems // d))
    it = _sub_blocks(itertools.chain([head], numbered) if head is not None else iter(()), d, sub_rows)
    cur = next(it, None)
    adaptive = precision == "auto" and resolved == "bf16"
    screen: _Screen | _IntScreen | _Int16Screen
    fq = None
    if resolved in ("int8", "int16"):
        screen = _IntScreen(queries, device, k) if resolved == "int8" else _Int16Screen(queries, device, k)
        q_valid, eps = screen.q_valid, 0.0
    else:
        fq = _FloatQueries.of(queries, keep_centred=True)
        q_valid = fq.valid
        screen = _Screen(
            queries, fq.mean, fq.norm, q_valid, resolved, device, chunk, k, keep_float32=adaptive
        )
        eps = screen_epsilon(resolved, d, chunk, rounded_output=screen.rounded_output)
    groups = None
    if query_groups is not None and train_groups is not None:
        groups = _Groups(np.asarray(query_groups, dtype=np.int64), np.asarray(train_groups, dtype=np.int64))
        screen.groups = groups
    logger.debug(
        "search_topk: nq=%d d=%d k=%d precision=%s device=%s eps=%.3e", nq, d, k, resolved, device, eps
    )
    state = _Search(
        queries,
        k,
        device,
        chunk,
        candidate_cap,
        resolved,
        screen,
        eps,
        fq,
        q_valid,
        groups,
        RunningTopK(nq, k),
    )

    # Block i is screened while block i+1 is prepared and block i-1's candidates are finished (on CUDA the
    # next block's copy and statistics overlap this block's product).
    pending: _Screened | None = None
    pending_eps, done_after = state.eps, 0
    prepared = state.screen.prepare(cur[0], cur[1]) if cur is not None else None
    first = state.probe_bf16(prepared) if adaptive and prepared is not None else None
    while prepared is not None and cur is not None:
        # Taking the next sub-block first starts the stream's read-ahead of the block after it now, so
        # that the read overlaps this product (long, on all cores) rather than the next block's
        # statistics (short products, which stall when a reader thread holds a core). Preparing the next
        # block in a background thread during the product was measured too: no faster on 2 cores
        # (2.51 vs 2.38 s, five alternating runs), so it stays sequential.
        nxt = next(it, None)
        screened = first if first is not None else state.screen.screen(prepared)
        screened_eps, first = state.eps, None
        prepared = state.screen.prepare(nxt[0], nxt[1]) if nxt is not None else None
        if pending is not None:
            state.finish(pending, pending_eps)
            _release_freed_memory()
            if progress is not None and done_after:
                progress(done_after)
        pending, pending_eps, done_after = screened, screened_eps, cur[2]
        cur = nxt
    if pending is not None:
        state.finish(pending, pending_eps)
        if progress is not None and done_after:
            progress(done_after)

    values, indices = state.top.result()
    return SearchResult(
        values=values,
        indices=indices,
        n_candidates=state.top.n_pairs,
        n_fallback=state.n_fallback,
        precision=state.precision,
        epsilon=state.eps,
        switched_from=state.switched_from,
    )
