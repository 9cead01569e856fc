"""The run folder's tables, built from top-k arrays (``[n_queries, k]``) and the datasets' ids and subjects.

Column contracts are listed in :mod:`memscan.scanning.runfolder`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from memscan.audit.subjects import subject_rollup, train_item_counts
from memscan.dataset.store import Dataset


def nearest_table(
    train: Dataset,
    queries: Dataset,
    id_column: str,
    values: np.ndarray,
    indices: np.ndarray,
    transforms: np.ndarray,
) -> pd.DataFrame:
    """One row per query item: its nearest training item (the synthetic and held-out tables).

    Args:
        train: the training dataset.
        queries: the query dataset (its ``ids`` name the rows).
        id_column: name of the query id column.
        values, indices, transforms: top-k arrays ``[n, k]``; only column 0 is used.
    """
    valid = indices[:, 0] >= 0
    safe = np.where(valid, indices[:, 0], 0)
    return pd.DataFrame(
        {
            id_column: pd.array(queries.ids, dtype="string"),
            "max_correlation": values[:, 0].astype(np.float64),
            "nearest_train_id": pd.array(np.where(valid, train.ids[safe], None), dtype="string"),
            "nearest_subject": pd.array(np.where(valid, train.subjects[safe], None), dtype="string"),
            "transform": pd.array(np.where(valid, transforms[:, 0], None), dtype="string"),
        }
    )


def build_tables(
    train: Dataset,
    synth: Dataset,
    values: np.ndarray,
    indices: np.ndarray,
    transforms: np.ndarray,
    flagged: np.ndarray,
    p_values: np.ndarray | None = None,
    *,
    flag_nearest: np.ndarray | None = None,
    robust_used: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """The synthetic, matches, subjects and train_items tables.

    Args:
        train, synth: the datasets compared.
        values, indices, transforms: top-k arrays ``[n_synthetic, k]``.
        flagged: bool ``[n_synthetic]``.
        p_values: ``[n_synthetic]`` or None (not calibrated).
        flag_nearest: with ``--robust``: per item, the training position its flag is attributed to (the
            match of the test with the smaller p-value); the subjects' ``n_flagged`` and ``leaked`` count
            by it, and ``n_robust_flagged`` counts the flags attributed through a robust match.
        robust_used: with ``flag_nearest``: bool ``[n_synthetic]``, where the robust match was taken.
    """
    n, k = values.shape
    train_ids = train.ids
    train_subjects = train.subjects
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    matches = pd.DataFrame(
        {
            "synthetic_id": np.repeat(synth.ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "train_id": np.where(valid, train_ids[safe], None).reshape(-1),
            "train_subject": np.where(valid, train_subjects[safe], None).reshape(-1),
            "correlation": values.reshape(-1).astype(np.float64),
            "transform": np.where(valid, transforms, None).reshape(-1),
        }
    )
    matches = matches[valid.reshape(-1)].reset_index(drop=True)
    for col in ("synthetic_id", "train_id", "train_subject", "transform"):
        matches[col] = matches[col].astype("string")
    synthetic = nearest_table(train, synth, "synthetic_id", values, indices, transforms)
    synthetic["p_value"] = pd.array(p_values if p_values is not None else [None] * n, dtype="Float64")
    synthetic["flagged"] = np.asarray(flagged, dtype=bool)
    # An item without a finite correlation (constant image, non-finite pixels) was not compared: it is
    # reported as unscored, never as "not a copy".
    synthetic["unscored"] = ~np.isfinite(values[:, 0]) | (indices[:, 0] < 0)
    top = values[:, 0]
    nearest = np.where(valid[:, 0], indices[:, 0], -1)
    subjects = subject_rollup(train, nearest, top, synthetic["flagged"].to_numpy())
    if flag_nearest is not None:
        subjects = _attribute_flags(train, subjects, flag_nearest, np.asarray(flagged, bool), robust_used)
    return {
        "synthetic": synthetic,
        "matches": matches,
        "subjects": subjects,
        "train_items": train_item_counts(train, nearest, top),
    }


def _attribute_flags(
    train: Dataset, subjects: pd.DataFrame, flag_nearest: np.ndarray, flagged: np.ndarray, robust_used: Any
) -> pd.DataFrame:
    """Recount ``n_flagged``/``leaked`` by the attributed match; add ``n_robust_flagged``; same order rule."""
    ok = (flag_nearest >= 0) & flagged
    used = np.asarray(robust_used, dtype=bool) if robust_used is not None else np.zeros_like(ok)
    subj = train.subjects
    names = subjects["subject"].astype(str)
    by = pd.Series(subj[flag_nearest[ok]].astype(str)).value_counts()
    by_robust = pd.Series(subj[flag_nearest[ok & used]].astype(str)).value_counts()
    out = subjects.copy()
    out["n_flagged"] = by.reindex(names).fillna(0).astype(np.int64).to_numpy()
    out["n_robust_flagged"] = by_robust.reindex(names).fillna(0).astype(np.int64).to_numpy()
    out["leaked"] = out["n_flagged"] > 0
    return out.sort_values(
        ["leaked", "max_correlation", "subject"],
        ascending=[False, False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)


def baseline_table(
    train: Dataset,
    pos: np.ndarray,
    any_top: tuple[np.ndarray, np.ndarray],
    other_top: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """The train-vs-train baselines of the sampled training items ``pos [m]``.

    Args:
        train: the training dataset.
        pos: sampled training positions.
        any_top: (values, indices) ``[m, 1]`` of the nearest other training item.
        other_top: (values, indices) ``[m, 1]`` of the nearest item of another subject.
    """
    (av, ai), (ov, oi) = any_top, other_top
    ids = train.ids
    return pd.DataFrame(
        {
            "train_id": pd.array(ids[pos], dtype="string"),
            "subject": pd.array(train.subjects[pos], dtype="string"),
            "nn_correlation_any": av[:, 0],
            "nn_id_any": pd.array(
                np.where(ai[:, 0] >= 0, ids[np.maximum(ai[:, 0], 0)], None), dtype="string"
            ),
            "nn_correlation_other_subject": ov[:, 0],
            "nn_id_other_subject": pd.array(
                np.where(oi[:, 0] >= 0, ids[np.maximum(oi[:, 0], 0)], None), dtype="string"
            ),
        }
    )


def describe(values: np.ndarray) -> dict[str, float] | None:
    """``n``, median, 95% quantile and max of the finite values, or None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return None
    return {
        "n": int(v.size),
        "median": float(np.median(v)),
        "q95": float(np.quantile(v, 0.95)),
        "max": float(v.max()),
    }


def describe_baseline(df: pd.DataFrame | None) -> dict[str, Any] | None:
    """The summary's ``baseline`` record."""
    if df is None:
        return None
    return {
        "n_items": int(len(df)),
        "any": describe(df["nn_correlation_any"].to_numpy(dtype=float)),
        "other_subject": describe(df["nn_correlation_other_subject"].to_numpy(dtype=float)),
    }
