"""Calibration of the robust score and the combined verdict of the two tests.

Robust p-values: the held-out items (real people never trained on) go through the *identical* robust
pipeline (same encoder, candidates, registration); their robust scores are the null sample, and each
synthetic item's p-value is the empirical ``(1 + #{null >= score}) / (n_null + 1)``
(:func:`memscan.audit.calibrate.empirical_pvalues`). Under the null (the synthetic item is exchangeable
with the held-out items) this p-value is valid: ``P(p <= a) <= a`` (a conformal p-value; Bates et al.
2023, "Testing for outliers with conformal p-values", Ann. Statist. 51:149).

Combined verdict (rule): per item, ``p_comb = min(1, 2 · min(p_pixel, p_robust))`` — a Bonferroni
combination, valid whatever the dependence between the two tests, because
``P(min(p1, p2) <= a/2) <= P(p1 <= a/2) + P(p2 <= a/2) <= a``. Then Benjamini–Hochberg at ``alpha``
over the items' ``p_comb``. An item with one p-value missing keeps the factor 2 on the other (still
valid); with both missing it has no p-value and is never flagged (it is reported as unscored, not as
"not a copy").

What is proven and what is not: each ``p_comb`` is valid exactly as above. BH controls the FDR at
``alpha`` under independence or positive regression dependence (PRDS) of the p-values; conformal
p-values sharing one null sample are PRDS (Bates et al. 2023, Thm. 2), and their minimum over two
tests is a monotone function of both, but PRDS of the combination is not proven here — the false
positive rate is measured instead (``benchmarks/bench_robust.py``).
"""

from __future__ import annotations

import numpy as np

from memscan.audit.calibrate import benjamini_hochberg, empirical_pvalues
from memscan.core.validate import check_float

__all__ = ["combined_pvalues", "combined_verdict", "robust_pvalues"]


def robust_pvalues(null_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Empirical p-values of robust ``scores [n]`` against the held-out ``null_scores [m]``.

    ``-inf`` means "could not be scored" (no candidate registered with enough overlap, or a constant
    item). Such a held-out item is left out of the null and such a synthetic item gets NaN — never a
    p-value that would call it "not a copy"; the combined verdict then rests on its pixel p-value alone.
    """
    null = np.asarray(null_scores, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    p = empirical_pvalues(null[np.isfinite(null)], np.where(np.isfinite(s), s, np.nan))
    return p


def combined_pvalues(p_pixel: np.ndarray, p_robust: np.ndarray) -> np.ndarray:
    """``min(1, 2 · min(p_pixel, p_robust))`` per item (NaN ignored; both NaN → NaN)."""
    a = np.asarray(p_pixel, dtype=np.float64)
    b = np.asarray(p_robust, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"p-value arrays differ in shape: {a.shape} and {b.shape}")
    m = np.fmin(a, b)  # fmin ignores a NaN on one side
    return np.minimum(1.0, 2.0 * m)


def combined_verdict(
    p_pixel: np.ndarray, p_robust: np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, float]:
    """The combined flags: BH at ``alpha`` on :func:`combined_pvalues`.

    Returns:
        ``(p_combined [n], flagged bool [n], p_star)`` (``p_star = 0`` when nothing is flagged).
    """
    check_float(alpha, "alpha", low=0.0, high=1.0, open_low=True)
    p = combined_pvalues(p_pixel, p_robust)
    flagged, p_star = benjamini_hochberg(p, alpha)
    return p, flagged, p_star
