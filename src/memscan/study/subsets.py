"""The study's datasets: the phantom tree and nested subsets of whole training subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memscan.core.atomic import swap_folder, temporary_sibling
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.errors import InputError
from memscan.study.config import DataConfig


def write_phantoms(data: DataConfig, out: Path, seed: int) -> None:
    """Write the phantom tree of ``[data] phantom`` into ``out`` (whole or not at all)."""
    from memscan import phantoms

    assert data.phantom is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    tmp.mkdir()
    if data.layout == "cxr":
        phantoms.write_cxr_tree(tmp, data.phantom.subjects, seed=seed, size=data.phantom.shape[0])
    else:
        shape = tuple(data.phantom.shape)
        phantoms.write_brats_tree(tmp, data.phantom.subjects, seed=seed, shape=shape)  # type: ignore[arg-type]
    swap_folder(tmp, out)


def subject_order(subjects: list[str], seed: int) -> list[str]:
    """Training subjects in the seeded order in which they enter the subsets (subsets are nested)."""
    uniq = sorted(set(subjects))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    return [uniq[i] for i in perm]


def write_subset(train_path: Path, out: Path, subjects: list[str], fingerprint: str) -> None:
    """Write the dataset folder ``out`` with the items of ``subjects`` (whole subjects) of ``train_path``."""
    ds = Dataset.open(train_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = set(subjects)
    positions = np.flatnonzero(ds.manifest["subject"].astype(str).isin(keep).to_numpy())
    if positions.size == 0:
        raise InputError(f"no training items for subjects {sorted(keep)[:3]}...", train_path)
    rows = ds.manifest.iloc[positions].drop(columns=["index"]).to_dict("records")
    info = {k: v for k, v in ds.info.items() if k in ("layout", "source_name", "options", "split_seed")}
    info.update(fingerprint=fingerprint, subset_of=str(train_path), subset_subjects=sorted(keep))
    writer = DatasetWriter(
        out,
        item_shape=ds.item_shape,
        dtype=str(ds.dtype),
        channels=ds.channels,
        recipe=ds.info.get("recipe", {}),
        info=info,
        overwrite=True,
    )
    with writer:
        block = max(1, writer.chunk_items or 256)
        for lo in range(0, positions.size, block):
            pos = positions[lo : lo + block]
            items = ds.take(pos)
            for item, row in zip(items, rows[lo : lo + block], strict=True):
                writer.add(item, {k: (None if _isna(v) else v) for k, v in row.items()})
        writer.commit()


def _isna(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
