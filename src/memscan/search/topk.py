"""ONE top-k selection with ONE tie rule: values descending, equal values to the LOWER train index.

Every top-k in memscan goes through :func:`select_topk`: the engine's running top-k
(:func:`merge_running`), the merge of per-shard lists from a cluster (:func:`merge_topk`) and the merge of
query variants (:func:`memscan.search.variants.merge_variants`), so a tie can never be broken two ways.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RunningTopK", "merge_running", "merge_topk", "select_topk"]


def select_topk(
    q: np.ndarray,
    v: np.ndarray,
    t: np.ndarray,
    nq: int,
    k: int,
    *,
    fill: float = np.nan,
    payload: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The top ``k`` of flat (query, value, train index) triples, per query.

    Args:
        q: int ``[p]`` query rows in ``0 .. nq - 1``.
        v: float64 ``[p]`` values.
        t: int64 ``[p]`` train indices (each (q, t) at most once).
        nq: number of queries.
        k: neighbours kept.
        fill: value where a query has fewer than ``k`` triples (index ``-1``).
        payload: optional ``[p]`` array carried along with each triple (e.g. the variant that found it).

    Returns:
        ``(values [nq, k] float64, indices [nq, k] int64, payload [nq, k] or None)``, each row by value
        descending, equal values by train index ascending; ``payload`` entries without a triple are its
        dtype's zero (``None`` for objects).
    """
    order = np.lexsort((t, -v, q))
    q_s, v_s, t_s = q[order], v[order], t[order]
    starts = np.searchsorted(q_s, np.arange(nq))
    rank = np.arange(len(q_s)) - starts[q_s]
    keep = rank < k
    values = np.full((nq, k), fill, dtype=np.float64)
    indices = np.full((nq, k), -1, dtype=np.int64)
    values[q_s[keep], rank[keep]] = v_s[keep]
    indices[q_s[keep], rank[keep]] = t_s[keep]
    carried = None
    if payload is not None:
        carried = (
            np.full((nq, k), None, dtype=object)
            if payload.dtype == object
            else np.zeros((nq, k), payload.dtype)
        )
        carried[q_s[keep], rank[keep]] = payload[order][keep]
    return values, indices, carried


def merge_running(
    best_v: np.ndarray, best_i: np.ndarray, qi: np.ndarray, ti: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge new exact pairs into the engine's running top-k (``-inf`` / ``-1`` where none yet).

    Args:
        best_v, best_i: running ``[nq, k]`` values (float64) and train indices (int64).
        qi, ti, vals: the new pairs ``[p]`` (query row, train index, exact value), none already in the
            running lists.

    Returns:
        The new ``(best_v, best_i)`` (copies; only the rows of ``qi`` change).
    """
    nq, k = best_v.shape
    if len(qi) == 0:
        return best_v, best_i
    rows = np.unique(qi)
    sub_i = best_i[rows]
    have = sub_i >= 0
    q_all = np.concatenate([np.repeat(np.arange(len(rows)), k)[have.ravel()], np.searchsorted(rows, qi)])
    v_all = np.concatenate([best_v[rows][have], vals])
    i_all = np.concatenate([sub_i[have], ti])
    nv, ni, _ = select_topk(q_all, v_all, i_all, len(rows), k, fill=-np.inf)
    best_v = best_v.copy()
    best_i = best_i.copy()
    best_v[rows] = nv
    best_i[rows] = ni
    return best_v, best_i


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top-k from per-shard top-k lists (disjoint train indices), the one tie rule.

    Args:
        parts: ``(values [nq, k_i], indices [nq, k_i])`` per shard; index ``-1`` / value ``NaN`` = none.
        k: neighbours kept.

    Returns:
        ``(values [nq, k] float64, indices [nq, k] int64)``, ``NaN`` / ``-1`` where fewer than k exist.
    """
    values = np.concatenate([np.asarray(v, dtype=np.float64) for v, _ in parts], axis=1)
    indices = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    q, col = np.nonzero(indices >= 0)
    top_v, top_i, _ = select_topk(q, values[q, col], indices[q, col], values.shape[0], k)
    return top_v, top_i


class RunningTopK:
    """The running exact top-k of ``nq`` queries over a streamed training set (one accumulator, one rule).

    Attributes:
        values: float64 ``[nq, k]``, ``-inf`` where no item is known yet.
        indices: int64 ``[nq, k]``, ``-1`` where no item is known yet.
        n_pairs: exact pairs added so far.
    """

    def __init__(self, nq: int, k: int) -> None:
        self.values = np.full((nq, k), -np.inf)
        self.indices = np.full((nq, k), -1, dtype=np.int64)
        self.n_pairs = 0

    def kth(self) -> np.ndarray:
        """Each query's running k-th exact value ``[nq]`` (``-inf`` while fewer than k are known)."""
        return self.values[:, -1]

    def add(self, qi: np.ndarray, ti: np.ndarray, vals: np.ndarray) -> None:
        """Add exact pairs (query row, global train index, value), none already present."""
        self.n_pairs += len(qi)
        self.values, self.indices = merge_running(self.values, self.indices, qi, ti, vals)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values [nq, k] with NaN where no match, indices [nq, k] with -1)``."""
        return np.where(self.indices >= 0, self.values, np.nan), self.indices
