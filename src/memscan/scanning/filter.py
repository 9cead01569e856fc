"""``memscan filter``: the synthetic items a scan did not flag, as a new dataset folder (a release candidate).

Rule: an item is kept only when the scan *scored* it and did *not* flag it. Removed, with the reason
recorded:

- ``flagged``: the scan's verdict (``flagged`` in ``synthetic.parquet``; with ``--robust`` the combined one);
- ``not_scored``: no nearest training item or no correlation, no p-value although the scan was calibrated
  on a held-out set, or no row in the run at all (an item that could not be scored is never "clean");
- ``leaked_subject`` (only with ``also_subjects``): matched to a training subject that the scan found
  leaked; a subject reproduced once is at risk in every sample that resembles it.

Outputs: ``OUT/`` (same dataset format: ``memscan.dataset.store``; the source's manifest columns, channels,
dtype and recipe; ``dataset.json`` records the run and the counts under ``filtered_from``) and, *beside* it,
``OUT.removed.parquet``: one row per removed item with its reason, nearest training item and subject,
correlation, transform and p-value. The removed list names training items and subjects, so it stays with
the auditor and is not inside the folder one would release. Both are written atomically (the folder, then at
once the list; a failure leaves any old pair as it was).

Re-scanning the kept items against the same training and held-out data flags none of them under the
Benjamini-Hochberg rule: removing rejected p-values can only lower the step-up thresholds of the others
(rank ``j`` of ``m − R`` items: ``j / (m − R) ≤ (R + j) / m``). Fixed-threshold flags are per item anyway.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memscan.core.atomic import temporary_sibling
from memscan.dataset.store import Dataset, DatasetWriter, check_output_folder
from memscan.errors import InputError
from memscan.scanning.robust_stage import ROBUST_COLUMNS
from memscan.scanning.runfolder import SYNTHETIC_COLUMNS
from memscan.scanning.scanner import load_run

log = logging.getLogger(__name__)

REMOVED_SUFFIX = ".removed.parquet"
REASONS = ("flagged", "not_scored", "leaked_subject")
#: Items read and written per block.
BLOCK = 256
#: What the removed list keeps of each item: its verdict and matches (the run folder's columns).
_MATCH_COLUMNS = (*[c for c in SYNTHETIC_COLUMNS if c not in ("synthetic_id", "unscored")], *ROBUST_COLUMNS)


@dataclass
class FilterResult:
    """What :func:`filter_run` wrote: the clean dataset and the removed items (``synthetic_id``, ``reason``,
    the run's match columns)."""

    dataset: Dataset
    removed: pd.DataFrame
    removed_path: Path

    @property
    def n_kept(self) -> int:
        return self.dataset.n_items


def removed_path_for(out: str | Path) -> Path:
    """``OUT.removed.parquet`` beside the dataset folder ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + REMOVED_SUFFIX)


def _synthetic_dataset(run: Path, summary: dict[str, Any], synthetic: str | Path | None) -> Dataset:
    if synthetic is None:
        synthetic = summary.get("synthetic") or (summary.get("options") or {}).get("synthetic")
        if not synthetic:
            raise InputError("the run does not record its synthetic dataset; pass it explicitly", run)
        if not Path(synthetic).exists() and (run.parent / synthetic).exists():
            synthetic = run.parent / synthetic
    path = Path(synthetic)
    if not path.exists() and not path.parent.exists():
        raise InputError(
            "the run's synthetic dataset is not there any more (moved?); pass its path explicitly", path
        )
    return Dataset.open(path)


def _unscored(table: pd.DataFrame, summary: dict[str, Any]) -> np.ndarray:
    """True where the scan could not score the item (see the module docstring)."""
    bad = table["max_correlation"].isna().to_numpy() | table["nearest_train_id"].isna().to_numpy()
    if summary.get("n_holdout") and "p_value" in table:
        bad |= table["p_value"].isna().to_numpy()
    options = summary.get("options") or {}
    if options.get("robust") and "robust_score" in table:
        bad |= table["robust_score"].isna().to_numpy()
    return bad


def _leaked_match(table: pd.DataFrame, leaked: set[str]) -> np.ndarray:
    hit = table["nearest_subject"].astype("string").isin(leaked).fillna(False).to_numpy(dtype=bool)
    if "robust_subject" in table:
        hit |= table["robust_subject"].astype("string").isin(leaked).fillna(False).to_numpy(dtype=bool)
    return hit


def filter_run(
    run: str | Path,
    out: str | Path,
    *,
    also_subjects: bool = False,
    overwrite: bool = False,
    synthetic: str | Path | None = None,
) -> FilterResult:
    """Write the scored, unflagged synthetic items of ``run`` to the dataset folder ``out``.

    Args:
        run: a finished run folder of ``memscan scan``.
        out: the dataset folder to write (and ``out.removed.parquet`` beside it).
        also_subjects: also remove every item whose nearest training item belongs to a leaked subject.
        overwrite: replace an existing dataset at ``out`` (and its removed list).
        synthetic: the scanned synthetic dataset, when it is no longer at the path the run recorded, or
            the original when the scan resized it (``--resize`` records the resized copy; ids are the same).

    Returns:
        The written dataset and the removed items.

    Raises:
        InputError: not a run folder, the synthetic dataset is missing or no longer matches the run,
            ``out`` holds something else, or every item would be removed.
    """
    run, out = Path(run), Path(out)
    res = load_run(run)
    if res.synthetic is None:
        raise InputError("the run folder has no synthetic.parquet", run)
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise InputError("the filtered dataset must not be written inside the run folder", out)
    ds = _synthetic_dataset(run, res.summary, synthetic)
    if out.exists() and out.resolve() == Path(ds.root).resolve():
        raise InputError("refusing to overwrite the scanned synthetic dataset itself", out)
    check_output_folder(out, overwrite=overwrite)
    removed_file = removed_path_for(out)
    if removed_file.exists() and not overwrite:
        raise InputError("already exists; pass --overwrite to replace it", removed_file)

    table = res.synthetic.copy()
    table["synthetic_id"] = table["synthetic_id"].astype("string")
    ids = pd.Series(ds.ids, dtype="string")
    unknown = set(table["synthetic_id"]) - set(ids)
    if unknown:
        raise InputError(
            f"the synthetic dataset does not match the run: {len(unknown)} scanned ids are not in it, e.g. "
            f"{sorted(unknown)[0]!r}",
            ds.path,
        )
    reason = pd.Series(pd.NA, index=table.index, dtype="string")
    unscored = _unscored(table, res.summary)
    flagged = table["flagged"].fillna(True).to_numpy(dtype=bool)
    reason[flagged] = "flagged"
    reason[unscored] = "not_scored"
    if also_subjects:
        subjects = res.subjects
        leaked = set(subjects.loc[subjects["leaked"].fillna(False).astype(bool), "subject"].astype(str))
        hit = _leaked_match(table, leaked) & reason.isna().to_numpy()
        reason[hit] = "leaked_subject"
    table["reason"] = reason
    by_id = table.set_index("synthetic_id")
    # dataset items absent from the run were never scored
    missing = ids[~ids.isin(table["synthetic_id"])]
    keep_mask = ids.isin(by_id.index[by_id["reason"].isna()]).to_numpy()
    keep = np.flatnonzero(keep_mask)
    if keep.size == 0:
        raise InputError(
            f"every one of the {len(ids)} synthetic items would be removed (flagged or not scored); "
            "nothing to write",
            out,
        )
    cols = ["synthetic_id", "reason", *[c for c in _MATCH_COLUMNS if c in table]]
    removed = table.loc[table["reason"].notna(), cols]
    if len(missing):
        extra = pd.DataFrame({"synthetic_id": missing.to_numpy(), "reason": "not_scored"})
        removed = pd.concat([removed, extra.astype({"synthetic_id": "string", "reason": "string"})])
    order = pd.Series(np.arange(len(ids)), index=ids)
    removed = removed.iloc[np.argsort(order.loc[removed["synthetic_id"]].to_numpy(), kind="stable")]
    removed = removed.reset_index(drop=True)
    counts = {r: int((removed["reason"] == r).sum()) for r in REASONS}
    log.info("filter: keeping %d of %d synthetic items; removed %s", keep.size, len(ids), counts)

    # the removed list goes into place right after the dataset: a failure before leaves both old files
    tmp_removed = temporary_sibling(removed_file)
    removed.to_parquet(tmp_removed, index=False)
    manifest = ds.manifest.drop(columns=["index"])
    provenance = {
        "run": str(run),
        "run_id": res.summary.get("run_id"),
        "synthetic": str(ds.path),
        "also_subjects": bool(also_subjects),
        "n_source": int(len(ids)),
        "n_kept": int(keep.size),
        "n_removed": int(len(removed)),
        "removed_by_reason": counts,
        "removed_manifest": removed_file.name,
    }
    try:
        with DatasetWriter(
            out,
            item_shape=ds.item_shape,
            dtype=str(ds.dtype),
            channels=ds.channels,
            recipe=ds.info.get("recipe", {}),
            info={"filtered_from": provenance},
            overwrite=overwrite,
        ) as writer:
            for lo in range(0, keep.size, BLOCK):
                pos = keep[lo : lo + BLOCK]
                for item, (_, row) in zip(ds.take(pos), manifest.iloc[pos].iterrows(), strict=True):
                    writer.add(item, {k: (None if pd.isna(v) else v) for k, v in row.items()})
            clean = writer.commit()
    except BaseException:
        tmp_removed.unlink(missing_ok=True)
        raise
    os.replace(tmp_removed, removed_file)
    return FilterResult(clean, removed, removed_file)
