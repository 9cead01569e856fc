"""End-to-end benchmark of ``memscan scan`` from prepared dataset folders, against its baselines, in ONE run.

On the same image-like uint8 data (smooth random fields; every third synthetic image is a noisy copy of
a training image) written as two dataset folders, this times:

* the study's method: one ``scipy.stats.pearsonr`` per pair, re-reading each training PNG from disk
  (on a sample of pairs, extrapolated to all pairs), and ``np.corrcoef`` per pair in memory;
* faiss ``IndexFlatIP`` exact float32 search (normalisation done beforehand, not timed), k = top-k;
* NumPy float32 blocked matrix product + argmax (top-1 only);
* the bare matrix products memscan's engine stands on: torch bf16 and torch int8 (``torch._int_mm``);
* ``memscan scan`` end to end (``seconds`` of its summary: from the start of the scan to the tables
  written, data loading from the dataset folders included, process start excluded), with the default
  precision (exact integer path for 8-bit data) and with ``--precision exact`` (float64);
* the peak resident memory of a ``memscan scan`` subprocess whose ``--memory-budget`` is smaller than
  the training set (the training set then streams from disk).

It checks that memscan's top-k ids equal a float64 brute force (where the k-th/(k+1)-th gap exceeds
1e-12) and that its correlations are within 1e-6. Prints a markdown table; on a shared machine only
ratios within one run mean anything (see ../shared/BENCHMARKS.md).

    python benchmarks/bench_scan.py --quick                 # ~1 minute
    python benchmarks/bench_scan.py                         # 2,000 x 20,000 x 128², the anchor shape
    python benchmarks/bench_scan.py --device cuda --nq 8192 --nt 65536 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import make_images  # noqa: E402

from memscan.dataset.store import DatasetWriter  # noqa: E402
from memscan.scanning.options import ScanOptions, parse_bytes  # noqa: E402
from memscan.scanning.scanner import scan  # noqa: E402


def write_dataset(path: Path, items: np.ndarray, side: int, prefix: str, subject_every: int) -> None:
    """uint8 rows ``[n, side²]`` → a dataset folder of ``[1, side, side]`` items."""
    with DatasetWriter(
        path, item_shape=(1, side, side), dtype="uint8", channels=("gray",), recipe={"name": "bench"}
    ) as w:
        for i, row in enumerate(items):
            w.add(
                row.reshape(1, side, side),
                {"id": f"{prefix}_{i:07d}", "subject": f"s{i // subject_every:05d}"},
            )
        w.commit()


def normalised(a: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    z = a.astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z.astype(dtype)


def device_bf16(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """Rows centred and scaled to unit norm on ``dev``, in bf16 (for timing the bare product only)."""
    out = torch.empty(a.shape, dtype=torch.bfloat16, device=dev)
    for s in range(0, len(a), 8192):
        x = torch.from_numpy(a[s : s + 8192]).to(dev).float()
        x -= x.mean(dim=1, keepdim=True)
        x /= x.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out[s : s + 8192] = x.to(torch.bfloat16)
    return out


def best_of(fn, repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def study_per_pair(
    train: np.ndarray, queries: np.ndarray, side: int, pairs: int, tmp: Path
) -> tuple[float, float]:
    """Seconds per pair: the study's loop (PNG re-read + pearsonr) and np.corrcoef in memory."""
    from PIL import Image
    from scipy.stats import pearsonr

    pngs = []
    for i in range(min(pairs, len(train))):
        p = tmp / f"t{i}.png"
        Image.fromarray(train[i].reshape(side, side)).save(p)
        pngs.append(p)
    q = queries[0].astype(np.float64)
    t0 = time.perf_counter()
    for p in pngs:
        img = np.asarray(Image.open(p), dtype=np.float64).ravel()
        pearsonr(q, img)
    per_pair_study = (time.perf_counter() - t0) / len(pngs)
    t0 = time.perf_counter()
    for i in range(len(pngs)):
        np.corrcoef(q, train[i])
    per_pair_corrcoef = (time.perf_counter() - t0) / len(pngs)
    return per_pair_study, per_pair_corrcoef


