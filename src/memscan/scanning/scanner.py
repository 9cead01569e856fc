"""``memscan scan``: datasets in, run folder out (tables + summary), resumable per query block.

The driver: open (or prepare on the fly) the training and synthetic datasets, turn items into feature
vectors (channel selection, shared mask), size blocks from the memory budget, run the exact engine
(``memscan.search.engine``) for every query block and every query variant (identity, left-right flip),
re-rank shifted alignments on the candidates (``--max-shift``), checkpoint each finished query block,
and write the contract's tables (see ARCHITECTURE.md section 2) atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from memscan.audit.calibrate import calibrate
from memscan.audit.subjects import subject_rollup, train_item_counts
from memscan.core.progress import progress
from memscan.core.version import __version__
from memscan.dataset.store import Dataset
from memscan.errors import GateFailed, InputError
from memscan.preprocess.prepare import open_or_prepare
from memscan.scanning.options import ScanOptions
from memscan.search import engine, variants

log = logging.getLogger(__name__)

STATE_DIR = ".scan-state"
RUN_TABLES = (
    "synthetic.parquet",
    "matches.parquet",
    "subjects.parquet",
    "train_items.parquet",
    "holdout.parquet",
    "baseline.parquet",
)


@dataclass
class ScanResult:
    """What ``scan`` wrote, loaded: the three contract tables and the summary."""

    run: Path
    synthetic: pd.DataFrame
    matches: pd.DataFrame
    subjects: pd.DataFrame
    train_items: pd.DataFrame
    summary: dict[str, Any]
    holdout: pd.DataFrame | None = None
    baseline: pd.DataFrame | None = None


@dataclass
class Features:
    """Items ``[n, C, *S]`` → feature rows ``[n, d]`` (selected channels, pixels inside the mask).

    The stored dtype is kept (uint8 stays uint8) so blocks stay small; the engine normalizes.
    """

    channels: list[int] | None
    mask: np.ndarray | None  # bool [C', *S] after channel selection, or None

    def __call__(self, items: np.ndarray) -> np.ndarray:
        if self.channels is not None:
            items = items[:, self.channels]
        if self.mask is not None:
            return variants.apply_mask(items, self.mask)
        return items.reshape(len(items), -1)

    def dim(self, item_shape: tuple[int, ...]) -> int:
        if self.mask is not None:
            return int(self.mask.sum())
        c = len(self.channels) if self.channels is not None else item_shape[0]
        return int(c * np.prod(item_shape[1:]))


def _dataset_key(ds: Dataset) -> str:
    h = hashlib.sha256(json.dumps(ds.info, sort_keys=True, default=str).encode())
    h.update("\n".join(map(str, ds.ids)).encode())
    return h.hexdigest()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    return device


def _check_compatible(train: Dataset, synth: Dataset, name: str = "SYNTHETIC") -> None:
    if train.item_shape != synth.item_shape:
        raise InputError(
            f"item shapes differ: TRAIN {train.path} has {list(train.item_shape)}, {name} {synth.path} has "
            f"{list(synth.item_shape)} (prepare both with the same recipe and --size, or pass --resize)"
        )


def _channel_indices(train: Dataset, channel: str | None) -> list[int] | None:
    if channel is None:
        return None
    names = list(train.channels)
    if channel not in names:
        import difflib

        near = difflib.get_close_matches(channel, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise InputError(f"no channel {channel!r} (channels: {', '.join(names)}){hint}", train.path)
    return [names.index(channel)]


def _load_mask(spec: str, train: Dataset, channels: list[int] | None, budget: int) -> np.ndarray | None:
    """The shared mask ``[C', *S]`` (bool) or None: ``none``, ``foreground`` or a .npy/.nii/.png file."""
    if spec == "none":
        return None
    shape = train.item_shape if channels is None else (len(channels), *train.item_shape[1:])
    if spec == "foreground":
        total = np.zeros(shape, dtype=np.float64)
        block = max(1, budget // (8 * max(1, train.item_nbytes)))
        for _, items in train.iter_blocks(block):
            if channels is not None:
                items = items[:, channels]
            total += items.sum(axis=0, dtype=np.float64)
        mask = variants.foreground_mask(total / max(1, train.n_items))
    else:
        from memscan.io.readers import read_image

        path = Path(spec)
        if not path.exists():
            raise InputError("mask file does not exist (--mask takes none, foreground or a file)", path)
        if path.suffix == ".npy":
            mask = np.load(path)
        else:
            mask = read_image(path).array
            if mask.shape[0] == 1 and len(mask.shape) - 1 == len(shape) - 1:
                mask = mask[0]
        mask = np.asarray(mask) != 0
        if mask.shape not in (tuple(shape), tuple(shape[1:])):
            raise InputError(
                f"mask shape {list(mask.shape)} does not match the items' {list(shape)} "
                f"(or their spatial shape {list(shape[1:])})",
                path,
            )
    if mask.shape == tuple(shape[1:]):
        mask = np.broadcast_to(mask, shape)
    if not mask.any():
        raise InputError("the mask selects no pixel", spec)
    return np.ascontiguousarray(mask)


def plan_blocks(n_train: int, n_query: int, d: int, itemsize: int, budget: int) -> tuple[int, int]:
    """Query and training block sizes (items) that keep the scan's memory under ``budget`` bytes.

    Per query row the engine holds the raw row, its bf16/float32 screen copy and stats; per training row
    the raw row, a float64 working row for normalization and the screen copy; plus one block of float32
    scores. Shares: queries 40%, training block 25%, scores 10%; the rest is headroom (Python, Parquet).
    """
    per_q = d * (itemsize + 4) + 64
    per_t = d * (itemsize + 8 + 4) + 64
    qb = max(1, min(n_query, int(0.40 * budget) // per_q))
    tb = max(1, min(n_train, int(0.25 * budget) // per_t))
    while qb * tb * 4 > 0.10 * budget and tb > 64:
        tb //= 2
    return qb, tb


class _Checkpoints:
    """Finished query blocks saved as ``.npz`` in ``RUN/.scan-state`` (written to temp, then renamed)."""

    def __init__(self, run: Path, key: str) -> None:
        self.dir = run / STATE_DIR
        state = self.dir / "state.json"
        if self.dir.exists():
            old = json.loads(state.read_text()).get("key") if state.exists() else None
            if old != key:
                log.info("options or inputs changed since the interrupted scan: starting over")
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"key": key}))

    def path(self, name: str, start: int, stop: int) -> Path:
        return self.dir / f"{name}-{start:09d}-{stop:09d}.npz"

    def load(self, name: str, start: int, stop: int) -> dict[str, np.ndarray] | None:
        p = self.path(name, start, stop)
        if not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save(self, name: str, start: int, stop: int, **arrays: np.ndarray) -> None:
        p = self.path(name, start, stop)
        tmp = p.with_suffix(f".tmp-{uuid.uuid4().hex[:6]}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, p)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _train_stream(train: Dataset, feats: Features, block: int, cache: list | None) -> Callable[[], Iterator]:
    """Callable returning a fresh iterator of ``(start, features [n, d])`` training blocks."""

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        if cache is not None and cache:
            yield from cache
            return
        # read (and decompress) block i+1 in a background thread while block i is compared
        starts = list(range(0, train.n_items, block))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="memscan-read") as pool:
            ahead = pool.submit(lambda s: feats(train.read(s, s + block)), starts[0]) if starts else None
            for i, start in enumerate(starts):
                rows = ahead.result()
                if i + 1 < len(starts):
                    ahead = pool.submit(lambda s: feats(train.read(s, s + block)), starts[i + 1])
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


def _search_query_block(
    items: np.ndarray,
    train: Dataset,
    feats: Features,
    search: SearchFn,
    opts: ScanOptions,
    stats: dict[str, Any],
    k: int,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Top-k of one block of query items ``[n, C, *S]`` over every variant; returns arrays for the tables.

    ``groups`` = (query group ids ``[n]``, train group ids ``[n_train]``) excludes same-group pairs (the
    train-vs-train baselines).
    """
    k_search = max(k, min(opts.shift_candidates, train.n_items)) if opts.max_shift else k
    found = []
    variant_items = [("none", items)]
    if opts.flips:
        variant_items.append(("flip", variants.flip_lr(items)))
    q_groups, t_groups = groups if groups is not None else (None, None)
    for name, vitems in variant_items:
        res = search(feats(vitems), k_search, q_groups, t_groups)
        stats["n_candidates"] += int(res.n_candidates)
        stats["n_fallback"] += int(res.n_fallback)
        stats["precision"], stats["epsilon"] = res.precision, float(res.epsilon)
        found.append((name, res))
    values, indices, transforms = variants.merge_variants(found, k_search)
    if opts.max_shift:
        values, indices, transforms = _shift_rerank(items, values, indices, transforms, train, feats, opts, k)
    return {"values": values[:, :k], "indices": indices[:, :k], "transforms": transforms[:, :k].astype(str)}


@dataclass
class _Searcher:
    """Everything one scan shares between its query sets (synthetic, holdout, baselines)."""

    train: Dataset
    feats: Features
    search: SearchFn
    opts: ScanOptions
    ckpt: _Checkpoints
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
                    done = _search_query_block(
                        read(start, stop),
                        self.train,
                        self.feats,
                        self.search,
                        self.opts,
                        block_stats,
                        k,
                        g,
                    )
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


# the shift re-rank's candidate banks get 1/_SHIFT_BANK_SHARE of --memory-budget (groups of >= 16 candidates)
_SHIFT_BANK_SHARE = 8


def _shift_rerank(
    items, values, indices, transforms, train: Dataset, feats: Features, opts: ScanOptions, k: int
):
    """Re-rank each query's candidates over integer shifts (candidate-based, see variants.shift_rerank).

    Candidates are the ``shift_candidates`` best unshifted (or flipped) matches; for each, the best shift
    within ``max_shift`` is found exactly over the overlapping region.
    Arrays in: ``[n, k']``; out: ``[n, k]``.
    """
    if feats.channels is not None:
        items = items[:, feats.channels]
    size = int(np.prod(items.shape[1:]))
    integer = variants.integer_mode(items.dtype, size) and variants.integer_mode(train.dtype, size)
    out_v = np.full((len(items), k), np.nan)
    out_i = np.full((len(items), k), -1, dtype=np.int64)
    out_t = np.full((len(items), k), None, dtype=object)
    bases = ("none", "flip") if opts.flips else ("none",)
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
    cap = max(16, opts.memory_budget // _SHIFT_BANK_SHARE // per_candidate)
    group: list[int] = []
    members: set[int] = set()
    for q in range(len(items) + 1):
        cands = indices[q][indices[q] >= 0] if q < len(items) else np.zeros(0, dtype=np.int64)
        new = set(cands.tolist()) - members
        if group and (q == len(items) or len(members) + len(new) > cap):
            local = sorted(members)
            cand_items = train.take(local)
            if feats.channels is not None:
                cand_items = cand_items[:, feats.channels]
            bank = variants.ShiftCandidates(cand_items, opts.max_shift, integer=integer)
            slot = {t: i for i, t in enumerate(local)}
            for g in group:
                _shift_one(g, items, indices, bank, slot, bases, k, out_v, out_i, out_t)
            group, members = [], set()
            new = set(cands.tolist())
        if q < len(items) and len(cands):
            group.append(q)
            members |= new
    return out_v, out_i, out_t


def _shift_one(
    q: int,
    items,
    indices,
    bank: variants.ShiftCandidates,
    slot: dict[int, int],
    bases,
    k: int,
    out_v,
    out_i,
    out_t,
) -> None:
    """Best shift of query ``q`` against each of its candidates, under every base transform; top-k."""
    cands = indices[q][indices[q] >= 0]
    # every candidate under every base transform: a shifted copy may have surfaced via the other one
    images = np.stack([variants.flip_lr(items[q : q + 1])[0] if b == "flip" else items[q] for b in bases])
    vals, shifts = bank.score(images, np.array([slot[int(t)] for t in cands]))
    best_v = np.full(len(cands), -np.inf)
    best_t = np.full(len(cands), None, dtype=object)
    for bi, base in enumerate(bases):
        for j, (v, (dy, dx)) in enumerate(zip(vals[bi], shifts[bi], strict=True)):
            if v > best_v[j]:  # strict: 'none' wins ties over 'flip'
                shift = variants.shift_label(dy, dx) if (dy, dx) != (0, 0) else ""
                best_v[j] = v
                best_t[j] = "+".join(p for p in (base if base != "none" else "", shift) if p) or "none"
    keep = np.isfinite(best_v)
    cand_v, cand_i, cand_t = best_v[keep], cands[keep], best_t[keep]
    order = np.lexsort((cand_i, -cand_v))[:k]
    out_v[q, : len(order)] = cand_v[order]
    out_i[q, : len(order)] = cand_i[order]
    out_t[q, : len(order)] = cand_t[order]


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:6]}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _write_json(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _check_run_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    if out.exists() and any(out.iterdir()):
        known = {
            *RUN_TABLES,
            "summary.json",
            STATE_DIR,
            ".prepared",
            "report.html",
            "figures",
            "options.json",
        }
        if not any((out / n).exists() for n in ("summary.json", STATE_DIR)):
            raise InputError(
                "exists, is not empty and is not a memscan run folder; refusing to write there", out
            )
        unknown = [p.name for p in out.iterdir() if p.name not in known and not p.name.startswith(".")]
        if unknown:
            log.debug("run folder has other files, left alone: %s", unknown)
    if not out.parent.exists():
        raise InputError("parent folder does not exist", out.parent)


def scan(
    train: str | Path,
    synthetic: str | Path,
    out: str | Path,
    options: ScanOptions | None = None,
    *,
    holdout: str | Path | None = None,
    subject_pattern: str | None = None,
    command: str | None = None,
    report: bool = True,
) -> ScanResult:
    """Exact top-k Pearson correlation of every synthetic item against every training item.

    Args:
        train: training dataset folder (or ``DATASET/SPLIT``), or a raw folder/file.
        synthetic: synthetic dataset folder, or a raw folder/file.
        out: the run folder to write (resumes an interrupted scan of the same inputs and options).
        options: see ``ScanOptions``.
        holdout: real images of subjects never used for training (dataset folder or raw): their
            nearest-training correlations calibrate the flags (p-values, FDR).
        subject_pattern: subject rule for raw inputs prepared on the fly.
        command: the command line, recorded in the summary.
        report: also write ``out/report.html`` (and its figures and CSV exports).

    Returns:
        The tables and summary written to ``out``.

    Raises:
        InputError: bad input (exit 2). GateFailed: a release gate was exceeded, after writing (exit 3).
    """
    t0 = time.perf_counter()
    opts = options or ScanOptions()
    out = Path(out)
    _check_run_folder(out)
    device = _resolve_device(opts.device)
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        return _scan(out, train, synthetic, holdout, opts, device, subject_pattern, command, report, t0)
    except InputError:
        if created:  # bad input found before any result: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _scan(
    out: Path,
    train,
    synthetic,
    holdout,
    opts: ScanOptions,
    device: str,
    subject_pattern,
    command,
    report: bool,
    t0: float,
) -> ScanResult:
    """The body of :func:`scan` once the run folder exists (see there)."""
    cache = out / ".prepared"
    train_ds = open_or_prepare(train, cache, name="train", subject_pattern=subject_pattern)
    synth_ds = open_or_prepare(synthetic, cache, name="synthetic", subject_pattern=subject_pattern)
    hold_ds = (
        open_or_prepare(holdout, cache, name="holdout", subject_pattern=subject_pattern)
        if holdout is not None
        else None
    )
    for what, ds in (("training", train_ds), ("synthetic", synth_ds), ("held-out", hold_ds)):
        if ds is not None and ds.n_items == 0:
            raise InputError(f"the {what} dataset has no items", ds.path)
    if opts.resize:
        from memscan.dataset.resample import resized_dataset

        if synth_ds.item_shape != train_ds.item_shape:
            synth_ds = resized_dataset(synth_ds, train_ds, cache / "synthetic-resized")
        if hold_ds is not None and hold_ds.item_shape != train_ds.item_shape:
            hold_ds = resized_dataset(hold_ds, train_ds, cache / "holdout-resized")
    _check_compatible(train_ds, synth_ds)
    if hold_ds is not None:
        _check_compatible(train_ds, hold_ds, "HOLDOUT")
        overlap = set(hold_ds.subjects) & set(train_ds.subjects)
        if overlap:
            raise InputError(
                f"held-out subjects must not be in the training set; {len(overlap)} are, e.g. "
                f"{sorted(overlap)[0]!r}",
                hold_ds.path,
            )
    if opts.top_k > train_ds.n_items:
        raise InputError(f"--top-k {opts.top_k} is larger than the training set ({train_ds.n_items} items)")
    if opts.max_shift and train_ds.spatial_dims != 2:
        raise InputError("--max-shift works on 2D images only; these items are 3D volumes")
    if opts.max_shift and opts.mask != "none":
        raise InputError("--max-shift cannot be combined with --mask (the overlap would leave the mask)")
    channels = _channel_indices(train_ds, opts.channel)
    mask = _load_mask(opts.mask, train_ds, channels, opts.memory_budget)
    feats = Features(channels, mask)
    d = feats.dim(train_ds.item_shape)
    itemsize = train_ds.dtype.itemsize
    n_hold = hold_ds.n_items if hold_ds is not None else 0
    n_base = len(baseline_sample(train_ds.n_items, opts.baseline_items)) if opts.baseline_items else 0
    # query blocks sized for the largest query set (the baselines are often larger than the synthetic set:
    # each block is one more pass over the training set)
    n_largest = max(synth_ds.n_items, n_hold, n_base)
    qb, tb = plan_blocks(train_ds.n_items, n_largest, d, itemsize, opts.memory_budget)
    qb, tb = min(opts.query_block or qb, n_largest), min(opts.train_block or tb, train_ds.n_items)
    # Keep the training features in memory across the scan's passes (query blocks, held-out items, the two
    # baselines) when they fit in a quarter of the budget.
    n_queries = synth_ds.n_items + n_hold + 2 * n_base
    fits = train_ds.n_items * d * itemsize <= opts.memory_budget // 4 and n_queries > qb
    stream = _train_stream(train_ds, feats, tb, [] if fits else None)
    key = hashlib.sha256(
        json.dumps(
            [
                _dataset_key(train_ds),
                _dataset_key(synth_ds),
                hold_ds and _dataset_key(hold_ds),
                {
                    **{n: v for n, v in opts.to_dict().items() if n not in ("workers", "scheduler")},
                    "threshold": None,
                    "fail_above": None,
                    "fail_on_leaked_subjects": None,
                },
                qb,
            ],
            default=str,
        ).encode()
    ).hexdigest()
    stats: dict[str, Any] = {"n_candidates": 0, "n_fallback": 0, "precision": None, "epsilon": None}
    search: SearchFn = LocalSearch(stream, opts.engine_precision, device)
    close_cluster: Callable[[], None] = lambda: None  # noqa: E731
    if opts.workers is not None or opts.scheduler is not None:
        from memscan.search.cluster import DaskSearch, open_cluster

        client, close_client = open_cluster(opts.workers, opts.scheduler)
        path = os.path.abspath(train_ds.path)  # as the workers see it (a shared file system)
        search = dask_search = DaskSearch(
            client, path, feats, train_ds.n_items, tb, opts.engine_precision, device
        )

        def close_cluster() -> None:
            log.info(
                "cluster: %d shard tasks, %d read their rows from a worker's cache",
                dask_search.n_tasks,
                dask_search.n_cache_hits,
            )
            dask_search.release()
            close_client()

    try:
        searcher = _Searcher(train_ds, feats, search, opts, _Checkpoints(out, key), qb, stats)
        log.info(
            "scan: %d synthetic x %d training items, d=%d, query blocks of %d, training blocks of %d, %s",
            synth_ds.n_items,
            train_ds.n_items,
            d,
            qb,
            tb,
            device,
        )
        values, indices, transforms = searcher.run("synthetic", synth_ds.n_items, synth_ds.read, opts.top_k)
        extra: dict[str, pd.DataFrame] = {}
        hold_top = None
        if hold_ds is not None:
            hv, hi, ht = searcher.run("holdout", hold_ds.n_items, hold_ds.read, 1)
            hold_top = hv[:, 0]
            extra["holdout"] = nearest_table(train_ds, hold_ds, "holdout_id", hv, hi, ht)
        if opts.baseline_items:
            extra["baseline"] = _baselines(searcher, train_ds, opts.baseline_items)
    finally:
        close_cluster()
    top = values[:, 0]
    fixed_flags = np.nan_to_num(top, nan=-np.inf) > opts.threshold
    calibration = None
    if hold_top is not None:
        p_values, flagged, calibration = calibrate(hold_top, top, method=opts.calibration, alpha=opts.alpha)
    else:
        p_values, flagged = None, fixed_flags
    tables = build_tables(train_ds, synth_ds, values, indices, transforms, flagged, p_values)
    tables.update(extra)
    for name, df in tables.items():
        _write_parquet(df, out / f"{name}.parquet")
    synth_df, subjects = tables["synthetic"], tables["subjects"]
    n_flagged = int(synth_df["flagged"].sum())
    summary = {
        "n_train": train_ds.n_items,
        "n_synthetic": synth_ds.n_items,
        "n_holdout": hold_ds.n_items if hold_ds is not None else 0,
        "top_k": opts.top_k,
        "threshold": calibration.threshold if calibration else opts.threshold,
        "threshold_source": "holdout" if calibration else "fixed",
        "n_flagged": n_flagged,
        "flagged_fraction": n_flagged / synth_ds.n_items,
        "fixed_threshold": opts.threshold,
        "n_above_fixed_threshold": int(fixed_flags.sum()),
        "calibration": calibration.to_dict() if calibration else None,
        "n_unmatched": int(synth_df["nearest_train_id"].isna().sum()),
        "subjects_total": int(len(subjects)),
        "subjects_leaked": int(subjects["leaked"].sum()),
        "subjects_leaked_fraction": float(subjects["leaked"].mean()) if len(subjects) else 0.0,
        "holdout_max_correlation": _describe(hold_top) if hold_top is not None else None,
        "baseline": _describe_baseline(extra.get("baseline")),
        "device": device,
        "executor": "dask" if opts.workers is not None or opts.scheduler is not None else "local",
        "precision": stats["precision"],
        "screen_epsilon": stats["epsilon"],
        "n_rerank_pairs": stats["n_candidates"],
        "n_fallback_blocks": stats["n_fallback"],
        "item_shape": list(train_ds.item_shape),
        "channels": list(train_ds.channels),
        "feature_dim": d,
        "query_block": qb,
        "train_block": tb,
        "train": str(train_ds.path),
        "synthetic": str(synth_ds.path),
        "holdout": str(hold_ds.path) if hold_ds is not None else None,
        "options": opts.to_dict(),
        "command": command,
        "memscan_version": __version__,
    }
    summary["seconds"] = round(time.perf_counter() - t0, 4)
    _write_json(summary, out / "summary.json")
    searcher.ckpt.remove()
    log.info("wrote %s (%.1f s)", out, summary["seconds"])
    result = ScanResult(
        out,
        synth_df,
        tables["matches"],
        subjects,
        tables["train_items"],
        summary,
        extra.get("holdout"),
        extra.get("baseline"),
    )
    if report:
        from memscan.report.html import write_report

        write_report(out)
    check_gates(summary, opts, out)
    return result


def check_gates(summary: dict[str, Any], opts: ScanOptions, out: Path) -> None:
    """Raise GateFailed (exit 3) when a release gate is exceeded; call after everything is written."""
    if opts.fail_above is not None and summary["flagged_fraction"] > opts.fail_above:
        raise GateFailed(
            f"release gate failed: {summary['flagged_fraction']:.2%} of synthetic items flagged "
            f"(> --fail-above {opts.fail_above:.2%}); results are in {out}"
        )
    if (
        opts.fail_on_leaked_subjects is not None
        and summary["subjects_leaked"] >= opts.fail_on_leaked_subjects
    ):
        raise GateFailed(
            f"release gate failed: {summary['subjects_leaked']} training subjects leaked "
            f"(>= --fail-on-leaked-subjects {opts.fail_on_leaked_subjects}); results are in {out}"
        )


def _describe(values: np.ndarray) -> dict[str, float] | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return None
    return {
        "n": int(v.size),
        "median": float(np.median(v)),
        "q95": float(np.quantile(v, 0.95)),
        "max": float(v.max()),
    }


def _describe_baseline(df: pd.DataFrame | None) -> dict[str, Any] | None:
    if df is None:
        return None
    return {
        "n_items": int(len(df)),
        "any": _describe(df["nn_correlation_any"].to_numpy(dtype=float)),
        "other_subject": _describe(df["nn_correlation_other_subject"].to_numpy(dtype=float)),
    }


def baseline_sample(n_train: int, n_items: int) -> np.ndarray:
    """Training positions used for the train-vs-train baselines: evenly spread, deterministic."""
    if n_items >= n_train:
        return np.arange(n_train)
    return np.unique(np.linspace(0, n_train - 1, n_items).round().astype(np.int64))


def _baselines(searcher: _Searcher, train: Dataset, n_items: int) -> pd.DataFrame:
    """Nearest other training item of sampled training items: any other item, and another subject's.

    Neighbouring slices of one volume are near-duplicates (correlation ~0.99 in real brain MRI), so the
    first baseline is high by construction; the second (another subject) is the fair comparison for
    "how similar are two different patients".
    """
    pos = baseline_sample(train.n_items, n_items)
    _, subject_codes = np.unique(train.subjects.astype(str), return_inverse=True)
    subject_codes = subject_codes.astype(np.int64)

    def read(a: int, b: int) -> np.ndarray:
        return train.take(pos[a:b])

    av, ai, _ = searcher.run("baseline-any", len(pos), read, 1, (pos, np.arange(train.n_items)))
    ov, oi, _ = searcher.run("baseline-other", len(pos), read, 1, (subject_codes[pos], subject_codes))
    ids = train.ids
    return pd.DataFrame(
        {
            "train_id": pd.array(ids[pos], dtype="string"),
            "subject": pd.array(train.subjects[pos], dtype="string"),
            "nn_correlation_any": av[:, 0],
            "nn_id_any": pd.array(
                np.where(ai[:, 0] >= 0, ids[np.maximum(ai[:, 0], 0)], None), dtype="string"
            ),
            "nn_correlation_other_subject": ov[:, 0],
            "nn_id_other_subject": pd.array(
                np.where(oi[:, 0] >= 0, ids[np.maximum(oi[:, 0], 0)], None), dtype="string"
            ),
        }
    )


def nearest_table(
    train: Dataset,
    queries: Dataset,
    id_column: str,
    values: np.ndarray,
    indices: np.ndarray,
    transforms: np.ndarray,
) -> pd.DataFrame:
    """One row per query item: its nearest training item (used for held-out items)."""
    valid = indices[:, 0] >= 0
    safe = np.where(valid, indices[:, 0], 0)
    return pd.DataFrame(
        {
            id_column: pd.array(queries.ids, dtype="string"),
            "max_correlation": values[:, 0].astype(np.float64),
            "nearest_train_id": pd.array(np.where(valid, train.ids[safe], None), dtype="string"),
            "nearest_subject": pd.array(np.where(valid, train.subjects[safe], None), dtype="string"),
            "transform": pd.array(np.where(valid, transforms[:, 0], None), dtype="string"),
        }
    )


def build_tables(
    train: Dataset,
    synth: Dataset,
    values: np.ndarray,
    indices: np.ndarray,
    transforms: np.ndarray,
    flagged: np.ndarray,
    p_values: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """The run folder's tables from the top-k arrays ``[n_synthetic, k]`` and the flags ``[n_synthetic]``."""
    n, k = values.shape
    train_ids = train.ids
    train_subjects = train.subjects
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    matches = pd.DataFrame(
        {
            "synthetic_id": np.repeat(synth.ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "train_id": np.where(valid, train_ids[safe], None).reshape(-1),
            "train_subject": np.where(valid, train_subjects[safe], None).reshape(-1),
            "correlation": values.reshape(-1).astype(np.float64),
            "transform": np.where(valid, transforms, None).reshape(-1),
        }
    )
    matches = matches[valid.reshape(-1)].reset_index(drop=True)
    for col in ("synthetic_id", "train_id", "train_subject", "transform"):
        matches[col] = matches[col].astype("string")
    synthetic = nearest_table(train, synth, "synthetic_id", values, indices, transforms)
    synthetic["p_value"] = pd.array(p_values if p_values is not None else [None] * n, dtype="Float64")
    synthetic["flagged"] = np.asarray(flagged, dtype=bool)
    top = values[:, 0]
    nearest = np.where(valid[:, 0], indices[:, 0], -1)
    return {
        "synthetic": synthetic,
        "matches": matches,
        "subjects": subject_rollup(train, nearest, top, synthetic["flagged"].to_numpy()),
        "train_items": train_item_counts(train, nearest, top),
    }


def load_run(run: str | Path) -> ScanResult:
    """Read a finished run folder back."""
    run = Path(run)
    if not (run / "summary.json").is_file():
        raise InputError("is not a finished memscan run folder (no summary.json)", run)
    names = ("synthetic", "matches", "subjects", "train_items", "holdout", "baseline")
    tables = {
        n: pd.read_parquet(run / f"{n}.parquet") if (run / f"{n}.parquet").exists() else None for n in names
    }
    summary = json.loads((run / "summary.json").read_text())
    return ScanResult(run, *(tables[n] for n in names[:4]), summary, tables["holdout"], tables["baseline"])
