"""The candidate line: which screened pairs can still enter the top-k (with its proof)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _thresholds(
    v_k: np.ndarray,
    s_k: np.ndarray,
    eps: float | np.ndarray,
    q_valid: np.ndarray,
    floor: float | np.ndarray = -2.0,
) -> np.ndarray:
    """Per-query candidate line ``max(v_k - ε, s_k - 2ε)`` (float64 ``[nq]``).

    Proof that no item of the final top-k is missed. Let r_j be the exact value (re-rank routine) and
    S_j the screened value of item j, ``|S_j - r_j| <= ε``. Suppose j ends in the final top-k.
    (a) The final k-th value V_k is at least the running one v_k (the running top-k only improves),
    and r_j >= V_k, so ``S_j >= r_j - ε >= v_k - ε``. (b) The k items of the block with the largest
    screened values have ``r >= s_k - ε``. If ``S_j < s_k - 2ε``, j is not among them and
    ``r_j <= S_j + ε < s_k - ε``, so k items of the block are strictly better than j and j cannot be
    in the final top-k. Hence ``S_j >= max(v_k - ε, s_k - 2ε)``; ties (``=``) are kept, and the lower
    index rule is applied on exact values in the merge. Valid correlations are ≥ -1 - ε, so clamping
    the line at ``floor`` = -2 loses nothing (and excludes the ``-inf`` of invalid items). ``eps`` may
    be one bound per query (the integer path's ranking, whose units are correlation · √V_q; its floor is
    then ``-2 √V_q - 2ε``).
    """
    with np.errstate(invalid="ignore"):
        thr = np.maximum(v_k - eps, s_k - 2.0 * eps)
    thr = np.maximum(thr, floor)
    thr[~q_valid] = np.inf
    return thr


def _round_down_f32(t: np.ndarray) -> np.ndarray:
    """float32 thresholds t32 ≤ t (so ``S >= t32`` keeps every S with ``S >= t``)."""
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32
