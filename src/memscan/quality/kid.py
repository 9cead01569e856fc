"""Kernel inception distance (KID): the unbiased squared MMD with a cubic polynomial kernel, over subsets.

Bińkowski et al. 2018, "Demystifying MMD GANs", ICLR: ``k(x, y) = (x·y / D + 1)³`` and the unbiased
estimator ``MMD²_u = mean_{i≠j} k(xᵢ,xⱼ) + mean_{i≠j} k(yᵢ,yⱼ) − 2 mean_{i,j} k(xᵢ,yⱼ)``, averaged over
``subsets`` random subsets of ``subset_size`` items of each set. Unlike FD it is unbiased, so values from
sets of different sizes are comparable, and it can be slightly negative when the sets match.

The spread of the subset estimates (``kid_std``, population std as in torchmetrics) is the standard error
of one subset-size estimate; the mean's own error is smaller but not ``std/√subsets`` (subsets overlap).
Tested against torchmetrics' ``KernelInceptionDistance`` on the same features (tests/quality).
Written here (not torchmetrics' class) for a seeded numpy generator and float64 throughout.
"""

from __future__ import annotations

import numpy as np

from memscan.quality.distances import as_features


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of ``x [m, D]`` and ``y [m, D]`` with the kernel ``(x·y/D + 1)³`` (float64)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m = len(x)
    n = len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """KID of ``fake [M, D]`` against ``real [N, D]``.

    Args:
        real: reference features (the training set).
        fake: features of the set assessed.
        subsets: number of random subset pairs.
        subset_size: items per subset, capped at ``min(N, M)`` (the cap is recorded in the result).
        seed: seed of the subsets.

    Returns:
        ``{"kid": mean, "kid_std": std over subsets, "kid_subsets": subsets, "kid_subset_size": size}``.
    """
    real, fake = as_features(real, "real features"), as_features(fake, "fake features")
    size = int(min(subset_size, len(real), len(fake)))
    if size < 2:
        raise ValueError(f"KID needs at least 2 items per set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        xr = real[rng.permutation(len(real))[:size]]
        xf = fake[rng.permutation(len(fake))[:size]]
        values[s] = polynomial_mmd2(xr, xf)
    return {
        "kid": float(values.mean()),
        "kid_std": float(values.std()),
        "kid_subsets": int(subsets),
        "kid_subset_size": size,
    }
