"""Peak memory of ``memscan scan`` against the training-set size and ``--memory-budget``, in ONE run.

For training sets of several sizes (all larger than the smallest budget) and a few budgets, runs
``memscan scan`` in a subprocess and samples its resident memory (psutil, every 20 ms). Prints the peak
above what the same process holds after its imports alone: the scan's own memory. It should follow the
budget, not the training set.

    python benchmarks/bench_memory.py                  # 128x128 uint8; 10,000 / 40,000 / 80,000 items
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--sizes", default="10000,40000,80000")
    ap.add_argument("--budgets", default="256MiB,1GiB")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memscan-mem-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    train, queries = make_images(max(sizes), args.nq, args.side)
    write_dataset(work / "synthetic", queries, args.side, "sample", 10**9)
    imports = "import time, memscan.scanning.scanner, memscan.cli; time.sleep(1.0)"
    idle = _peak_rss_mib([sys.executable, "-c", imports])
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
                [
                    sys.executable,
                    "-m",
                    "memscan",
                    "--quiet",
                    "scan",
                    str(work / f"train{n}"),
                    str(work / "synthetic"),
                    "--out",
                    str(work / f"run{n}{budget}"),
                    "--memory-budget",
                    budget,
                    "--baseline-items",
                    "0",
                    "--no-report",
                    "--device",
                    "cpu",
                ]
            )
            cells.append(f"{peak - idle:.0f} MiB")
        print(f"| {n:,} items = {n * args.side**2 / 2**20:.0f} MiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
