"""Subject-level roll-up: which training subjects were reproduced, and how often.

A subject is the unit of privacy (a patient): one leaked slice leaks the patient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memscan.dataset.store import Dataset


def train_item_counts(train: Dataset, nearest: np.ndarray, max_corr: np.ndarray) -> pd.DataFrame:
    """Per training item: how many synthetic items have it as their nearest match.

    Args:
        train: the training dataset (``n_t`` items).
        nearest: ``[n_s]`` index of each synthetic item's nearest training item, -1 for none.
        max_corr: ``[n_s]`` the corresponding correlation.

    Returns:
        One row per training item: ``train_id``, ``subject``, ``n_synthetic_nearest``, ``max_correlation``
        (the highest correlation of a synthetic item whose nearest item it is; NaN if none).
    """
    n_t = train.n_items
    ok = nearest >= 0
    counts = np.bincount(nearest[ok], minlength=n_t)
    best = np.full(n_t, -np.inf)
    np.maximum.at(best, nearest[ok], max_corr[ok])
    best[np.isinf(best)] = np.nan
    return pd.DataFrame(
        {
            "train_id": pd.array(train.ids, dtype="string"),
            "subject": pd.array(train.subjects, dtype="string"),
            "n_synthetic_nearest": counts.astype(np.int64),
            "max_correlation": best,
        }
    )


def subject_rollup(
    train: Dataset, nearest: np.ndarray, max_corr: np.ndarray, flagged: np.ndarray
) -> pd.DataFrame:
    """One row per training subject, the riskiest first.

    Columns: ``subject``, ``n_items`` (training items of the subject), ``n_synthetic_matched`` (synthetic
    items whose nearest training item belongs to it), ``n_flagged``, ``max_correlation`` (NaN if never
    nearest), ``leaked`` (at least one flagged synthetic item has its nearest match in this subject).
    """
    items = train_item_counts(train, nearest, max_corr)
    ok = nearest >= 0
    subj_of = train.subjects
    flagged_subjects = pd.Series(subj_of[nearest[ok & flagged]], dtype="string").value_counts()
    grouped = items.groupby("subject", sort=True).agg(
        n_items=("train_id", "size"),
        n_synthetic_matched=("n_synthetic_nearest", "sum"),
        max_correlation=("max_correlation", "max"),
    )
    grouped["n_flagged"] = flagged_subjects.reindex(grouped.index).fillna(0).astype(np.int64)
    grouped["leaked"] = grouped["n_flagged"] > 0
    out = grouped.reset_index()[
        ["subject", "n_items", "n_synthetic_matched", "n_flagged", "max_correlation", "leaked"]
    ]
    out = out.sort_values(
        ["leaked", "max_correlation", "subject"],
        ascending=[False, False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    out["subject"] = out["subject"].astype("string")
    return out
