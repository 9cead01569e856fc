"""Human-readable summaries (rich tables) of datasets and runs for the terminal."""

from __future__ import annotations

from rich.table import Table

from memscan.data.store import Dataset


def dataset_table(ds: Dataset) -> Table:
    """Key facts of a dataset folder: items, shape, dtype, subjects, splits, recipe, exclusions."""
    info = ds.info
    table = Table(title=f"dataset {ds.path}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("layout / recipe", f"{info.get('layout', '?')} / {info['recipe'].get('name', '?')}")
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
