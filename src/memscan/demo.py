"""``memscan demo``: the pipeline on built-in phantom data, end to end, offline."""

from __future__ import annotations

import logging
from pathlib import Path

from memscan.data import phantoms
from memscan.data.prepare import PrepareOptions, prepare_dataset
from memscan.progress import out_console as console
from memscan.summary import dataset_table

log = logging.getLogger(__name__)


def run_demo(out: Path, *, n_subjects: int = 8, n_patients: int = 12, seed: int = 0) -> dict[str, Path]:
    """Generate phantom BraTS and chest x-ray trees and prepare them into dataset folders.

    Returns:
        Paths of what was made, by name.
    """
    out = Path(out)
    raw = out / "raw"
    brats_raw, cxr_raw = raw / "brats", raw / "chest_xray"
    if not brats_raw.exists():
        log.info("writing %d phantom BraTS subjects to %s", n_subjects, brats_raw)
        brats_raw.mkdir(parents=True)
        phantoms.write_brats_tree(brats_raw, n_subjects, seed=seed)
    if not cxr_raw.exists():
        log.info("writing %d phantom chest x-ray patients to %s", n_patients, cxr_raw)
        cxr_raw.mkdir(parents=True)
        phantoms.write_cxr_tree(cxr_raw, n_patients, seed=seed)
    n_test = max(1, n_subjects // 4)
    brats = prepare_dataset(
        brats_raw, out / "brats", PrepareOptions(layout="brats", test_subjects=n_test, seed=seed)
    )
    cxr = prepare_dataset(cxr_raw, out / "chest_xray", PrepareOptions(layout="cxr"))
    console.print(dataset_table(brats))
    console.print(dataset_table(cxr))
    made = {"brats_raw": brats_raw, "cxr_raw": cxr_raw, "brats": brats.path, "chest_xray": cxr.path}
    console.print(f"[bold]demo[/bold]: phantom data in {raw}, dataset folders {brats.path} and {cxr.path}")
    return made
