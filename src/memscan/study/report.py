"""The study's HTML page: the table, flagged fraction vs size, memorisation against fidelity, histograms per
size, the best pair per cell, and the first samples of each cell beside their nearest training images.

Figures are written to ``DIR/figures/`` and embedded in ``DIR/report.html`` as data URIs, so the page is
one self-contained file.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import platform
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from memscan.core.atomic import write_text
from memscan.core.version import __version__
from memscan.report import figures
from memscan.study.config import StudyConfig
from memscan.study.grid import Cell
from memscan.study.table import fmt, markdown_table, threshold_column

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
# Okabe-Ito, colour-blind safe; one colour per model.
MODEL_COLOURS = ("#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
# One marker per model as well, so that the trade-off figure reads in grey-scale too.
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P")
#: The trade-off figure's panels: (quality column, x-axis label, reference value of new real patients).
TRADEOFF_PANELS = (
    ("fd_relative", "fd_relative (1 = as close as new real patients)", 1.0),
    ("precision", "precision (fidelity)", None),
    ("recall", "recall (diversity)", None),
)


def _environment() -> jinja2.Environment:
    """The HTML templates of ``memscan/report/templates`` (the study page extends the report's base)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("memscan.report") / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _colour(models: list[str], label: str) -> str:
    return MODEL_COLOURS[models.index(label) % len(MODEL_COLOURS)]


def size_histograms(cells: list[Cell], models: list[str], fig_dir: Path) -> list[tuple[str, Path]]:
    """One histogram per training-set size: each model's synthetic max correlations and the held-out null."""
    from memscan.scanning.scanner import load_run

    out = []
    sizes = sorted({c.n_subjects for c in cells})
    for n in sizes:
        series = []
        holdout = None
        for cell in (c for c in cells if c.n_subjects == n):
            res = load_run(cell.folder / "run")
            series.append(
                figures.HistogramSeries(
                    f"{cell.model.label} synthetic",
                    res.synthetic["max_correlation"].to_numpy(dtype=float),
                    _colour(models, cell.model.label),
                )
            )
            if holdout is None and res.holdout is not None:
                holdout = res.holdout["max_correlation"].to_numpy(dtype=float)
        if holdout is not None:
            series.insert(0, figures.HistogramSeries("held-out real", holdout, figures.HOLDOUT_COLOUR, True))
        path = figures.histogram_figure(series, None, fig_dir / f"hist_s{n}.png")
        out.append((f"{n} training subject{'s' if n != 1 else ''}", path))
    return out


def flagged_vs_size(table: pd.DataFrame, models: list[str], thresholds: list[str], path: Path) -> Path:
    """Line plot: flagged fraction (calibrated: solid; fixed thresholds: dashed) vs training subjects."""
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label in models:
        rows = table[table["model"] == label].sort_values("n_subjects")
        colour = _colour(models, label)
        x = rows["n_subjects"].to_numpy(dtype=float)
        ax.plot(
            x, rows["flagged_fraction"], marker="o", color=colour, linewidth=2, label=f"{label}: calibrated"
        )
        for i, col in enumerate(thresholds):
            ax.plot(
                x,
                rows[col],
                marker=".",
                color=colour,
                linewidth=1,
                linestyle=("--", ":", "-.")[i % 3],
                label=f"{label}: r > {col.rsplit('_', 1)[-1]}",
            )
    xs = table["n_subjects"].to_numpy(dtype=float)
    if xs.size and xs.max() / max(xs.min(), 1) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(xs)), [str(int(v)) for v in sorted(set(xs))])
    ax.set_xlabel("training subjects")
    ax.set_ylabel("fraction of synthetic images")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, ncols=2, frameon=False)
    return figures._save(fig, path)


