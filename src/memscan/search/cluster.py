"""The exact search sharded over a Dask cluster (``memscan scan --workers N | --scheduler ADDRESS``).

The *training set* is cut into contiguous item ranges (shards). Each shard is one Dask task that
opens the dataset itself from its path (every worker must be able to read the dataset folder: a
shared file system), streams its items block by block, turns them into feature rows with the pickled
:class:`memscan.search.features.Features`, and runs :func:`memscan.search.engine.search_topk` against the
query block, which is scattered to every worker once per call. A task returns its local top-k with
the shard offset added to the indices; the client merges the shards' lists per query with
``np.lexsort((index, -value))`` — values descending, ties to the lower training index.

Why the merged result is *identical* to the single-process search (not merely close): every value
comes from a routine that does not depend on which block, shard or machine computed it (the int8
path: exact integer sums and one fixed division; the float path: one float64 routine per pair), and
both the engine and this merge break ties by the lower training index. The global top-k of a query is
therefore the top-k of the union of the shards' top-k lists, element for element.

Tasks are pure functions of their arguments (they read, never write), so when a worker dies the
scheduler simply reruns its tasks on another worker and the result is the same.

A scan searches the training set many times (every query block, with and without mirroring, then the
held-out and the baseline items), so each worker keeps the feature rows of the shards it has read in a
per-process cache (:class:`_ShardCache`: least recently used out first, at most :data:`CACHE_SHARE` of
the worker's memory limit), and shard i is submitted to the same worker every time (a loose restriction:
another worker takes it if that one is gone). The cache is keyed by the scan, so a later scan never sees
another's rows, and is emptied when the scan ends. It changes nothing in the results: the rows are the
ones the task would read again.

Shapes: queries ``[nq, d]`` (feature rows), results ``[nq, k]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from memscan.core.progress import console, is_quiet, progress
from memscan.errors import InputError
from memscan.search import engine
from memscan.search.features import check_finite_train
from memscan.search.topk import merge_topk

if TYPE_CHECKING:  # pragma: no cover - imports for type hints only
    from distributed import Client

    from memscan.search.features import Features

log = logging.getLogger(__name__)

__all__ = ["DaskSearch", "merge_topk", "open_cluster", "plan_shards", "search_shard"]

#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 10.0
#: Shards per worker thread: enough to balance uneven tasks and to lose little when a worker dies.
TASKS_PER_THREAD = 3
#: Share of a worker's memory limit that its shard cache may hold.
CACHE_SHARE = 0.3


# --------------------------------------------------------------------------------------------------
# the cluster


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast (InputError) on a malformed address or a refused TCP connection."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address, strict=True)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"--scheduler expects an address like tcp://HOST:8786, got {address!r} ({exc})"
        ) from None
    if scheme != "tcp":
        return  # tls://, inproc://, ...: left to distributed itself
    try:
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"--scheduler expects an address like tcp://HOST:8786, got {address!r} ({exc})"
        ) from None
    if port is None:
        raise InputError(f"--scheduler address {address!r} has no port (e.g. tcp://{host}:8786)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


def _quiet_distributed() -> None:
    """Keep distributed's own INFO chatter (worker start/stop) out of the terminal."""
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker"):
        logger = logging.getLogger(name)
        if logger.level in (logging.NOTSET,) or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def open_cluster(
    workers: int | None,
    scheduler: str | None,
    *,
    threads_per_worker: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> tuple[Client, Callable[[], None]]:
    """Start a local Dask cluster or connect to an existing one.

    Args:
        workers: start a ``LocalCluster`` of this many worker *processes* (each under a nanny, which
            restarts it if it dies), with ``max(1, cores // workers)`` threads each.
        scheduler: the address of a running scheduler (``tcp://HOST:8786``); exclusive with ``workers``.
        threads_per_worker: override the threads per local worker.
        timeout: seconds to wait for an existing scheduler.

    Returns:
        ``(client, cleanup)``: call ``cleanup()`` when done (closes the client, and the local cluster).

    Raises:
        InputError: both or neither given, ``workers < 1``, or a bad or unreachable scheduler address.
    """
    from distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise InputError("give exactly one of --workers N and --scheduler ADDRESS")
    _quiet_distributed()
    if scheduler is not None:
        _check_reachable(scheduler, timeout)
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None

        def cleanup() -> None:
            client.close()

        _announce(client, f"connected to the Dask scheduler at {scheduler}")
        _warm_up(client, cleanup)
        return client, cleanup

    assert workers is not None
    if isinstance(workers, bool) or workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    cores = os.cpu_count() or 1
    threads = threads_per_worker or max(1, cores // workers)
    kwargs: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": threads,
        "processes": True,
        "host": "127.0.0.1",
        "scheduler_port": 0,
    }
    try:
        cluster = LocalCluster(dashboard_address="127.0.0.1:0", **kwargs)
    except Exception as exc:  # noqa: BLE001 - the dashboard is optional; retry without it
        log.debug("local cluster with a dashboard failed (%s); starting without one", exc)
        cluster = LocalCluster(dashboard_address=None, **kwargs)
    client = Client(cluster, set_as_default=False)

    def cleanup_local() -> None:
        client.close()
        cluster.close()

    _announce(client, f"local Dask cluster: {workers} worker processes x {threads} threads")
    _warm_up(client, cleanup_local)
    return client, cleanup_local


def _warm_up(client: Client, cleanup: Callable[[], None]) -> None:
    """Import the engine on every worker now (seconds: torch, pandas, zarr), and check that they can.

    Raises:
        InputError: a worker cannot import memscan (it must be installed in the workers' environment).
    """
    try:
        client.run(importlib.import_module, "memscan.scanning.scanner")
    except ImportError as exc:
        cleanup()
        raise InputError(
            f"the Dask workers cannot import memscan ({exc}); install it where they run"
        ) from None


def _announce(client: Client, what: str) -> None:
    """Log (and show, unless quiet) what we run on and the dashboard link, when there is one."""
    link = _dashboard_link(client)
    if link and importlib.util.find_spec("bokeh") is None:
        link += " (its pages need bokeh: pip install bokeh)"
    message = f"{what}; dashboard: {link}" if link else f"{what} (no dashboard)"
    log.info(message)
    if not is_quiet():
        console.print(message, markup=False, highlight=False, soft_wrap=True)


def _dashboard_link(client: Client) -> str | None:
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - diagnostics only
        return None
    if "dashboard" not in services:
        return None
    return client.dashboard_link


# --------------------------------------------------------------------------------------------------
# shards, tasks and the merge


def plan_shards(n_train: int, block: int, n_threads: int, tasks_per_thread: int = TASKS_PER_THREAD) -> list:
    """Contiguous training ranges ``[(start, stop), ...]`` and the block size used inside them.

    About ``tasks_per_thread`` shards per worker thread; a shard holds a whole number of blocks
    (blocks shrink when the training set is small compared to the cluster).

    Returns:
        ``(shards, block)``.
    """
    n_train, block = int(n_train), max(1, int(block))
    target = max(1, math.ceil(n_train / max(1, n_threads * tasks_per_thread)))
    if target >= block:
        size = math.ceil(target / block) * block
    else:
        size = block = target
    return [(a, min(n_train, a + size)) for a in range(0, n_train, size)], block


class _ShardCache:
    """The feature rows of the shards a worker process has read: ``key → [(offset, rows), ...]``, least
    recently used out first, at most ``limit`` bytes (given by each task). Shared by the worker's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple, list[tuple[int, np.ndarray]]] = OrderedDict()
        self.nbytes = 0

    def get(self, key: tuple) -> list[tuple[int, np.ndarray]] | None:
        with self.lock:
            rows = self.entries.get(key)
            if rows is not None:
                self.entries.move_to_end(key)
            return rows

    def put(self, key: tuple, rows: list[tuple[int, np.ndarray]], limit: int) -> None:
        size = sum(r.nbytes for _, r in rows)
        with self.lock:
            if key in self.entries or size > limit:
                return
            while self.entries and self.nbytes + size > limit:
                _, old = self.entries.popitem(last=False)
                self.nbytes -= sum(r.nbytes for _, r in old)
            self.entries[key] = rows
            self.nbytes += size

    def drop(self, scan: str) -> int:
        """Forget every entry of one scan; returns the bytes freed."""
        with self.lock:
            keys = [k for k in self.entries if k[0] == scan]
            freed = 0
            for key in keys:
                freed += sum(r.nbytes for _, r in self.entries.pop(key))
            self.nbytes -= freed
            return freed


_CACHE = _ShardCache()


def _drop_cached(scan: str) -> int:
    """Run on every worker when a scan ends."""
    return _CACHE.drop(scan)


def search_shard(
    path: str,
    features: Features,
    queries: np.ndarray,
    k: int,
    start: int,
    stop: int,
    block: int,
    precision: str,
    device: str,
    query_groups: np.ndarray | None = None,
    train_groups: np.ndarray | None = None,
    delay: float = 0.0,
    cache: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """One Dask task: exact top-k of ``queries [nq, d]`` against training items ``start:stop``.

    Pure: opens the dataset read-only, writes nothing; rerunning it gives the same result (the worker's
    shard cache only saves reading the same rows again).

    Args:
        path: the training dataset folder (or ``DATASET/SPLIT``), readable on the worker.
        features: items → feature rows (channel selection, mask).
        queries: feature rows of the query block.
        k: neighbours per query.
        start: first training position of the shard.
        stop: one past the last.
        block: items read per block.
        precision: engine precision.
        device: engine device ('cpu' | 'cuda').
        query_groups: exclusion groups of the queries ``[nq]`` (or None).
        train_groups: exclusion groups of the shard's items ``[stop - start]`` (or None).
        delay: seconds slept per block (test hook: makes tasks slow enough to kill a worker mid-scan).
        cache: ``(scan id, bytes)``: keep this shard's feature rows in the worker's cache of that size.

    Returns:
        ``values``/``indices`` ``[nq, k]`` (global training indices), ``n_candidates``, ``n_fallback``,
        ``precision``, ``epsilon``, ``cache_hit``.
    """
    from memscan.dataset.store import Dataset

    key = None if cache is None else (cache[0], path, start, stop, block)
    cached = None if key is None else _CACHE.get(key)
    kept: list[tuple[int, np.ndarray]] | None = [] if key is not None and cached is None else None

    def stream():
        nonlocal kept
        if cached is not None:
            yield from cached
            return
        ds = Dataset.open(path)
        size = 0
        for lo in range(start, stop, block):
            if delay:
                time.sleep(delay)
            rows = check_finite_train(ds, lo, features(ds.read(lo, min(stop, lo + block))))
            if kept is not None and cache is not None:
                size += rows.nbytes
                if size <= cache[1]:
                    kept.append((lo - start, rows))
                else:  # the shard is larger than the cache: stream it as before
                    kept = None
            yield lo - start, rows

    res = engine.search_topk(
        queries,
        stream,
        k,
        precision=precision,
        device=device,
        query_groups=query_groups,
        train_groups=train_groups,
    )
    if kept is not None and key is not None and cache is not None:
        _CACHE.put(key, kept, cache[1])
    indices = np.where(res.indices >= 0, res.indices + start, -1)
    return {
        "values": res.values,
        "indices": indices,
        "n_candidates": int(res.n_candidates),
        "n_fallback": int(res.n_fallback),
        "precision": res.precision,
        "epsilon": float(res.epsilon),
        "cache_hit": cached is not None,
    }


@dataclass
class DaskSearch:
    """A :class:`memscan.scanning.scanner.SearchFn` that shards the training set over a Dask cluster.

    Attributes:
        client: a connected ``distributed.Client``.
        dataset: path of the training dataset (or ``DATASET/SPLIT``) as the *workers* see it.
        features: items → feature rows; pickled to the workers.
        n_train: items in the training dataset (view).
        block: training items read per block inside a task (also the shard granularity).
        precision: engine precision.
        device: engine device on the workers.
        tasks_per_thread: shards per worker thread.
        shard_items: fixed shard size (items; rounded to whole blocks), overriding ``tasks_per_thread``.
        delay: test hook: seconds each task sleeps per block.
        cache: keep the shards' feature rows in the workers' caches between calls (module doc).
    """

    client: Client
    dataset: str
    features: Features
    n_train: int
    block: int
    precision: str
    device: str = "cpu"
    tasks_per_thread: int = TASKS_PER_THREAD
    shard_items: int | None = None
    delay: float = 0.0
    cache: bool = True
    n_tasks: int = field(default=0, init=False)
    n_cache_hits: int = field(default=0, init=False)
    scan_id: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)

    def _cache_bytes(self, workers: dict[str, Any]) -> int:
        """The smallest worker's cache size (memory limit × :data:`CACHE_SHARE`; 0 = no limit known)."""
        limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
        return int(CACHE_SHARE * min(limits)) if limits and min(limits) > 0 else 0

    def release(self) -> None:
        """Empty the workers' caches of this scan's rows (call when the scan is done)."""
        if self.cache:
            try:
                self.client.run(_drop_cached, self.scan_id)
            except Exception as exc:  # noqa: BLE001 - a closing cluster may refuse; the LRU evicts anyway
                log.debug("could not empty the workers' shard caches: %s", exc)

    def shards(self) -> tuple[list[tuple[int, int]], int]:
        """``([(start, stop), ...], block)`` for the cluster as it is now."""
        if self.shard_items is not None:
            block = min(self.block, self.shard_items)
            size = math.ceil(self.shard_items / block) * block
            return [(a, min(self.n_train, a + size)) for a in range(0, self.n_train, size)], block
        threads = sum(self.client.nthreads().values()) or 1
        return plan_shards(self.n_train, self.block, threads, self.tasks_per_thread)

    def __call__(
        self,
        queries: np.ndarray,
        k: int,
        query_groups: np.ndarray | None = None,
        train_groups: np.ndarray | None = None,
    ) -> engine.SearchResult:
        """Exact top-k of ``queries [nq, d]`` against the whole training set; see the module doc."""
        if (query_groups is None) != (train_groups is None):
            raise InputError("query_groups and train_groups go together")
        if train_groups is not None and len(train_groups) != self.n_train:
            raise InputError(f"train_groups has {len(train_groups)} entries for {self.n_train} items")
        queries = np.ascontiguousarray(queries)
        shards, block = self.shards()
        call = uuid.uuid4().hex[:10]
        workers = self.client.scheduler_info().get("workers", {})
        addresses = sorted(workers)
        cache_bytes = self._cache_bytes(workers) if self.cache else 0
        cache = (self.scan_id, cache_bytes) if cache_bytes > 0 else None
        q_future = self.client.scatter(queries, broadcast=True, hash=False)
        f_future = self.client.scatter(self.features, broadcast=True, hash=False)
        q_groups = None if query_groups is None else np.asarray(query_groups, dtype=np.int64)
        futures = []
        for i, (a, b) in enumerate(shards):
            t_groups = None if train_groups is None else np.asarray(train_groups[a:b], dtype=np.int64)
            # the same worker for shard i at every call, where its cache holds the rows
            where: dict[str, Any] = {}
            if cache and addresses:
                where = {"workers": [addresses[i % len(addresses)]], "allow_other_workers": True}
            futures.append(
                self.client.submit(
                    search_shard,
                    str(self.dataset),
                    f_future,
                    q_future,
                    k,
                    a,
                    b,
                    block,
                    self.precision,
                    self.device,
                    q_groups,
                    t_groups,
                    self.delay,
                    cache,
                    key=f"memscan-shard-{call}-{i:05d}",
                    pure=False,
                    **where,
                )
            )
        self.n_tasks += len(futures)
        log.debug("dask search: %d queries over %d shards of <= %d items", len(queries), len(shards), block)
        from distributed import as_completed

        try:
            with progress(len(futures), "cluster shards") as advance:
                for fut in as_completed(futures, loop=self.client.loop):
                    if fut.status == "error":
                        fut.result()  # raises the task's exception here
                    advance(1)
            results = self.client.gather(futures)
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            del q_future, f_future
        self.n_cache_hits += sum(bool(r.get("cache_hit")) for r in results)
        values, indices = merge_topk([(r["values"], r["indices"]) for r in results], k)
        return engine.SearchResult(
            values=values,
            indices=indices,
            n_candidates=sum(r["n_candidates"] for r in results),
            n_fallback=sum(r["n_fallback"] for r in results),
            precision=results[0]["precision"],
            epsilon=results[0]["epsilon"],
        )
