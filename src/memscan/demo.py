"""``memscan demo``: the whole pipeline on built-in phantom data, end to end, offline.

1. A phantom BraTS cohort (BraTS 2020 layout and names) is prepared with the study's recipe and a
   subject-wise split: training subjects and held-out subjects (the calibration set).
2. A synthetic set is built until the models exist: slices of *fresh* phantom subjects (never in
   training, never in the held-out set: what a good generator should produce) plus a clearly labelled
   **planted positive control**: transformed copies of training slices (exact, noisy, mirrored,
   shifted, rescaled), the memorization the scan must catch.
3. ``scan`` with the held-out calibration, mirroring and shift tolerance; the HTML report.
4. A phantom chest x-ray tree (Kermany layout) is prepared too, to show the second layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

from memscan import phantoms
from memscan.core import atomic
from memscan.core.progress import out_console as console
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.report.html import write_report
from memscan.report.terminal import dataset_table, run_table
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import ScanResult, scan

log = logging.getLogger(__name__)


def run_demo(
    out: Path,
    *,
    n_subjects: int = 10,
    n_holdout: int = 3,
    n_fresh: int = 3,
    n_patients: int = 12,
    n_copies: int = 20,
    n_novel: int = 40,
    size: int = 128,
    seed: int = 0,
) -> ScanResult:
    """Run the demo into ``out`` (re-running reuses what is already there).

    Args:
        out: folder for raw phantoms, dataset folders, the run and its report.
        n_subjects: phantom BraTS subjects of the cohort (training + held-out).
        n_holdout: of those, held out for calibration.
        n_fresh: further phantom subjects whose slices form the "novel" part of the synthetic set.
        n_patients: phantom chest x-ray patients.
        n_copies: planted copies of training slices (the positive control).
        n_novel: slices of fresh subjects in the synthetic set.
        size: in-plane size of prepared slices (the study used 256; 128 keeps the demo fast).
        seed: seed of everything.

    Returns:
        The scan's result (the report is at ``out/run/report.html``).
    """
    out = Path(out)
    raw = out / "raw"
    shape = (160, 160, 100)  # phantom volumes; BraTS is 240 x 240 x 155
    trees = {"brats": raw / "brats", "fresh": raw / "fresh_subjects", "cxr": raw / "chest_xray"}
    _write_tree(trees["brats"], lambda p: phantoms.write_brats_tree(p, n_subjects, seed=seed, shape=shape))
    _write_tree(
        trees["fresh"], lambda p: phantoms.write_brats_tree(p, n_fresh, seed=seed + 1000, shape=shape)
    )
    _write_tree(trees["cxr"], lambda p: phantoms.write_cxr_tree(p, n_patients, seed=seed))
    cohort = prepare_dataset(
        trees["brats"],
        out / "brats",
        PrepareOptions(layout="brats", size=size, test_subjects=n_holdout, seed=seed),
    )
    fresh = prepare_dataset(trees["fresh"], out / "fresh", PrepareOptions(layout="brats", size=size))
    cxr = prepare_dataset(trees["cxr"], out / "chest_xray", PrepareOptions(layout="cxr"))
    train, holdout = Dataset.open(out / "brats" / "train"), Dataset.open(out / "brats" / "test")
    synthetic = out / "synthetic"
    if not synthetic.exists():
        plant_copies(train, fresh, synthetic, n_copies=n_copies, n_novel=n_novel, seed=seed)
    for ds in (cohort, cxr):
        console.print(dataset_table(ds))
    # 40 shift candidates: a 2-3 pixel shift can drop the true source below the 10 best unshifted matches
    # (2 of the 4 shifted phantom copies in the PLS frame); 40 finds all 4 (docs: io branch report).
    opts = ScanOptions(top_k=5, flips=True, max_shift=3, shift_candidates=40, baseline_items=300)
    run = out / "run"
    result = scan(
        train.path,
        synthetic,
        run,
        opts,
        holdout=holdout.path,
        command=f"memscan scan {train.path} {synthetic} --out {run} --holdout {holdout.path} "
        "--flips --max-shift 3 --shift-candidates 40",
    )
    report = write_report(run)
    console.print(run_table(result))
    s = result.summary
    console.print(
        f"[bold]demo[/bold]: the synthetic set holds {n_copies} planted copies of training slices (positive "
        f"control) and {n_novel} slices of fresh phantom subjects. memscan flagged {s['n_flagged']} of "
        f"{s['n_synthetic']} ({s['flagged_fraction']:.0%}); {s['subjects_leaked']} of {s['subjects_total']} "
        f"training subjects leaked.\nReport: {report}"
    )
    return result


def _write_tree(path: Path, write) -> None:
    """Write a phantom tree once, into a temporary folder renamed at the end (never half-written)."""
    if path.exists():
        return
    log.info("writing phantom data to %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(path.parent, path.name)
    with atomic.atomic_path(path) as tmp:
        tmp.mkdir()
        write(tmp)
