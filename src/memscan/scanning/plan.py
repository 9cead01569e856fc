"""Block planning: how many query and training items are held at once, from the memory budget."""

from __future__ import annotations

import numpy as np


def plan_blocks(n_train: int, n_query: int, d: int, itemsize: int, budget: int) -> tuple[int, int]:
    """Query and training block sizes (items) that keep the scan's memory under ``budget`` bytes.

    Per query row the engine holds the raw row, its bf16/float32 screen copy and stats; per training row
    the raw row, a float64 working row for normalization and the screen copy; plus one block of float32
    scores. Shares: queries 40%, training block 25%, scores 10%; the rest is headroom (Python, Parquet).

    Args:
        n_train: training items.
        n_query: items of the largest query set.
        d: feature row length.
        itemsize: bytes per stored value.
        budget: bytes.

    Returns:
        ``(query_block, train_block)``, each at least 1.
    """
    per_q = d * (itemsize + 4) + 64
    per_t = d * (itemsize + 8 + 4) + 64
    qb = max(1, min(n_query, int(0.40 * budget) // per_q))
    tb = max(1, min(n_train, int(0.25 * budget) // per_t))
    while qb * tb * 4 > 0.10 * budget and tb > 64:
        tb //= 2
    return qb, tb


def baseline_sample(n_train: int, n_items: int) -> np.ndarray:
    """Training positions ``[m]`` used for the train-vs-train baselines: evenly spread, deterministic."""
    if n_items >= n_train:
        return np.arange(n_train)
    return np.unique(np.linspace(0, n_train - 1, n_items).round().astype(np.int64))
