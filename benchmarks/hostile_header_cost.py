"""Cost of the compressed-header check (``readers._check_claimed_size`` on ``.nii.gz``) on honest files.

Reads a BraTS-sized volume (240×240×155 int16, smooth content plus noise, gzip level 6 as nibabel
writes it) with and without the check, alternating, best of ``--repeat`` each, in one process.

Run: ``PYTHONPATH=src python benchmarks/hostile_header_cost.py``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from memscan.io import readers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(0, 6, n) for n in (240, 240, 155)), indexing="ij")
    vol = (500 + 300 * np.sin(x) * np.cos(y) * np.sin(z / 2) + rng.normal(0, 20, x.shape)).astype(np.int16)
    path = Path(tempfile.mkdtemp()) / "t1.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    check = readers._check_claimed_size
    times: dict[str, list[float]] = {"with check": [], "without": []}
    for _ in range(args.repeat):
        for label in times:
            readers._check_claimed_size = check if label == "with check" else (lambda *a, **k: None)
            t0 = time.perf_counter()
            readers.read_image(path)
            times[label].append(time.perf_counter() - t0)
    readers._check_claimed_size = check
    best = {k: min(v) for k, v in times.items()}
    print(f"file {path.stat().st_size / 2**20:.1f} MiB, volume {vol.nbytes / 2**20:.1f} MiB")
    for k, v in best.items():
        print(f"{k}: {v * 1000:.0f} ms (best of {args.repeat})")
    print(f"overhead: {(best['with check'] - best['without']) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
