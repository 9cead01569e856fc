"""``memscan scan`` on data prepared FROM FILES the way users have them, against faiss, in ONE run.

Writes the images as files, prepares them with the CLI (``memscan prepare SRC --out DATASET``, the generic
recipe, as a user would), then times on each kind of input:

* ``memscan scan`` end to end, run as the command in its own process (as a user runs it after
  ``memscan prepare``): ``seconds`` of its summary (from the start of the scan to the tables
  written, loading from the dataset folders included, process start excluded), default precision;
* faiss ``IndexFlatIP`` exact float32 search, k = top-k, on the same vectors read back from the prepared
  datasets (normalisation done beforehand, not timed);
* NumPy float32 blocked matrix product + argmax (top-1 only);
* the bare products memscan stands on: torch bf16 and torch int8 (``torch._int_mm``) on the same shapes.

Inputs (every third synthetic image is a noisy copy of a training image):

* ``png``: 8-bit grayscale PNG files (smooth random fields, as in ``bench_scan.py``), one folder per set;
* ``nifti``: int16 NIfTI volumes of 125 slices (a smooth random 3D field per volume on an MR-like
  0–3,000 scale; neighbouring slices correlate above 0.99, the hard case for a screen), sliced along z;
* ``dicom``: the same volumes as CT DICOM series folders (one file per slice, int16 stored values with
  Rescale Slope 1 / Intercept -1024, which prepare keeps as stored integers), sliced along z.

It checks memscan's top-k against a float64 brute force for a sample of queries (ids where the gap to the
next value exceeds 1e-12; correlations within 1e-9). ``--profile`` also runs each scan under cProfile and
prints the top functions by internal time. On a shared machine only ratios within one run mean anything.

    python benchmarks/bench_files.py --quick                  # 500 x 5,000 x 64², ~2 minutes
    python benchmarks/bench_files.py                          # 4,000 x 20,000 x 128² (the issue's shape)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
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
from bench_scan import _fair_faiss_blas, best_of, normalised  # noqa: E402

from memscan.dataset.store import Dataset  # noqa: E402
from memscan.scanning.options import ScanOptions, parse_bytes  # noqa: E402
from memscan.scanning.scanner import load_run, scan  # noqa: E402

SLICES = 125


def write_pngs(folder: Path, rows: np.ndarray, side: int, prefix: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        Image.fromarray(row.reshape(side, side)).save(folder / f"{prefix}_{i:06d}.png", compress_level=1)


def mr_volumes(n_vol: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """int16 ``[n_vol, side, side, SLICES]``: trilinear-upsampled noise, 0–3,000, plus ±2 noise."""
    low = torch.from_numpy(
        rng.random((n_vol, 1, 10, max(4, side // 12), max(4, side // 12)), dtype=np.float32)
    )
    out = np.empty((n_vol, side, side, SLICES), dtype=np.int16)
    for v in range(n_vol):
        x = torch.nn.functional.interpolate(low[v : v + 1], size=(SLICES, side, side), mode="trilinear")[0, 0]
        x = (x - x.min()) / (x.max() - x.min()) * 3000 + torch.from_numpy(
            rng.integers(-2, 3, size=(SLICES, side, side)).astype(np.float32)
        )
        out[v] = x.clamp(0, 3000).round().to(torch.int16).permute(1, 2, 0).numpy()
    return out


def write_niftis(folder: Path, vols: np.ndarray, prefix: str) -> None:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(vols):
        img = nib.Nifti1Image(v, np.eye(4))
        img.header.set_data_dtype(np.int16)
        nib.save(img, str(folder / f"{prefix}_{i:04d}.nii.gz"))


def write_dicom_series(folder: Path, vols: np.ndarray, prefix: str) -> None:
    """One folder per volume, one CT slice file per z (int16 stored values, Rescale Slope 1 and Intercept
    -1024 as CT scanners write them, axial geometry), written with pydicom."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    for v, vol in enumerate(vols):
        series = folder / f"{prefix}_{v:04d}"
        series.mkdir(parents=True, exist_ok=True)
        uid = generate_uid()
        for z in range(vol.shape[-1]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = DicomDataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.SeriesInstanceUID, ds.Modality = uid, "CT"
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.ImagePositionPatient = [0.0, 0.0, float(z)]
            ds.InstanceNumber = z + 1
            ds.PixelSpacing = [1.0, 1.0]
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            plane = np.ascontiguousarray(vol[..., z])
            ds.Rows, ds.Columns = plane.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = plane.astype("<i2").tobytes()
            ds.save_as(series / f"{z:04d}.dcm", enforce_file_format=True)


def prepare(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "memscan", "prepare", str(src), "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def make_png_inputs(work: Path, nq: int, nt: int, side: int) -> None:
    train, queries = make_images(nt, nq, side)
    write_pngs(work / "png_train_src", train, side, "train")
    write_pngs(work / "png_syn_src", queries, side, "sample")


def make_nifti_inputs(work: Path, nq: int, nt: int, side: int, kind: str = "nifti") -> None:
    rng = np.random.default_rng(0)
    n_tv, n_qv = -(-nt // SLICES), -(-nq // SLICES)
    train = mr_volumes(n_tv, side, rng)
    syn = mr_volumes(n_qv, side, rng)
    flat_t = train.transpose(0, 3, 1, 2).reshape(-1, side, side)  # slices in prepare's order
    flat_s = syn.transpose(0, 3, 1, 2).reshape(-1, side, side)
    src = rng.integers(0, len(flat_t), size=len(flat_s[::3]))
    noisy = flat_t[src].astype(np.int32) + rng.integers(-20, 21, size=flat_s[::3].shape)
    flat_s[::3] = np.clip(noisy, 0, 3000).astype(np.int16)
    syn = flat_s.reshape(n_qv, SLICES, side, side).transpose(0, 2, 3, 1)
    if kind == "dicom":
        write_dicom_series(work / "dicom_train_src", train, "train")
        write_dicom_series(work / "dicom_syn_src", syn, "sample")
        return
    write_niftis(work / "nifti_train_src", train, "train")
    write_niftis(work / "nifti_syn_src", syn, "sample")


def make_dicom_inputs(work: Path, nq: int, nt: int, side: int) -> None:
    make_nifti_inputs(work, nq, nt, side, kind="dicom")


def check_reference(
    train: np.ndarray, queries: np.ndarray, res_ids: np.ndarray, res_v: np.ndarray, k: int
) -> str:
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(queries), size=min(200, len(queries)), replace=False))
    zq = normalised(queries[rows], np.float64)
    full = np.concatenate(
        [zq @ normalised(train[s : s + 2048], np.float64).T for s in range(0, len(train), 2048)], axis=1
    )
    zt = full[0]  # only its length is used below
    bad = 0
    for n, r in enumerate(rows):
        order = np.lexsort((np.arange(len(zt)), -full[n]))[: k + 1]
        v = full[n, order]
        gaps = np.abs(np.diff(v)) > 1e-12
        for j in range(k):
            if (j == 0 or gaps[j - 1]) and gaps[j] and res_ids[r, j] != order[j]:
                bad += 1
        if np.abs(res_v[r] - v[:k]).max() > 1e-9:
            bad += 1
    verdict = "OK" if bad == 0 else f"{bad} MISMATCHES"
    return f"{len(rows)} queries checked against float64 brute force: {verdict}"


def bench_input(kind: str, work: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    tr_ds, sy_ds = work / f"{kind}_train", work / f"{kind}_syn"
    prepare(work / f"{kind}_train_src", tr_ds)
    prepare(work / f"{kind}_syn_src", sy_ds)
    tr, sy = Dataset.open(tr_ds), Dataset.open(sy_ds)
    nt = tr.n_items
    opts = ScanOptions(top_k=args.k, baseline_items=0, memory_budget=parse_bytes(args.memory_budget))
    out: dict[str, Any] = {"stored_dtype": str(tr.dtype), "n_train": nt, "n_synthetic": sy.n_items}

    def run(name: str):
        return scan(tr_ds, sy_ds, work / f"{kind}_{name}", opts, report=False)

    def run_cli(name: str):
        """``memscan scan`` as a user runs it: its own process after ``memscan prepare``."""
        folder = work / f"{kind}_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        cmd = [sys.executable, "-m", "memscan", "scan", str(tr_ds), str(sy_ds), "--out", str(folder)]
        cmd += ["--top-k", str(args.k), "--baseline-items", "0", "--memory-budget", args.memory_budget]
        subprocess.run([*cmd, "--no-report"], check=True, env=env, stdout=subprocess.DEVNULL)
        return load_run(folder)

    ms = run_cli("run")
    out["memscan_seconds"] = ms.summary["seconds"]
    out["precision"] = ms.summary["precision"]
    out["n_rerank_pairs"] = ms.summary["n_rerank_pairs"]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run("run_profiled")
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
        out["profile"] = s.getvalue()
    train = tr.read(0, nt).reshape(nt, -1)
    queries = sy.read(0, sy.n_items).reshape(sy.n_items, -1)
    d = train.shape[1]
    ids = ms.matches.sort_values(["synthetic_id", "rank"])
    order = {sid: i for i, sid in enumerate(sy.ids)}
    res_ids = np.full((sy.n_items, args.k), -1, dtype=np.int64)
    res_v = np.full((sy.n_items, args.k), np.nan)
    pos = {tid: i for i, tid in enumerate(tr.ids)}
    for sid, rank, tid, corr in ids[["synthetic_id", "rank", "train_id", "correlation"]].itertuples(
        index=False
    ):
        res_ids[order[sid], rank - 1] = pos[tid]
        res_v[order[sid], rank - 1] = corr
    out["reference"] = check_reference(train, queries, res_ids, res_v, args.k)

    zq32, zt32 = normalised(queries), normalised(train)
    import faiss

    def run_faiss():
        index = faiss.IndexFlatIP(d)
        index.add(zt32)
        return index.search(zq32, args.k)

    out["faiss_seconds"], _ = best_of(run_faiss, 1)

    def numpy_blocked():
        top = np.full(len(zq32), -np.inf, dtype=np.float32)
        for s in range(0, nt, 4096):
            np.maximum(top, (zq32 @ zt32[s : s + 4096].T).max(axis=1), out=top)

    out["numpy_seconds"], _ = best_of(numpy_blocked, 1)
    qb16, tb16 = torch.from_numpy(zq32).to(torch.bfloat16), torch.from_numpy(zt32).to(torch.bfloat16)

    def mm_bf16():
        for s in range(0, nt, 8192):
            qb16 @ tb16[s : s + 8192].T

    out["bf16_product_seconds"], _ = best_of(mm_bf16, 1)
    qi8 = torch.from_numpy((np.clip(zq32 * 127 * 4, -127, 127)).astype(np.int8))
    ti8 = torch.from_numpy((np.clip(zt32 * 127 * 4, -127, 127)).astype(np.int8))

    def mm_int8():
        for s in range(0, nt, 8192):
            torch._int_mm(qi8, ti8[s : s + 8192].T)

    out["int8_product_seconds"], _ = best_of(mm_int8, 1)
    results[kind] = out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nq", type=int, default=4000)
    ap.add_argument("--nt", type=int, default=20000)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="500 x 5,000 x 64²")
    ap.add_argument("--inputs", default="png,nifti,dicom")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--memory-budget", default="4GiB")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.nq, args.nt, args.side = 500, 5000, 64
    set_here = _fair_faiss_blas()
    import faiss  # noqa: F401  (loads its OpenBLAS with the core type set)

    if set_here:
        os.environ.pop("OPENBLAS_CORETYPE")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="memscan-files-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "shape": [args.nq, args.nt, args.side * args.side],
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    makers = {"png": make_png_inputs, "nifti": make_nifti_inputs, "dicom": make_dicom_inputs}
    for kind in args.inputs.split(","):
        if not (work / f"{kind}_train_src").exists():
            print(f"# writing {kind} files in {work}", flush=True)
            makers[kind](work, args.nq, args.nt, args.side)
        bench_input(kind, work, args, results)
        r = results[kind]
        print(f"\n## {kind}: stored {r['stored_dtype']}, {r['n_synthetic']} x {r['n_train']} x {args.side}²")
        print("| method | seconds | memscan is ... x faster |\n|---|---|---|")
        t = r["memscan_seconds"]
        print(
            f"| memscan scan, end to end ({r['precision']}, exact; {r['n_rerank_pairs']} pairs re-ranked) "
            f"| {t:.2f} | 1 |"
        )
        for name, key in (
            ("faiss IndexFlatIP, exact float32", "faiss_seconds"),
            ("NumPy float32 blocked product + max", "numpy_seconds"),
            ("torch bf16 product alone (not exact)", "bf16_product_seconds"),
            ("torch int8 product alone (not exact)", "int8_product_seconds"),
        ):
            print(f"| {name} | {r[key]:.2f} | {r[key] / t:.2f} |")
        print(f"\n{r['reference']}")
        if args.profile:
            print(r["profile"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
