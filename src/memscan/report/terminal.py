"""Human-readable summaries (rich tables) of datasets and runs for the terminal (the CLI and the demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from memscan.dataset.store import Dataset
from memscan.scanning.runfolder import REPORT_FILE, ScanResult

if TYPE_CHECKING:  # pragma: no cover
    from memscan.scanning.filter import FilterResult

#: Quality rows of the terminal table: (key, label); each beside its held-out reference.
QUALITY_ROWS = (
    ("fd_relative", "FD relative to held-out (~1: like new patients; << 1: copying warning)"),
    ("precision", "precision (fidelity)"),
    ("recall", "recall (diversity)"),
    ("authenticity", "authenticity (0: copies)"),
)


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
    if info.get("filtered_from"):
        table.add_row("filtered", filtered_text(info["filtered_from"]))
    return table


def filtered_text(record: dict[str, Any]) -> str:
    """One line on what ``memscan filter`` removed (a dataset's ``dataset.json`` ``filtered_from``)."""
    reasons = record.get("removed_by_reason") or {}
    why = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in reasons.items() if n) or "none"
    run_id = str(record.get("run_id") or "?")[:8]
    return (
        f"memscan filter of run folder {record.get('run')} (run {run_id}): kept {record.get('n_kept')} of "
        f"{record.get('n_source')} synthetic items, removed {record.get('n_removed')} ({why})"
        + ("; every sample matched to a leaked subject removed" if record.get("also_subjects") else "")
    )


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3g}"


def quality_rows(panel: dict[str, Any]) -> list[tuple[str, str]]:
    """The quality panel's headline numbers, each beside the held-out reference: ``(label, text)`` rows."""
    ref = panel.get("holdout_reference") or {}
    rows = []
    for key, label in QUALITY_ROWS:
        text = _number(panel.get(key))
        if key != "fd_relative" and ref:
            text += f" (held-out {_number(ref.get(key))})"
        rows.append((label, text))
    ct = panel.get("ct_statistic")
    rows.append(
        ("C_T data-copying test (<< 0: copying)", f"{_number(ct)}, p = {_number(panel.get('ct_p_value'))}")
    )
    return rows


def filter_table(result: FilterResult) -> Table:
    """What ``memscan filter`` wrote: items kept, removed by reason, where the removed list is."""
    record = result.dataset.info.get("filtered_from") or {}
    table = Table(title=f"filtered dataset {result.dataset.path}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("kept", f"{result.n_kept} of {record.get('n_source')} synthetic items")
    for reason, n in (record.get("removed_by_reason") or {}).items():
        table.add_row(f"removed: {reason.replace('_', ' ')}", f"{n}")
    table.add_row("removed list", f"{result.removed_path} (names training items: keep it with the audit)")
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
    if s.get("robust"):
        how += " for the pixel test; flags are the combined verdict of the pixel and robust tests"
    table.add_row("flagged", f"{s['n_flagged']} of {s['n_synthetic']} ({s['flagged_fraction']:.1%}), {how}")
    if s.get("n_unscored"):
        table.add_row(
            "NOT SCORED",
            f"{s['n_unscored']} synthetic item(s) could not be scored (constant or non-finite): not "
            "certified as non-copies (column 'unscored')",
        )
    table.add_row("subjects leaked", f"{s['subjects_leaked']} of {s['subjects_total']} training subjects")
    if s.get("filtered_from"):
        table.add_row("synthetic set", filtered_text(s["filtered_from"]))
    if s.get("robust"):
        rob = s["robust"]
        table.add_row(
            "robust",
            f"combined verdict of the pixel and robust tests: {rob.get('n_flagged_only_by_robust')} flagged "
            f"only by the robust test, {rob.get('n_flagged_pixel_test')} by the pixel test alone "
            f"(held-out null: {rob.get('n_null')} images)",
        )
    if result.quality is not None:
        for label, text in quality_rows(result.quality):
            table.add_row(label, text)
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
    if "robust_score" in result.synthetic:
        from memscan.scanning.robust_stage import transform_words

        syn = result.synthetic
        shown = set(top["synthetic_id"])
        robust = syn[syn["flagged"] & syn["robust_train_id"].notna() & ~syn["synthetic_id"].isin(shown)]
        for _, row in robust.sort_values("robust_p_value", kind="stable").head(5).iterrows():
            table.add_row(
                f"  {row['synthetic_id']}",
                f"registered r {row['robust_score']:.4f} ~ {row['robust_train_id']} "
                f"[{transform_words(row['robust_transform'])}]",
            )
    return table
