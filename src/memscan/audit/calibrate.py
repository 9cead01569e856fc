"""Calibrated flags: held-out real images give the null distribution of "a new real patient".

For a held-out image (a real patient never used for training), its maximum correlation with the training
set says how similar a *new* real image naturally is to the training set. A synthetic image that is more
similar than (almost) every held-out image is suspicious. This is the data-copying logic of Meehan et
al. 2020 ("A non-parametric test to detect data-copying in generative models", AISTATS) applied per
image, with empirical p-values (the +1 correction of Phipson & Smyth 2010, "Permutation p-values should
never be zero") and Benjamini–Hochberg control of the false discovery rate (Benjamini & Hochberg 1995,
JRSS-B 57:289).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memscan.errors import InputError

METHODS = ("fdr", "quantile")


def empirical_pvalues(null: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``p = (1 + #{null >= s}) / (n_null + 1)`` for every score (NaN scores get NaN).

    Args:
        null: ``[n_null]`` max correlations of held-out images (NaN entries are ignored).
        scores: ``[n]`` max correlations of synthetic images.

    Returns:
        float64 ``[n]`` p-values in ``[1 / (n_null + 1), 1]``.
    """
    null = np.sort(np.asarray(null, dtype=np.float64)[~np.isnan(null)])
    if null.size == 0:
        raise InputError("the held-out set gave no usable correlation (all items excluded)")
    scores = np.asarray(scores, dtype=np.float64)
    at_least = null.size - np.searchsorted(null, scores, side="left")
    p = (1.0 + at_least) / (null.size + 1.0)
    p[np.isnan(scores)] = np.nan
    return p


def benjamini_hochberg(p: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Benjamini–Hochberg step-up: reject the hypotheses with p ≤ p*, the largest p_(i) ≤ i α / m.

    NaN p-values are never rejected and do not count in m.

    Returns:
        ``(rejected bool [n], p_star)``; ``p_star = 0.0`` when nothing is rejected.
    """
    p = np.asarray(p, dtype=np.float64)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return np.zeros(p.shape, dtype=bool), 0.0
    ps = np.sort(p[ok])
    below = ps <= alpha * np.arange(1, m + 1) / m
    if not below.any():
        return np.zeros(p.shape, dtype=bool), 0.0
    p_star = float(ps[np.flatnonzero(below).max()])
    return ok & (np.nan_to_num(p, nan=np.inf) <= p_star), p_star


@dataclass(frozen=True)
class Calibration:
    """Flags and the numbers behind them (saved in ``summary.json`` under ``calibration``)."""

    method: str
    alpha: float
    n_null: int
    p_threshold: float
    threshold: float | None
    null_quantiles: dict[str, float] = field(default_factory=dict)
    min_p_value: float = 1.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(
    null: np.ndarray, scores: np.ndarray, *, method: str = "fdr", alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, Calibration]:
    """p-values and flags of synthetic ``scores`` against the held-out ``null``.

    Args:
        null: ``[n_null]`` max correlations of held-out images with the training set.
        scores: ``[n]`` max correlations of synthetic images with the training set.
        method: ``fdr`` (Benjamini–Hochberg at level ``alpha``) or ``quantile`` (flag p ≤ alpha, i.e.
            above the held-out (1 - alpha) quantile; controls the per-image false positive rate).
        alpha: the FDR level or the per-image level.

    Returns:
        ``(p_values [n], flagged bool [n], Calibration)``. ``threshold`` is the lowest flagged correlation
        (None when nothing is flagged).
    """
    if method not in METHODS:
        raise InputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"the calibration level must be in (0, 1), got {alpha}")
    p = empirical_pvalues(null, scores)
    if method == "fdr":
        flagged, p_star = benjamini_hochberg(p, alpha)
    else:
        flagged = np.nan_to_num(p, nan=np.inf) <= alpha
        p_star = alpha
    clean = np.asarray(null, dtype=np.float64)
    clean = clean[~np.isnan(clean)]
    quantiles = {f"q{int(q * 100)}": float(np.quantile(clean, q)) for q in (0.5, 0.9, 0.95, 0.99)}
    quantiles["max"] = float(clean.max())
    min_p = 1.0 / (clean.size + 1.0)
    note = ""
    m = int((~np.isnan(p)).sum())
    if method == "fdr" and min_p > alpha / max(1, m):
        needed = int(np.ceil(min_p * m / alpha))
        note = (
            f"with {clean.size} held-out images the smallest possible p-value is {min_p:.3g}: at FDR "
            f"{alpha} over {m} synthetic images, copies are flagged only when at least {needed} of them "
            "exceed every held-out image; use more held-out images to detect isolated copies"
        )
    threshold = float(np.min(np.asarray(scores)[flagged])) if flagged.any() else None
    cal = Calibration(
        method=method,
        alpha=float(alpha),
        n_null=int(clean.size),
        p_threshold=float(p_star),
        threshold=threshold,
        null_quantiles=quantiles,
        min_p_value=min_p,
        note=note,
    )
    return p, flagged, cal
