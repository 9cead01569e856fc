"""Fréchet distance between Gaussian fits of two feature sets, and its relative form.

FD (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS; the "FID" when the features are Inception-v3's):
``FD = ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.

``Tr (Σ₁Σ₂)^{1/2}`` is computed as the sum of square roots of the eigenvalues of the symmetric positive
semi-definite ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (same spectrum as ``Σ₁Σ₂``), in float64 with ``numpy.linalg.eigh``:
real by construction, no complex square root of a non-symmetric product. Tested against torchmetrics'
``FrechetInceptionDistance`` on the same features (tests/quality/test_metrics.py).

Relative FD (Woodland et al. 2023, "Feature extraction for generative medical imaging evaluation: new
evidence against an evolving trend", MICCAI 2024; arXiv 2023): ``FD(synthetic, train) / FD(held-out, train)``:
1 means "as far from the training set as new real patients"; it removes the encoder's scale, so
encoders can be compared, and says how far above the floor of real-data sampling noise a value is.
"""

from __future__ import annotations

import numpy as np

from memscan.quality.distances import as_features


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``x [N, D]``, N >= 2."""
    x = as_features(x)
    if len(x) < 2:
        raise ValueError(f"a covariance needs at least 2 items, got {len(x)}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_fits(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """FD between ``N(mu1, s1)`` and ``N(mu2, s2)`` (float64)."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(value, 0.0)  # a true distance is >= 0; rounding can leave -1e-12


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of features ``a [N, D]`` and ``b [M, D]``."""
    return frechet_from_fits(*gaussian_fit(a), *gaussian_fit(b))


def relative_frechet_distance(
    synthetic: np.ndarray, holdout: np.ndarray, train: np.ndarray
) -> dict[str, float]:
    """``fd`` = FD(synthetic, train), ``fd_holdout`` = FD(held-out, train) and ``fd_relative`` (their ratio).

    ``fd_relative`` is ``inf`` when the held-out set's FD is 0 and the synthetic one's is not.
    """
    fit_train = gaussian_fit(train)
    fd = frechet_from_fits(*gaussian_fit(synthetic), *fit_train)
    fd_hold = frechet_from_fits(*gaussian_fit(holdout), *fit_train)
    rel = fd / fd_hold if fd_hold > 0 else (float("inf") if fd > 0 else 1.0)
    return {"fd": fd, "fd_holdout": fd_hold, "fd_relative": rel}
