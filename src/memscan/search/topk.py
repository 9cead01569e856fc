"""ONE running top-k merge with ONE tie rule: values descending, ties to the LOWER train index."""

from __future__ import annotations

import numpy as np


def merge_topk(
    best_v: np.ndarray, best_i: np.ndarray, qi: np.ndarray, ti: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge new exact pairs into the running top-k (values desc, ties → lower train index)."""
    nq, k = best_v.shape
    if len(qi) == 0:
        return best_v, best_i
    rows = np.unique(qi)
    sub_v = best_v[rows]
    sub_i = best_i[rows]
    local = np.searchsorted(rows, qi)
    have = sub_i >= 0
    q_all = np.concatenate([np.repeat(np.arange(len(rows)), k)[have.ravel()], local])
    v_all = np.concatenate([sub_v[have], vals])
    i_all = np.concatenate([sub_i[have], ti])
    order = np.lexsort((i_all, -v_all, q_all))
    q_s, v_s, i_s = q_all[order], v_all[order], i_all[order]
    starts = np.searchsorted(q_s, np.arange(len(rows)))
    rank = np.arange(len(q_s)) - starts[q_s]
    keep = rank < k
    nv = np.full((len(rows), k), -np.inf)
    ni = np.full((len(rows), k), -1, dtype=np.int64)
    nv[q_s[keep], rank[keep]] = v_s[keep]
    ni[q_s[keep], rank[keep]] = i_s[keep]
    best_v = best_v.copy()
    best_i = best_i.copy()
    best_v[rows] = nv
    best_i[rows] = ni
    return best_v, best_i
