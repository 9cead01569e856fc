"""``memscan demo``: the whole pipeline on built-in phantom data, end to end, offline.

1. A phantom BraTS cohort (BraTS 2020 layout and names) is prepared with the study's recipe and a
   subject-wise split: training subjects and held-out subjects (the calibration set).
2. A synthetic set is built until the models exist: slices of *fresh* phantom subjects (never in
   training, never in the held-out set: what a good generator should produce) plus a clearly labelled
   **planted positive control**: transformed copies of training slices (exact, noisy, mirrored,
   shifted, rescaled), the memorization the scan must catch.
3. ``scan`` with the held-out calibration, mirroring and shift tolerance; the HTML report.
4. A phantom chest x-ray tree (Kermany layout) is prepared too, to show the second layout.
5. ``--robust``: a small phantom cohort at 48 x 48 whose synthetic set holds a copy of a training slice
   rotated 10 degrees and enlarged 1.15x (a crop + resize) among real slices of held-out people. Its pixel
   correlation lies inside the held-out null, so the plain scan cannot flag it; the robust stage (an encoder
   trained on the training set, a registered re-rank, calibrated on held-out people) does. The encoder's
   training is shortened (40 steps) to keep the demo quick.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from memscan import phantoms
from memscan.core import atomic
from memscan.core.progress import out_console as console
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset, DatasetWriter
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
    robust: bool = True,
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
        robust: also run the robust part (``out/robust``: a rotated copy that only ``--robust`` catches).

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
    if robust:
        robust_demo(out / "robust")
    return result


#: The robust part's copy: this training slice of its cohort, rotated and enlarged (:func:`rotate_and_crop`).
ROBUST_SOURCE = 10
ROBUST_COPY_ID = "rotated_copy"


def rotate_and_crop(item: np.ndarray, angle: float = 10.0, zoom: float = 1.15) -> np.ndarray:
    """``[C, H, W]`` → rotated ``angle`` degrees (counter-clockwise as displayed), enlarged ``zoom`` times
    about the centre and cropped back to ``[C, H, W]`` (float32)."""
    out = []
    for c in np.asarray(item, dtype=np.float32):
        z = ndimage.zoom(ndimage.rotate(c, angle, reshape=False, order=1), zoom, order=1)
        o0, o1 = (z.shape[0] - c.shape[0]) // 2, (z.shape[1] - c.shape[1]) // 2
        out.append(z[o0 : o0 + c.shape[0], o1 : o1 + c.shape[1]])
    return np.stack(out)


def write_robust_cohort(root: Path) -> tuple[Dataset, Dataset, Path]:
    """The robust part's data: 8 phantom subjects at 48 x 48 (3 held out) and a synthetic set of one rotated,
    enlarged copy of training slice :data:`ROBUST_SOURCE` and six real slices of held-out people."""
    _write_tree(root / "raw", lambda p: phantoms.write_brats_tree(p, 8, seed=11, shape=(48, 48, 20)))
    prepare_dataset(root / "raw", root / "brats", PrepareOptions(layout="brats", size=48, test_subjects=3))
    train, test = Dataset.open(root / "brats" / "train"), Dataset.open(root / "brats" / "test")
    synthetic = root / "synthetic"
    if not synthetic.exists():
        with DatasetWriter(
            synthetic,
            item_shape=train.item_shape,
            dtype=str(train.dtype),
            channels=train.channels,
            recipe=train.info.get("recipe", {}),
        ) as w:
            copy = rotate_and_crop(train.take(np.array([ROBUST_SOURCE]))[0])
            w.add(np.clip(copy, 0, 255).astype(train.dtype), {"id": ROBUST_COPY_ID, "subject": "synthetic"})
            for i in (3, 9, 15, 20, 26, 32):  # real slices of held-out people: not copies
                w.add(test.take(np.array([i]))[0], {"id": f"heldout_slice_{i}", "subject": "synthetic"})
            w.commit()
    return train, test, synthetic


def robust_demo(root: Path) -> tuple[ScanResult, ScanResult]:
    """The robust part (module docstring, step 5): the same data scanned without and with ``--robust``."""
    from memscan.embed import EncoderConfig
    from memscan.robust.pipeline import RobustOptions
    from memscan.scanning.robust_stage import transform_words

    train, test, synthetic = write_robust_cohort(Path(root))
    opts = {"baseline_items": 20, "alpha": 0.4}
    fast = RobustOptions(encoder=EncoderConfig(steps=40, batch=32), refine_k=2)
    plain = scan(train.path, synthetic, root / "run-plain", ScanOptions(**opts), holdout=test.path)
    robust = scan(
        train.path,
        synthetic,
        root / "run-robust",
        ScanOptions(robust=True, quality=True, **opts),
        holdout=test.path,
        robust_options=fast,
        command=f"memscan scan {train.path} {synthetic} --out {root / 'run-robust'} --holdout {test.path} "
        "--fdr 0.4 --baseline-items 20 --robust --quality",
    )
    report = write_report(root / "run-robust")
    p = plain.synthetic.set_index("synthetic_id").loc[ROBUST_COPY_ID]
    r = robust.synthetic.set_index("synthetic_id").loc[ROBUST_COPY_ID]
    caught = bool(r["flagged"]) and not bool(p["flagged"])
    console.print(
        f"[bold]demo --robust[/bold]: {ROBUST_COPY_ID} is training slice {train.ids[ROBUST_SOURCE]} rotated "
        f"10° and enlarged 1.15x. Plain scan: max correlation {p['max_correlation']:.4f}, "
        f"p = {p['p_value']:.3f}, {'flagged' if p['flagged'] else 'NOT flagged'}. With --robust: registered "
        f"correlation {r['robust_score']:.4f} with {r['robust_train_id']} "
        f"({transform_words(r['robust_transform'])}), "
        f"robust p = {r['robust_p_value']:.3f}, {'flagged' if r['flagged'] else 'NOT flagged'}"
        + (" — only --robust catches it." if caught else ".")
        + f"\nReport: {report}"
    )
    return plain, robust


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
