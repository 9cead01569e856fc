"""Human-readable summaries (rich tables) of datasets and runs for the terminal (the CLI and the demo)."""

from __future__ import annotations

from rich.table import Table

from memscan.dataset.store import Dataset
from memscan.scanning.runfolder import REPORT_FILE, ScanResult


def engine_text(precision: str | None, n_rerank_pairs: int | None) -> str:
    """How the scan's correlations were computed, in words (the terminal table and the HTML report)."""
    if precision == "int8":
        return "exact integer products (8-bit data): every correlation exact, nothing to re-rank"
    pairs = "?" if n_rerank_pairs is None else n_rerank_pairs
    if precision == "int16":
        return f"int8 screen of the top 8 bits + exact integer re-rank of {pairs} pairs (16-bit data)"
    return f"{precision} screen + exact float64 re-rank of {pairs} pairs"


def dataset_table(ds: Dataset) -> Table:
    """Key facts of a dataset folder: items, shape, dtype, subjects, splits, recipe, exclusions."""
    info = ds.info
    table = Table(title=f"dataset {ds.path}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    layout = info.get("layout")
    recipe = info["recipe"].get("name", "?")
    table.add_row("layout / recipe" if layout else "recipe", f"{layout} / {recipe}" if layout else recipe)
    table.add_row("items", f"{ds.n_items}")
    table.add_row("item shape", f"{list(ds.item_shape)} ({ds.spatial_dims}D, {ds.dtype})")
    table.add_row("channels", ", ".join(ds.channels))
    table.add_row("subjects", f"{ds.manifest['subject'].nunique()}")
    splits = ds.manifest["split"].value_counts(dropna=True).sort_index()
    if len(splits):
        per = ds.manifest.dropna(subset=["split"]).groupby("split")["subject"].nunique()
        table.add_row("splits", ", ".join(f"{k}: {v} items / {per[k]} subjects" for k, v in splits.items()))
    labels = ds.manifest["label"].value_counts(dropna=True).sort_index()
    if len(labels):
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in labels.items()))
    if info.get("excluded"):
        table.add_row("excluded", f"{len(info['excluded'])} (see dataset.json)")
    return table


def run_table(result: ScanResult) -> Table:
    """Key numbers of a scan run and its riskiest matches."""
    s = result.summary
    table = Table(title=f"run {result.run}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row(
        "compared",
        f"{s['n_synthetic']} synthetic x {s['n_train']} training items "
        f"(d={s['feature_dim']}, top-{s['top_k']})",
    )
    if s["threshold_source"] == "holdout":
        cal = s["calibration"]
        how = f"calibrated on {s['n_holdout']} held-out images ({cal['method']} {cal['alpha']}); " + (
            f"flagged from r = {s['threshold']:.4f}" if s["threshold"] is not None else "none significant"
        )
    else:
        how = f"max correlation > {s['threshold']}: fixed threshold, NOT calibrated (use --holdout)"
    table.add_row("flagged", f"{s['n_flagged']} of {s['n_synthetic']} ({s['flagged_fraction']:.1%}), {how}")
    if s.get("n_unscored"):
        table.add_row(
            "NOT SCORED",
            f"{s['n_unscored']} synthetic item(s) could not be scored (constant or non-finite): not "
            "certified as non-copies (column 'unscored')",
        )
    table.add_row("subjects leaked", f"{s['subjects_leaked']} of {s['subjects_total']} training subjects")
    table.add_row("engine", f"{s['device']}, {engine_text(s['precision'], s['n_rerank_pairs'])}")
    table.add_row("time", f"{s['seconds']:.2f} s")
    if (result.run / REPORT_FILE).exists():
        table.add_row("report", str(result.run / REPORT_FILE))
    top = result.synthetic.sort_values("max_correlation", ascending=False, na_position="last").head(5)
    for _, row in top.iterrows():
        table.add_row(
            f"  {row['synthetic_id']}",
            f"{row['max_correlation']:.4f} ~ {row['nearest_train_id']} [{row['transform']}]",
        )
    return table
