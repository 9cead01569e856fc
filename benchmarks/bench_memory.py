"""Peak memory of ``memscan scan`` against the training-set size and ``--memory-budget``, in ONE run.

For training sets of several sizes (all larger than the smallest budget) and a few budgets, runs
``memscan scan`` in a subprocess and samples its resident memory (psutil, every 20 ms). Prints the peak
above what the same process holds after its imports alone: the scan's own memory. It should follow the
budget, not the training set.

    python benchmarks/bench_memory.py                  # 128x128 uint8; 10,000 / 40,000 / 80,000 items
    python benchmarks/bench_memory.py --datasets TRAIN,SYNTHETIC   # prepared datasets (e.g. int16 NIfTI
                                                                   # from bench_files.py --workdir DIR)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import make_images  # noqa: E402
from bench_scan import _peak_rss_mib, write_dataset  # noqa: E402

IMPORTS = "import time, memscan.scanning.scanner, memscan.cli; time.sleep(1.0)"


def _scan_cmd(train: Path, synthetic: Path, out: Path, budget: str) -> list[str]:
    return [
        sys.executable, "-m", "memscan", "--quiet", "scan", str(train), str(synthetic), "--out", str(out),
        "--memory-budget", budget, "--baseline-items", "0", "--no-report", "--device", "cpu",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--sizes", default="10000,40000,80000")
    ap.add_argument("--budgets", default="256MiB,1GiB")
    ap.add_argument("--datasets", default=None, help="TRAIN,SYNTHETIC: prepared dataset folders to scan")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memscan-mem-"))
    if args.datasets:
        train_dir, syn_dir = (Path(p) for p in args.datasets.split(","))
        idle = _peak_rss_mib([sys.executable, "-c", IMPORTS])
        print(
            f"\nimports alone: {idle:.0f} MiB; {train_dir} against {syn_dir}; {time.strftime('%Y-%m-%d')}\n"
        )
        print("| --memory-budget | scan memory (peak RSS above imports) |\n|---|---|")
        for budget in args.budgets.split(","):
            peak = _peak_rss_mib(_scan_cmd(train_dir, syn_dir, work / f"run{budget}", budget))
            print(f"| {budget} | {peak - idle:.0f} MiB |")
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    train, queries = make_images(max(sizes), args.nq, args.side)
    write_dataset(work / "synthetic", queries, args.side, "sample", 10**9)
    idle = _peak_rss_mib([sys.executable, "-c", IMPORTS])
    print(
        f"\nimports alone: {idle:.0f} MiB; queries: {args.nq} x {args.side}², uint8; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| training set | "
        + " | ".join(f"scan memory, --memory-budget {b}" for b in args.budgets.split(","))
        + " |"
    )
    print("|---|" + "---|" * len(args.budgets.split(",")))
    for n in sizes:
        write_dataset(work / f"train{n}", train[:n], args.side, "train", 50)
        cells = []
        for budget in args.budgets.split(","):
            peak = _peak_rss_mib(
                _scan_cmd(work / f"train{n}", work / "synthetic", work / f"run{n}{budget}", budget)
            )
            cells.append(f"{peak - idle:.0f} MiB")
        print(f"| {n:,} items = {n * args.side**2 / 2**20:.0f} MiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
