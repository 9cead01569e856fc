"""Speed-up of the Dask-sharded scan over the single-process scan, measured side by side in ONE run.

Writes two random datasets (smooth-ish uint8 images, seeded), then times ``memscan.scanning.scanner.scan`` on
the same inputs: single process, then local Dask clusters of 1, 2, ... worker processes (threads per
worker = cores // workers, so every configuration uses all cores). Cluster start-up (processes, and
memscan imported on every worker) is timed separately and also added in a second speed-up column (a
user waits for it too); the scan itself runs against the already started cluster (``scheduler=`` its
address). Every cluster run's tables are checked to be byte-identical to the single-process run's.

Usage::

    python benchmarks/bench_cluster.py                      # uint8 data, exact int8 path
    python benchmarks/bench_cluster.py --precision float64  # the float64 matrix-product path
    python benchmarks/bench_cluster.py --flips --baseline-items 2000 --compare-cache  # many searches

Prints a markdown table (the only ``print`` in memscan: benchmark output).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def write_random(out: Path, n: int, size: int, seed: int) -> None:
    """``n`` items ``[1, size, size]`` uint8: a smooth per-item pattern plus noise (not constant)."""
    from memscan.dataset.store import DatasetWriter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    with DatasetWriter(out, (1, size, size), "uint8", ("t1",), {"name": "bench"}) as w:
        for i in range(n):
            a, b, c = rng.uniform(1, 6, 3)
            img = 100 + 60 * np.sin(a * xx + b * yy + c) + rng.normal(0, 25, (size, size))
            w.add(
                np.clip(img, 0, 255).astype(np.uint8)[None], {"id": f"item_{i:06d}", "subject": f"s{i // 50}"}
            )
        w.commit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-query", type=int, default=4000)
    p.add_argument("--size", type=int, default=64, help="images are size x size (d = size^2)")
    p.add_argument("--precision", default="auto", help="auto (int8 on uint8) | float64 | bf16 ...")
    p.add_argument("--workers", default="1,2", help="comma-separated local cluster sizes")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--flips", action="store_true", help="also search mirrored queries (two searches per block)"
    )
    p.add_argument(
        "--baseline-items", type=int, default=0, help="train-vs-train baseline items (more searches)"
    )
    p.add_argument(
        "--compare-cache",
        action="store_true",
        help="also time each cluster with the workers' shard cache off (every search re-reads its shards)",
    )
    args = p.parse_args()

    import logging

    from memscan.core.progress import set_quiet
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import RUN_TABLES, scan
    from memscan.search import cluster as cluster_module
    from memscan.search.cluster import open_cluster

    dask_search = cluster_module.DaskSearch

    set_quiet(True)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    d = args.size**2
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        root = Path(tmp)
        write_random(root / "train", args.n_train, args.size, 0)
        write_random(root / "synth", args.n_query, args.size, 1)
        base = {
            "top_k": args.top_k,
            "device": "cpu",
            "precision": args.precision,
            "baseline_items": args.baseline_items,
            "flips": args.flips,
        }

        t = time.perf_counter()
        ref = scan(root / "train", root / "synth", root / "local", ScanOptions(**base), report=False)
        t_local = time.perf_counter() - t
        rows = [("single process", 0.0, t_local)]
        for w in [int(x) for x in args.workers.split(",") if x]:
            t = time.perf_counter()
            client, close = open_cluster(w, None)  # processes started, memscan imported on every worker
            startup = time.perf_counter() - t
            try:
                for cached in [False, True] if args.compare_cache else [True]:
                    cluster_module.DaskSearch = functools.partial(dask_search, cache=cached)
                    t = time.perf_counter()
                    opts = ScanOptions(scheduler=client.scheduler.address, **base)
                    scan(root / "train", root / "synth", root / f"w{w}{cached}", opts, report=False)
                    secs = time.perf_counter() - t
                    cache_note = "" if cached else ", shard cache off"
                    rows.append((f"Dask LocalCluster, {w} worker process(es){cache_note}", startup, secs))
                    for name in RUN_TABLES:
                        a, b = root / "local" / name, root / f"w{w}{cached}" / name
                        if a.exists():
                            assert a.read_bytes() == b.read_bytes(), f"{name} differs with {w} workers"
            finally:
                cluster_module.DaskSearch = dask_search
                close()

    flops = 2.0 * args.n_query * args.n_train * d
    print(
        f"\nscan of {args.n_query:,} synthetic x {args.n_train:,} training items, d = {d:,} "
        f"({args.size}x{args.size} uint8), precision {ref.summary['precision']}, top-{args.top_k}; "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, {date.today()}; "
        f"{flops / 1e12:.2f} T(FL)OP per scan\n"
    )
    print(
        "| executor | cluster start + worker imports (s) | scan (s) | speed-up | scan + start (s) "
        "| speed-up incl. start | G(FL)OP/s (scan) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, startup, secs in rows:
        total = startup + secs
        print(
            f"| {name} | {startup:.1f} | {secs:.1f} | {t_local / secs:.2f}x | {total:.1f} "
            f"| {t_local / total:.2f}x | {flops / secs / 1e9:.0f} |"
        )
    print("\nAll cluster runs wrote byte-identical tables to the single-process run.")


if __name__ == "__main__":
    main()