def _peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS (MiB) of a subprocess, sampled every 20 ms with psutil (``ru_maxrss`` of a forked child
    would include this big parent's pages from before ``exec``)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    if proc.returncode:
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "subprocess failed")
    return peak / 2**20


def peak_rss_of_scan(train_dir: Path, synth_dir: Path, out: Path, budget: str) -> tuple[float, float]:
    """(peak RSS MiB of a ``memscan scan`` subprocess, peak RSS MiB of a process that only imports it)."""
    idle = _peak_rss_mib(
        [sys.executable, "-c", "import time, memscan.scanning.scanner, memscan.cli; time.sleep(1.0)"]
    )
    peak = _peak_rss_mib(
        [
            sys.executable,
            "-m",
            "memscan",
            "--quiet",
            "scan",
            str(train_dir),
            str(synth_dir),
            "--out",
            str(out),
            "--memory-budget",
            budget,
            "--baseline-items",
            "0",
            "--device",
            "cpu",
            "--no-report",
        ]
    )
    return peak, idle


def _fair_faiss_blas() -> bool:
    """faiss-cpu's wheel bundles OpenBLAS 0.3.15, which does not recognise recent Xeons (Sapphire Rapids)
    and falls back to a generic kernel: 30 instead of ~200 GFLOP/s here. Tell it the core type (AVX-512
    CPUs only, before faiss loads its OpenBLAS) so faiss is measured at its real speed."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(ln for ln in fh if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    if "avx512f" not in flags:
        return False
    os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"
    print("# faiss: OPENBLAS_CORETYPE=SKYLAKEX for its bundled OpenBLAS (7x faster here than its default)")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--nt", type=int, default=20000)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=200, help="pairs timed for the per-pair methods")
    ap.add_argument("--quick", action="store_true", help="500 x 5,000 x 64²")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--skip-reference", action="store_true", help="skip the float64 brute-force check")
    ap.add_argument(
        "--budget",
        default=None,
        help="memory budget for the RSS check (default 256MiB, the smallest allowed)",
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--memory-budget", default="4GiB", help="memscan scan's --memory-budget")
    ap.add_argument(
        "--only-memscan",
        action="store_true",
        help="time memscan scan alone (huge shapes: the baselines would need the data in float)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.nq, args.nt, args.side = 500, 5000, 64
    d = args.side * args.side
    flop = 2.0 * args.nq * args.nt * d
    work = Path(args.workdir or tempfile.mkdtemp(prefix="memscan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"# generating {args.nt} training + {args.nq} synthetic images of {args.side}x{args.side} in {work}"
    )
    train, queries = make_images(args.nt, args.nq, args.side, device=args.device)
    write_dataset(work / "train", train, args.side, "train", 50)
    write_dataset(work / "synthetic", queries, args.side, "sample", 10**9)
    rows: list[tuple[str, float, str]] = []
    results: dict[str, Any] = {
        "shape": [args.nq, args.nt, d],
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }

    # memscan end to end (default precision: exact integer path for uint8 data)
    def run_scan(name: str, **kw: Any):
        opts = ScanOptions(
            top_k=args.k,
            device=args.device,
            baseline_items=0,
            memory_budget=parse_bytes(args.memory_budget),
            **kw,
        )
        return scan(work / "train", work / "synthetic", work / name, opts, report=False)

    ms = run_scan("run_auto")
    t_memscan = ms.summary["seconds"]
    rows.append((f"memscan scan, end to end ({ms.summary['precision']}, exact)", t_memscan, ""))
    results["memscan_auto"] = {"seconds": t_memscan, "precision": ms.summary["precision"]}
    if args.only_memscan:
        print(
            f"\n{args.nq} synthetic x {args.nt} training x d={d}, k={args.k}, {args.device}: memscan scan "
            f"{t_memscan:.2f} s end to end ({flop / t_memscan / 1e12:.1f} T(FL)OP/s, "
            f"{ms.summary['precision']}, blocks {ms.summary['query_block']}/{ms.summary['train_block']})"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    if args.device == "cpu":
        me = run_scan("run_exact", precision="exact")
        rows.append(("memscan scan --precision exact (float64), end to end", me.summary["seconds"], ""))
        mb = run_scan("run_bf16", precision="bf16")
        rows.append(
            (
                f"memscan scan --precision bf16 (screen + re-rank of {mb.summary['n_rerank_pairs']} pairs)",
                mb.summary["seconds"],
                "",
            )
        )
        results["memscan_exact"] = me.summary["seconds"]
        results["memscan_bf16"] = mb.summary["seconds"]

    # bare matrix products
    dev = torch.device(args.device)
    if dev.type == "cuda":  # normalised on the GPU (a 65,536-row float64 pass in NumPy takes a minute)
        qb16, tb16 = device_bf16(queries, dev), device_bf16(train, dev)
    else:
        qb16 = torch.from_numpy(normalised(queries)).to(torch.bfloat16)
        tb16 = torch.from_numpy(normalised(train)).to(torch.bfloat16)

    def mm_bf16():
        for s in range(0, args.nt, 8192):
            qb16 @ tb16[s : s + 8192].T
        if dev.type == "cuda":
            torch.cuda.synchronize()

    mm_bf16()
    t_bf16, _ = best_of(mm_bf16, max(1, args.repeat))
    rows.append(("torch bf16 matrix product alone (not exact)", t_bf16, ""))
    qi8 = torch.from_numpy((queries ^ 128).view(np.int8)).to(dev)
    ti8 = torch.from_numpy((train ^ 128).view(np.int8)).to(dev)

    def mm_int8():
        for s in range(0, args.nt, 8192):
            torch._int_mm(qi8, ti8[s : s + 8192].T)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    mm_int8()
    t_int8, _ = best_of(mm_int8, max(1, args.repeat))
    rows.append(("torch int8 matrix product alone (torch._int_mm)", t_int8, ""))
    results["bf16_product_seconds"], results["int8_product_seconds"] = t_bf16, t_int8

    # faiss and NumPy (CPU)
    zq32, zt32 = (normalised(queries), normalised(train)) if args.device == "cpu" else (None, None)
    t_faiss = None
    try:
        if args.device != "cpu":
            raise ImportError  # faiss-cpu is not on the GPU machine; its CPU time is not the comparison there
        set_here = _fair_faiss_blas()
        import faiss

        if set_here:  # read by faiss's OpenBLAS at load; keep it out of later subprocesses
            os.environ.pop("OPENBLAS_CORETYPE")

        def run_faiss():
            index = faiss.IndexFlatIP(d)
            index.add(zt32)
            return index.search(zq32, args.k)

        t_faiss, (fv, fi) = best_of(run_faiss, max(1, args.repeat))
        rows.append((f"faiss IndexFlatIP exact float32 search, k={args.k}", t_faiss, ""))
        results["faiss_seconds"] = t_faiss
    except ImportError:
        print("# faiss not installed: pip install faiss-cpu to include it")

    def numpy_blocked():
        best = np.empty(args.nq, dtype=np.int64)
        top = np.full(args.nq, -np.inf, dtype=np.float32)
        for s in range(0, args.nt, 4096):
            c = zq32 @ zt32[s : s + 4096].T
            j = c.argmax(axis=1)
            v = c[np.arange(args.nq), j]
            better = v > top
            top[better], best[better] = v[better], j[better] + s
        return best

    if args.device == "cpu":  # on the GPU machine this CPU baseline would take hours at the GPU shapes
        t_np, _ = best_of(numpy_blocked, max(1, args.repeat))
        rows.append(("NumPy float32 blocked product + argmax (top-1)", t_np, ""))
        results["numpy_seconds"] = t_np

    # the study's per-pair method
    per_study, per_corrcoef = study_per_pair(train, queries, args.side, args.pairs, work)
    pairs = args.nq * args.nt
    rows.append(
        (
            f"study: pearsonr per pair re-reading PNGs ({per_study * 1e3:.2f} ms/pair, extrapolated)",
            per_study * pairs,
            "",
        )
    )
    rows.append(
        (
            f"np.corrcoef per pair in memory ({per_corrcoef * 1e6:.0f} µs/pair, extrapolated)",
            per_corrcoef * pairs,
            "",
        )
    )
    results["study_per_pair_seconds"], results["corrcoef_per_pair_seconds"] = per_study, per_corrcoef

    # exactness against a float64 brute force
    if not args.skip_reference:
        z64q, z64t = normalised(queries, np.float64), normalised(train, np.float64)
        ids = ms.matches["train_id"].to_numpy().reshape(args.nq, args.k)
        vals = ms.matches["correlation"].to_numpy().reshape(args.nq, args.k)
        same, checked, worst = 0, 0, 0.0
        for s in range(0, args.nq, 256):
            full = z64q[s : s + 256] @ z64t.T
            order = np.argsort(-full, axis=1, kind="stable")[:, : args.k + 1]
            for r in range(full.shape[0]):
                ref = order[r]
                worst = max(worst, float(np.abs(full[r, ref[: args.k]] - vals[s + r]).max()))
                if full[r, ref[args.k - 1]] - full[r, ref[args.k]] > 1e-12:
                    checked += 1
                    same += [f"train_{j:07d}" for j in ref[: args.k]] == list(ids[s + r])
        rows.append(
            (
                f"check: top-{args.k} ids equal to float64 brute force on {same}/{checked} queries "
                f"(gap > 1e-12); max |Δr| = {worst:.1e}",
                float("nan"),
                "",
            )
        )
        results["exact_ids_equal"] = [same, checked]
        results["max_abs_value_error"] = worst

    # peak memory while the training set is larger than the budget
    train_bytes = args.nt * d
    budget = args.budget or "256MiB"
    if args.device == "cpu":
        peak, idle = peak_rss_of_scan(work / "train", work / "synthetic", work / "run_rss", budget)
        rows.append(
            (
                f"peak RSS {peak:.0f} MiB (imports alone {idle:.0f} MiB; scan data {peak - idle:.0f} MiB) "
                f"with --memory-budget {budget}, training set {train_bytes / 2**20:.0f} MiB",
                float("nan"),
                "",
            )
        )
        results["rss"] = {
            "peak_mib": peak,
            "idle_mib": idle,
            "budget": budget,
            "train_mib": train_bytes / 2**20,
        }

    print(
        f"\n{args.nq} synthetic x {args.nt} training x d={d} ({args.side}x{args.side}), k={args.k}, "
        f"{args.device}, {os.cpu_count()} cores, torch {torch.__version__}, {results['date']}\n"
    )
    print("| method | seconds | GFLOP/s (2·nq·nt·d) | memscan is faster by |")
    print("|---|---|---|---|")
    for name, secs, _ in rows:
        if np.isnan(secs):
            print(f"| {name} | | | |")
            continue
        rate = flop / secs / 1e9
        ratio = secs / t_memscan
        print(f"| {name} | {secs:,.3f} | {rate:,.0f} | {ratio:,.2f}× |")
    if t_faiss:
        print(f"\nmemscan end to end vs faiss search alone: {t_faiss / t_memscan:.2f}× faster")
    print(
        f"memscan end to end vs the bf16 product alone: {t_bf16 / t_memscan:.0%} of its rate; "
        f"vs the int8 product alone: {t_int8 / t_memscan:.0%}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
