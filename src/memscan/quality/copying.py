"""The data-copying test C_T (Meehan, Chaudhuri & Dasgupta 2020).

Meehan et al. 2020, "A non-parametric test to detect data-copying in generative models", AISTATS.
Idea: a model that copies produces samples *closer* to the training set than new real data is. Partition
the feature space into cells by k-means fitted on the training set (the test must be local: a model can
copy in one region and under-fit in another). In each cell π with training items T_π, held-out (test)
items P_π and synthetic items Q_π, compare the distances to the nearest training item of the same cell,
``L(Q_π)`` against ``L(P_π)``, with the Mann-Whitney U statistic of ``L(Q_π)`` and its normal z-score

    Z_U(π) = (U − (m n / 2 − 1/2)) / sqrt(m n (m + n + 1) / 12)     (m = |Q_π|, n = |P_π|; 1/2 continuity)

and average over the cells holding at least ``min_synthetic`` synthetic items (the paper's τ: cells the
model rarely visits say nothing), weighted by the share of held-out items in the cell:
``C_T = Σ w_π Z_U(π) / Σ w_π``. ``C_T ≪ 0``: data-copying (synthetic items hug training items);
``≈ 0``: as close as new real data; ``≫ 0``: under-fitting.

p-value (one-sided, copying): under the null each cell's ``Z_U`` is approximately standard normal and the
cells hold disjoint items, so ``C_T ~ N(0, Σ w_π² / (Σ w_π)²)``; ``p = Φ(C_T (Σ w_π) / sqrt(Σ w_π²))``.
The paper reports C_T against fixed cut-offs; the p-value is memscan's reading of the same statistic.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.cluster.vq import kmeans2, vq
from scipy.stats import mannwhitneyu, norm

from memscan.quality.distances import as_features, nearest

#: The paper's τ expressed as a count: cells with fewer synthetic items are left out.
MIN_SYNTHETIC_PER_CELL = 20


def z_u(l_synthetic: np.ndarray, l_test: np.ndarray) -> float:
    """The z-score of the Mann-Whitney U of ``l_synthetic`` against ``l_test`` (continuity-corrected)."""
    m, n = len(l_synthetic), len(l_test)
    u = float(mannwhitneyu(l_synthetic, l_test, alternative="less").statistic)
    return (u - (m * n / 2.0 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12.0)


def fit_cells(train: np.ndarray, n_cells: int, *, seed: int = 0) -> np.ndarray:
    """k-means centroids ``[n_cells, D]`` of the training features (k-means++ start, seeded)."""
    train = as_features(train, "training features")
    n_cells = int(min(n_cells, len(train)))
    if n_cells < 1:
        raise ValueError("C_T needs at least one cell")
    if n_cells == 1:
        return train.mean(axis=0, keepdims=True)
    with warnings.catch_warnings():  # an empty cluster only leaves an empty cell, which the test skips
        warnings.simplefilter("ignore", UserWarning)
        centroids, _ = kmeans2(train, n_cells, minit="++", seed=np.random.default_rng(seed))
    return centroids


def data_copying_test(
    train: np.ndarray,
    test: np.ndarray,
    synthetic: np.ndarray,
    *,
    n_cells: int,
    min_synthetic: int = MIN_SYNTHETIC_PER_CELL,
    seed: int = 0,
    top: int = 5,
) -> dict:
    """C_T of ``synthetic [M, D]`` with the held-out ``test [N, D]`` as the test sample, cells from ``train``.

    Returns:
        ``ct_statistic``, ``ct_p_value`` (NaN when no cell qualifies), ``ct_n_cells``, ``ct_cells_used``
        and ``ct_copying_cells``: the ``top`` cells with the lowest ``Z_U`` (``cell``, ``z_u``,
        ``n_train``, ``n_holdout``, ``n_synthetic``), the regions where the model copies most.
    """
    train = as_features(train, "training features")
    test = as_features(test, "held-out features")
    synthetic = as_features(synthetic, "synthetic features")
    centroids = fit_cells(train, n_cells, seed=seed)
    cells_t, _ = vq(train, centroids)
    cells_p, _ = vq(test, centroids)
    cells_q, _ = vq(synthetic, centroids)
    rows = []
    for c in range(len(centroids)):
        t_c, p_c, q_c = train[cells_t == c], test[cells_p == c], synthetic[cells_q == c]
        if len(t_c) == 0 or len(p_c) == 0 or len(q_c) < max(1, min_synthetic):
            continue
        l_q, _ = nearest(q_c, t_c)
        l_p, _ = nearest(p_c, t_c)
        rows.append(
            {
                "cell": c,
                "z_u": float(z_u(l_q, l_p)),
                "n_train": int(len(t_c)),
                "n_holdout": int(len(p_c)),
                "n_synthetic": int(len(q_c)),
            }
        )
    out: dict = {
        "ct_n_cells": int(len(centroids)),
        "ct_cells_used": len(rows),
        "ct_min_synthetic": min_synthetic,
    }
    if not rows:
        out.update(ct_statistic=float("nan"), ct_p_value=float("nan"), ct_copying_cells=[])
        return out
    w = np.array([r["n_holdout"] for r in rows], dtype=np.float64) / len(test)
    z = np.array([r["z_u"] for r in rows])
    stat = float((w * z).sum() / w.sum())
    out["ct_statistic"] = stat
    out["ct_p_value"] = float(norm.cdf(stat * w.sum() / np.sqrt((w**2).sum())))
    out["ct_copying_cells"] = sorted(rows, key=lambda r: r["z_u"])[:top]
    return out
