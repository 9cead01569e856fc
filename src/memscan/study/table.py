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
from memscan.quality.panel import CONTRACT_KEYS
from memscan.study.config import StudyConfig
from memscan.study.grid import Cell
from memscan.study.stages import STAGE_FILE

#: Columns read from each cell's ``run/quality.json``: its contract keys (``docs/quality.md``) but the raw
#: ``fd`` (its scale is the encoder's; ``fd_relative`` carries it) and α-precision/β-recall (precision and
#: recall say it per sample), in the contract's order; a cell scanned without the panel has NaN (``n/a``).
QUALITY_COLUMNS = tuple(k for k in CONTRACT_KEYS if k not in ("fd", "alpha_precision", "beta_recall"))
#: Number formats of the quality columns (KID and the p-value span orders of magnitude: significant digits).
_QUALITY_FORMATS = {
    "fd_relative": "{:.2f}",
    "kid": "{:.3g}",
    "ct_statistic": "{:.2f}",
    "ct_p_value": "{:.2g}",
    "ms_ssim_synthetic": "{:.3f}",
    "ms_ssim_holdout": "{:.3f}",
}


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
        *QUALITY_COLUMNS,
        "run",
    ]


def quality_values(panel: dict[str, Any] | None) -> dict[str, float]:
    """The :data:`QUALITY_COLUMNS` of a cell's panel (``load_run(...).quality``): NaN for each when there is
    none (a scan without the panel) and for each undefined value (stored as null)."""
    panel = panel or {}
    out = {}
    for col in QUALITY_COLUMNS:
        v = panel.get(col)
        out[col] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
    return out


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
            **quality_values(res.quality),
            run=str((cell.folder / "run").relative_to(cell.folder.parent.parent)),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=result_columns(config))


def fmt(v: Any, col: str) -> str:
    """One cell of the table as text: percentages for fractions, 4 digits for correlations, 2-3 for the
    quality metrics, ``n/a`` for NaN."""
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "n/a"
        if col in QUALITY_COLUMNS:
            return _QUALITY_FORMATS.get(col, "{:.2f}").format(v)
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
flagged synthetic copy; `train_seconds`: training wall time.

Quality (each cell's `run/quality.json`, features of an encoder trained on the cell's training subset; the
held-out real images are the reference; `docs/quality.md`):
`fd_relative` = FD(synthetic, train) / FD(held-out, train): ≈ 1 as close to the training set as new real
patients, ≫ 1 worse, < 1 closer than new patients (suspect copying); with few held-out subjects other new
patients vary too (2-3 on the cpu preset's data, docs/quality.md);
`kid`: kernel inception distance to the training set (≈ 0: same distribution; unbiased, may be < 0);
`precision`: share of synthetic images inside the real images' k-NN manifold (fidelity; 1 = all realistic);
`recall`: share of real images inside the synthetic manifold (diversity; 1 = nothing missing);
`density`: like precision, counting the real neighbourhoods that hold each sample (≈ 1 real-like);
`coverage`: share of real images with a synthetic sample among their k nearest (mode coverage);
`authenticity`: share of samples not closer to their nearest training image than that image is to its own
nearest training neighbour (0 = all copies; ~0.5 for an i.i.d. draw, higher for new patients' slices:
compare with `holdout_reference` in the cell's quality.json);
`ct_statistic`: the data-copying test's Z (≈ 0 as far as new patients, ≪ 0 copying, ≫ 0 underfitting);
`ct_p_value`: its one-sided p-value (small: copying);
`ms_ssim_synthetic` / `ms_ssim_holdout`: mean pairwise MS-SSIM within the synthetic / held-out set (higher
than the held-out value: less diverse than real patients). `n/a`: not computed or not defined.
"""


def write_results(table: pd.DataFrame, out: Path) -> None:
    """Write ``out/results.csv`` and ``out/results.md``."""
    write_with(out / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    write_text(out / "results.md", "# memscan study results\n\n" + markdown_table(table) + MD_NOTES)
