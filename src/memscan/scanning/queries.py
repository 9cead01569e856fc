"""Searching query sets: one block of query items against the whole training set, every variant, checkpointed.

A query set (the synthetic items, the held-out items, the baselines' sampled training items) is searched
block by block (:class:`Searcher`); each block is searched once per query *variant* (identity, the
left-right mirror with ``flips``, the eight orientations with ``orientations``), the per-variant top-k
lists merged with one tie rule (``memscan.search.variants.merge_variants``: the variant listed first wins
equal values, then the lower training index), and, with ``max_shift``, the candidates re-ranked exactly
over integer shifts (:func:`shift_rerank`). Shapes: items ``[n, C, *S]``; results ``[n, k]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from memscan.core.progress import progress
from memscan.dataset.store import Dataset
from memscan.scanning.options import ScanOptions
from memscan.scanning.state import Checkpoints
from memscan.search import engine, transforms, variants
from memscan.search.features import Features, check_finite_train
from memscan.search.topk import select_topk

#: The shift re-rank's candidate banks get 1/SHIFT_BANK_SHARE of the memory budget (groups of >= 16).
SHIFT_BANK_SHARE = 8


def variant_names(opts: ScanOptions) -> tuple[str, ...]:
    """The query variants searched, in tie-break order (identity first)."""
    if opts.orientations:
        return transforms.ORIENTATIONS
    return transforms.MIRROR if opts.flips else ("none",)


def train_stream(train: Dataset, feats: Features, block: int, cache: list | None) -> Callable[[], Iterator]:
    """Callable returning a fresh iterator of ``(start, features [n, d])`` training blocks.

    Block ``i + 1`` is read (and decompressed) in a background thread while block ``i`` is compared. With
    ``cache`` (a list), the first pass fills it and later passes replay it from memory. Every block is
    checked once for non-finite values (:func:`check_finite_train`).
    """

    def read(s: int) -> np.ndarray:
        return check_finite_train(train, s, feats(train.read(s, s + block)))

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        if cache is not None and cache:
            yield from cache
            return
        starts = list(range(0, train.n_items, block))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="memscan-read") as pool:
            ahead = pool.submit(read, starts[0]) if starts else None
            for i, start in enumerate(starts):
                rows = ahead.result()
                if i + 1 < len(starts):
                    ahead = pool.submit(read, starts[i + 1])
                if cache is not None:
                    cache.append((start, rows))
                yield start, rows

    return stream


class SearchFn(Protocol):
    """Exact top-k of feature rows against the whole training set (local engine or a Dask cluster)."""

    def __call__(
        self, queries: np.ndarray, k: int, query_groups: np.ndarray | None, train_groups: np.ndarray | None
    ) -> engine.SearchResult: ...


@dataclass
class LocalSearch:
    """The engine on this machine, streaming the training features block by block."""

    stream: Callable[[], Iterator[tuple[int, np.ndarray]]]
    precision: str
    device: str

    def __call__(
        self,
        queries: np.ndarray,
        k: int,
        query_groups: np.ndarray | None = None,
        train_groups: np.ndarray | None = None,
    ) -> engine.SearchResult:
        res = engine.search_topk(
            queries,
            self.stream,
            k,
            precision=self.precision,
            device=self.device,
            query_groups=query_groups,
            train_groups=train_groups,
        )
        if res.switched_from is not None:  # 'auto' found its bf16 screen too loose: keep float32 from now on
            self.precision = res.precision
        return res


@dataclass
class QueryContext:
    """What every query block of one scan shares."""

    train: Dataset
    feats: Features
    search: SearchFn
    opts: ScanOptions


def search_query_block(
    items: np.ndarray,
    ctx: QueryContext,
    stats: dict[str, Any],
    k: int,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Top-k of one block of query items ``[n, C, *S]`` over every variant; returns arrays for the tables.

    Args:
        items: the query items.
        ctx: the scan's shared context.
        stats: counters updated in place (``n_candidates``, ``n_fallback``, ``precision``, ``epsilon``).
        k: matches kept.
        groups: (query group ids ``[n]``, train group ids ``[n_train]``): same-group pairs are excluded
            (the train-vs-train baselines).

    Returns:
        ``values [n, k]``, ``indices [n, k]``, ``transforms [n, k]`` (labels as ``str``).
    """
    opts, train = ctx.opts, ctx.train
    k_search = max(k, min(opts.shift_candidates, train.n_items)) if opts.max_shift else k
    q_groups, t_groups = groups if groups is not None else (None, None)
    found = []
    for name in variant_names(opts):
        vitems = transforms.orient(items, name, train.spatial_dims)
        res = ctx.search(ctx.feats(vitems), k_search, q_groups, t_groups)
        stats["n_candidates"] += int(res.n_candidates)
        stats["n_fallback"] += int(res.n_fallback)
        stats["precision"], stats["epsilon"] = res.precision, float(res.epsilon)
        found.append((name, res))
    values, indices, labels = variants.merge_variants(found, k_search)
    if opts.max_shift:
        values, indices, labels = shift_rerank(items, values, indices, ctx, k)
    return {"values": values[:, :k], "indices": indices[:, :k], "transforms": labels[:, :k].astype(str)}


