"""The study's results table: one row per cell, read from the cells' run folders, and its formatting
(``results.csv``, ``results.md``, and the cells of the HTML report)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memscan.core.atomic import write_text, write_with
from memscan.study.config import StudyConfig
from memscan.study.grid import Cell
from memscan.study.stages import STAGE_FILE


def threshold_column(t: float) -> str:
    """Results column of the fraction of synthetic items above the fixed threshold ``t``."""
    return f"frac_above_{t:.2f}"


def result_columns(config: StudyConfig) -> list[str]:
    """Columns of ``results.csv``, in order."""
    return [
        "model",
        "family",
        "preset",
        "size",
        "n_subjects",
        "n_train_items",
        "n_synthetic",
        "n_holdout",
        "max_corr_median",
        "max_corr_p99",
        "flagged_fraction",
        *[threshold_column(t) for t in config.scan.thresholds],
        "subjects_leaked",
        "subjects_leaked_fraction",
        "train_steps",
        "train_seconds",
        "intensity_gap",
        "run",
    ]


def results_table(cells: list[Cell], config: StudyConfig) -> pd.DataFrame:
    """One row per cell, read from the cells' run folders and stage records."""
    from memscan.scanning.scanner import load_run

    rows = []
    for cell in cells:
        res = load_run(cell.folder / "run")
        s = res.summary
        mc = res.synthetic["max_correlation"].to_numpy(dtype=np.float64)
        mc = mc[np.isfinite(mc)]
        train_rec = json.loads((cell.folder / "model" / STAGE_FILE).read_text())
        scan_rec = json.loads((cell.folder / "run" / STAGE_FILE).read_text())
        model_cfg = json.loads((cell.folder / "model" / "config.json").read_text())
        row: dict[str, Any] = {
            "model": cell.model.label,
            "family": cell.model.family,
            "preset": cell.model.preset,
            "size": cell.size_label,
            "n_subjects": cell.n_subjects,
            "n_train_items": int(s["n_train"]),
            "n_synthetic": int(s["n_synthetic"]),
            "n_holdout": int(s.get("n_holdout") or 0),
            "max_corr_median": float(np.median(mc)) if mc.size else math.nan,
            "max_corr_p99": float(np.quantile(mc, 0.99)) if mc.size else math.nan,
            "flagged_fraction": float(s["flagged_fraction"]),
        }
        for t in config.scan.thresholds:
            row[threshold_column(t)] = float((mc > t).sum() / max(int(s["n_synthetic"]), 1))
        row.update(
            subjects_leaked=int(s["subjects_leaked"]),
            subjects_leaked_fraction=float(s["subjects_leaked_fraction"]),
            train_steps=int(model_cfg.get("train", {}).get("steps") or 0),
            train_seconds=round(float(train_rec.get("train_seconds", math.nan)), 2),
            intensity_gap=round(abs(float(scan_rec["synthetic_mean"]) - float(scan_rec["holdout_mean"])), 3),
            run=str((cell.folder / "run").relative_to(cell.folder.parent.parent)),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=result_columns(config))


def fmt(v: Any, col: str) -> str:
    """One cell of the table as text: percentages for fractions, 4 digits for correlations, ``n/a``."""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if "frac" in col or col == "flagged_fraction":
            return f"{v:.1%}"
        if col.startswith("max_corr"):
            return f"{v:.4f}"
        return f"{v:,.1f}"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return str(v)


def markdown_table(table: pd.DataFrame) -> str:
    """The results as a Markdown table (percentages and 4-digit correlations)."""
    cols = [c for c in table.columns if c not in ("family", "run")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(row[c], c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


MD_NOTES = """
Columns: `max_corr_*`: each synthetic image's maximum Pearson correlation with any training image of its
cell (median and 99th percentile); `flagged_fraction`: flagged by the held-out calibration (FDR);
`frac_above_T`: above the fixed threshold T; `subjects_leaked_fraction`: training subjects with at least one
flagged synthetic copy; `intensity_gap`: |mean pixel intensity of the synthetic images - that of the
held-out images| (stored units): a crude quality proxy, not FID; `train_seconds`: training wall time.
"""


def write_results(table: pd.DataFrame, out: Path) -> None:
    """Write ``out/results.csv`` and ``out/results.md``."""
    write_with(out / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_text(out / "results.md", "# memscan study results\n\n" + markdown_table(table) + MD_NOTES)