def memorisation_vs_fidelity(table: pd.DataFrame, models: list[str], path: Path) -> Path | None:
    """The study's trade-off at a glance: flagged fraction (y) against ``fd_relative``, precision and recall
    (x, one panel each), one colour and marker per model, marker size and label by training subjects; the
    cells of a model are joined in size order. None when no cell has a quality panel.
    """
    cols = [c for c, _, _ in TRADEOFF_PANELS]
    finite = table[cols].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    if not finite.any():
        return None
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    axes = fig.subplots(1, len(TRADEOFF_PANELS), sharey=True)
    sizes = sorted(set(table["n_subjects"].astype(int)))
    area = {n: 30 + 90 * i / max(len(sizes) - 1, 1) for i, n in enumerate(sizes)}
    for ax, (col, label, reference) in zip(axes, TRADEOFF_PANELS, strict=True):
        for i, model in enumerate(models):
            rows = table[table["model"] == model].sort_values("n_subjects")
            x = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
            y = rows["flagged_fraction"].to_numpy(dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            colour, marker = _colour(models, model), MODEL_MARKERS[i % len(MODEL_MARKERS)]
            ax.plot(x[ok], y[ok], color=colour, linewidth=1, alpha=0.6)
            n_sub = rows["n_subjects"].astype(int).to_numpy()[ok]
            ax.scatter(
                x[ok], y[ok], s=[area[n] for n in n_sub], color=colour, marker=marker, label=model, zorder=3
            )
            for xv, yv, n in zip(x[ok], y[ok], n_sub, strict=True):
                ax.annotate(f"{n}", (xv, yv), textcoords="offset points", xytext=(6, 4), fontsize=7)
        if reference is not None:
            ax.axvline(reference, color=figures.HOLDOUT_COLOUR, linestyle="--", linewidth=1)
        if col == "fd_relative":
            xs = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
            xs = xs[np.isfinite(xs) & (xs > 0)]
            if xs.size and xs.max() / xs.min() >= 10:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("flagged fraction (memorisation)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8, frameon=False, title="model (label: training subjects)", title_fontsize=7)
    return figures._save(fig, path)


def best_pair(cell: Cell, path: Path, canvas: figures.PairCanvas) -> dict[str, Any] | None:
    """Draw the cell's best-matching (synthetic, training) pair in the study's layout."""
    from memscan.dataset.store import Dataset
    from memscan.scanning.scanner import load_run

    res = load_run(cell.folder / "run")
    synth = res.synthetic.dropna(subset=["nearest_train_id"])
    if synth.empty:
        return None
    row = synth.loc[synth["max_correlation"].idxmax()]
    train = Dataset.open(cell.subset)
    samples = Dataset.open(cell.folder / "samples")
    tman = train.manifest
    tpos = int(np.flatnonzero(tman["id"].astype(str).to_numpy() == str(row["nearest_train_id"]))[0])
    spos = int(np.flatnonzero(samples.manifest["id"].astype(str).to_numpy() == str(row["synthetic_id"]))[0])
    t_item, s_item = train.take([tpos])[0], samples.take([spos])[0]
    dims = train.spatial_dims
    transform = None if pd.isna(row["transform"]) else str(row["transform"])
    aligned, valid = figures.align_to_train(s_item, transform, dims)
    panels = []
    trow = tman.iloc[tpos]
    for step, title in ((-1, "previous slice"), (1, "next slice")):
        pos = None
        if dims == 2 and pd.notna(trow["slice_index"]):
            hit = np.flatnonzero(
                (tman["source"].astype(str) == str(trow["source"]))
                & (tman["slice_index"] == int(trow["slice_index"]) + step)
            )
            pos = int(hit[0]) if hit.size else None
        if pos is None:
            panels.append(figures.PairPanel(title, None, "not in the\ntraining set"))
        else:
            nb = train.take([pos])[0]
            r_nb = figures.pearson(aligned, nb, valid)
            panels.append(
                figures.PairPanel(f"{title}\nr with synthetic {r_nb:.4f}", figures.display_plane(nb, 0, dims))
            )
    _, r = canvas.draw(
        t_item,
        aligned,
        valid,
        path,
        channel=0,
        compared_channels=None,
        spatial_dims=dims,
        synthetic_title=f"synthetic ({transform})" if transform and transform != "none" else "synthetic",
        train_title="training",
        neighbours=panels,
    )
    return {
        "cell": cell.key,
        "r": float(row["max_correlation"]),
        "flagged": bool(row["flagged"]),
        "synthetic_id": str(row["synthetic_id"]),
        "train_id": str(row["nearest_train_id"]),
        "subject": str(row["nearest_subject"]),
        "image": path,
    }


def sample_strip(cell: Cell, path: Path, n: int = 8) -> Path | None:
    """The cell's first ``n`` samples (in id order, not chosen) above their nearest training images.

    Shows what the table's numbers look like: copies, near-copies or novel images. Each pair is titled
    with its correlation and, when the match needed one, the winning transform (``flip``, a shift); the
    training image is shown as stored.
    """
    from memscan.dataset.store import Dataset
    from memscan.scanning.scanner import load_run

    res = load_run(cell.folder / "run")
    samples = Dataset.open(cell.folder / "samples")
    train = Dataset.open(cell.subset)
    k = min(n, samples.n_items)
    if k == 0:
        return None
    dims = samples.spatial_dims
    by_id = res.synthetic.set_index(res.synthetic["synthetic_id"].astype(str))
    train_pos = {str(t): i for i, t in enumerate(train.manifest["id"].astype(str))}
    lo, hi = (0.0, 255.0) if str(samples.dtype) == "uint8" else (None, None)
    fig = Figure(figsize=(1.25 * k, 2.9))

    def panel(index: int, item: np.ndarray | None, title: str, size: int) -> None:
        ax = fig.add_subplot(2, k, index)
        ax.set_axis_off()
        if item is not None:  # pixels as they are: no smoothing of a 32 px slice
            plane = figures.display_plane(item, 0, dims)
            ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=size)

    for j, item in enumerate(samples.read(0, k)):
        sid = str(samples.manifest["id"].iloc[j])
        row = by_id.loc[sid] if sid in by_id.index else None
        title = "synthetic"
        if row is not None and pd.notna(row["max_correlation"]):
            transform = None if pd.isna(row["transform"]) else str(row["transform"])
            shown = f" {transform}" if transform and transform != "none" else ""
            title = f"r {row['max_correlation']:.3f}{shown}"
        panel(j + 1, item, title, 8)
        tid = None if row is None or pd.isna(row["nearest_train_id"]) else str(row["nearest_train_id"])
        t_item = train.take([train_pos[tid]])[0] if tid in train_pos else None
        panel(k + j + 1, t_item, "nearest training", 7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.05, hspace=0.25)
    return figures._save(fig, path)


def write_study_report(out: Path, table: pd.DataFrame, cells: list[Cell], config: StudyConfig) -> Path:
    """Write ``out/report.html`` (self-contained) and ``out/figures/*.png``."""
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(exist_ok=True)
    models = [m.label for m in config.models]
    hists = [(title, _data_uri(p)) for title, p in size_histograms(cells, models, fig_dir)]
    thr_cols = [threshold_column(t) for t in config.scan.thresholds]
    line = _data_uri(
        flagged_vs_size(table, models, thr_cols[1:2] or thr_cols[:1], fig_dir / "flagged_vs_size.png")
    )
    trade = memorisation_vs_fidelity(table, models, fig_dir / "memorisation_vs_fidelity.png")
    tradeoff = _data_uri(trade) if trade is not None else None
    canvas = figures.PairCanvas()
    pairs = []
    for cell in cells:
        p = best_pair(cell, fig_dir / f"pair_{cell.key}.png", canvas)
        if p is not None:
            p["image"] = _data_uri(p["image"])
            pairs.append(p)
    strips = []
    for cell in cells:
        strip = sample_strip(cell, fig_dir / f"samples_{cell.key}.png")
        if strip is not None:
            strips.append((cell.key, _data_uri(strip)))
    cols = [c for c in table.columns if c not in ("family",)]
    rows = [[fmt(r[c], c) for c in cols] for _, r in table.iterrows()]
    versions = [
        ("python", platform.python_version()),
        ("memscan", __version__),
        ("numpy", _version("numpy")),
        ("torch", _version("torch")),
        ("monai", _version("monai")),
    ]
    html = (
        _environment()
        .get_template("study.html.j2")
        .render(
            name=config.name,
            description=config.description,
            columns=cols,
            rows=rows,
            hists=hists,
            line=line,
            tradeoff=tradeoff,
            pairs=pairs,
            strips=strips,
            config_json=json.dumps(config.to_dict(), indent=2),
            markdown=markdown_table(table),
            summary={"memscan_version": __version__},
            provenance={"versions": versions},
            run_name=out.name,
        )
    )
    path = out / "report.html"
    write_text(path, html)
    return path