def shift_rerank(
    items: np.ndarray, values: np.ndarray, indices: np.ndarray, ctx: QueryContext, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank each query's candidates over integer shifts (candidate-based, see variants.shift_rerank).

    Candidates are the ``shift_candidates`` best unshifted matches (under any variant); for each, the best
    shift within ``max_shift`` of every variant is found exactly over the overlapping region.

    Args:
        items: query items ``[n, C, H, W]``.
        values, indices: the merged unshifted top-k' ``[n, k']``.
        ctx: the scan's shared context.
        k: matches kept.

    Returns:
        ``(values [n, k], indices [n, k], transforms [n, k])``.
    """
    train, feats, opts = ctx.train, ctx.feats, ctx.opts
    items = feats.select(items)
    size = int(np.prod(items.shape[1:]))
    integer = variants.integer_mode(items.dtype, size) and variants.integer_mode(train.dtype, size)
    out_v = np.full((len(items), k), np.nan)
    out_i = np.full((len(items), k), -1, dtype=np.int64)
    out_t = np.full((len(items), k), None, dtype=object)
    bases = variant_names(opts)
    # Queries are taken in groups whose candidates, read and prepared, fit in an eighth of the memory
    # budget: each candidate is read and prepared once per group, however many queries share it (8-bit
    # items: a byte per value; others: their spectra), plus two integral images.
    c, h, w = items.shape[1:]
    per_candidate = size * train.dtype.itemsize + 16 * (h + 1) * (w + 1)
    if integer and items.dtype == np.uint8 and train.dtype == np.uint8:
        per_candidate += size
    else:
        pad_h, pad_w = h + opts.max_shift + 8, (w + opts.max_shift + 8) // 2 + 1
        per_candidate += c * pad_h * pad_w * 16
    cap = max(16, opts.memory_budget // SHIFT_BANK_SHARE // per_candidate)
    group: list[int] = []
    members: set[int] = set()
    for q in range(len(items) + 1):
        cands = indices[q][indices[q] >= 0] if q < len(items) else np.zeros(0, dtype=np.int64)
        new = set(cands.tolist()) - members
        if group and (q == len(items) or len(members) + len(new) > cap):
            local = sorted(members)
            bank = variants.ShiftCandidates(feats.select(train.take(local)), opts.max_shift, integer=integer)
            slot = {t: i for i, t in enumerate(local)}
            for g in group:
                _shift_one(g, items, indices, bank, slot, bases, k, (out_v, out_i, out_t))
            group, members = [], set()
            new = set(cands.tolist())
        if q < len(items) and len(cands):
            group.append(q)
            members |= new
    return out_v, out_i, out_t


def _shift_one(
    q: int,
    items: np.ndarray,
    indices: np.ndarray,
    bank: variants.ShiftCandidates,
    slot: dict[int, int],
    bases: tuple[str, ...],
    k: int,
    out: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Best shift of query ``q`` against each of its candidates under every variant; top-k into ``out``."""
    out_v, out_i, out_t = out
    cands = indices[q][indices[q] >= 0]
    # every candidate under every variant: a shifted copy may have surfaced via another one
    images = np.stack([transforms.orient(items[q], b) for b in bases])
    vals, shifts = bank.score(images, np.array([slot[int(t)] for t in cands]))
    best_v = np.full(len(cands), -np.inf)
    best_t = np.full(len(cands), None, dtype=object)
    for bi, base in enumerate(bases):
        for j, (v, (dy, dx)) in enumerate(zip(vals[bi], shifts[bi], strict=True)):
            if v > best_v[j]:  # strict: the variant listed first wins ties
                best_v[j] = v
                best_t[j] = transforms.compose(base, dy, dx)
    keep = np.isfinite(best_v)
    n = min(k, int(keep.sum()))
    v, i, lab = select_topk(
        np.zeros(int(keep.sum()), dtype=np.int64),
        best_v[keep],
        cands[keep].astype(np.int64),
        1,
        k,
        payload=best_t[keep],
    )  # the one tie rule: value descending, then train index ascending
    out_v[q, :n] = v[0, :n]
    out_i[q, :n] = i[0, :n]
    out_t[q, :n] = lab[0, :n]


@dataclass
class Searcher:
    """Searches the query sets of one scan block by block, with checkpoints (synthetic, holdout, baselines).

    Attributes:
        ctx: the shared context.
        ckpt: the resume state.
        query_block: items per query block.
        stats: engine counters accumulated over every block.
    """

    ctx: QueryContext
    ckpt: Checkpoints
    query_block: int
    stats: dict[str, Any]

    def run(
        self,
        name: str,
        n: int,
        read: Callable[[int, int], np.ndarray],
        k: int,
        groups: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search ``n`` query items (``read(start, stop)`` → ``[m, C, *S]``) block by block, checkpointed.

        Returns:
            ``(values [n, k], indices [n, k], transforms [n, k])``.
        """
        parts = []
        n_blocks = -(-n // self.query_block)
        with progress(n_blocks, f"scan {name}") as advance:
            for start in range(0, n, self.query_block):
                stop = min(start + self.query_block, n)
                done = self.ckpt.load(name, start, stop)
                if done is None:
                    block_stats = {"n_candidates": 0, "n_fallback": 0, "precision": None, "epsilon": None}
                    g = None if groups is None else (groups[0][start:stop], groups[1])
                    done = search_query_block(read(start, stop), self.ctx, block_stats, k, g)
                    done.update({key: np.asarray(v) for key, v in block_stats.items() if v is not None})
                    self.ckpt.save(name, start, stop, **done)
                self.stats["n_candidates"] += int(done["n_candidates"])
                self.stats["n_fallback"] += int(done["n_fallback"])
                self.stats["precision"], self.stats["epsilon"] = (
                    str(done["precision"]),
                    float(done["epsilon"]),
                )
                parts.append(done)
                advance(1)
        return (
            np.concatenate([p["values"] for p in parts]),
            np.concatenate([p["indices"] for p in parts]),
            np.concatenate([p["transforms"] for p in parts]).astype(object),
        )
