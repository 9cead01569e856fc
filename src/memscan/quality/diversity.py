"""Diversity of an image set: mean pairwise MS-SSIM within the set (MONAI's ``MultiScaleSSIMMetric``).

MS-SSIM: Wang, Simoncelli & Bovik 2003, "Multiscale structural similarity for image quality assessment".
Used as a diversity measure of generated sets by Odena et al. 2017 (AC-GAN) and in medical image synthesis
(e.g. Pinaya et al. 2022, brain latent diffusion): a set whose random pairs are very similar (MS-SSIM near
1) lacks diversity (mode collapse or many copies). Read it against the same number within held-out real
data (``ms_ssim_holdout``): synthetic well above held-out = less diverse than real patients.

Pairs: ``n_pairs`` distinct unordered pairs of distinct items drawn with a seeded generator (every pair
when the set has fewer). Intensities are mapped with one linear map (from the training set, the same for
every set) to about [0, 1]; ``data_range`` is 1.

Small images: the standard settings (5 scales, Gaussian kernel 11, σ 1.5, weights 0.0448, 0.2856, 0.3001,
0.2363, 0.1333) need a side of at least 161 px in MONAI (its rule: ``side // (scales − 1)² > kernel − 1``).
For smaller images :func:`ms_ssim_settings` keeps σ = 1.5 and picks the most scales, then the largest odd
kernel from 11 down to 7 (7 still spans ±2σ), that satisfy MONAI's rule and leave the coarsest scale
(``side // 2^(scales − 1)``) at least one kernel wide, and keeps the first weights of
the standard five renormalised to sum 1 (the coarsest scales are the ones that no longer fit):
64 px → 4 scales, kernel 7; 128 px → 5 scales, kernel 7; 32 px → 3 scales, kernel 7; ≥ 176 px the
standard settings exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SIGMA = 1.5
N_PAIRS = 200


def ms_ssim_settings(spatial_shape: tuple[int, ...]) -> dict:
    """Kernel size and scale weights that MONAI accepts for images of ``spatial_shape`` (see the module)."""
    side = min(int(s) for s in spatial_shape)
    for levels in range(len(STANDARD_WEIGHTS), 0, -1):
        div = max(1, (levels - 1) ** 2)
        for kernel in (11, 9, 7):
            # MONAI's own check, and the coarsest scale (side halved levels - 1 times) must hold the kernel
            if side // div > kernel - 1 and side // 2 ** (levels - 1) >= kernel:
                w = np.array(STANDARD_WEIGHTS[:levels], dtype=np.float64)
                weights = (
                    STANDARD_WEIGHTS if levels == len(STANDARD_WEIGHTS) else tuple((w / w.sum()).tolist())
                )
                return {"kernel_size": kernel, "kernel_sigma": SIGMA, "weights": weights}
    raise ValueError(
        f"images of spatial shape {tuple(spatial_shape)} are too small for MS-SSIM (need >= 8 px)"
    )


def sample_pairs(n: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """``[P, 2]`` distinct unordered pairs ``i < j`` of ``range(n)``: all of them if there are at most
    ``n_pairs``, else ``n_pairs`` drawn without replacement (seeded)."""
    total = n * (n - 1) // 2
    if total == 0:
        return np.empty((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed)
    if total <= n_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1).astype(np.int64)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n_pairs:
        a = rng.integers(0, n, size=2 * (n_pairs - len(chosen)))
        b = rng.integers(0, n, size=len(a))
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if x != y and len(chosen) < n_pairs:
                chosen.add((min(x, y), max(x, y)))
    return np.array(sorted(chosen), dtype=np.int64)


def pairwise_ms_ssim(
    images: np.ndarray,
    pairs: np.ndarray,
    *,
    scale: tuple[float, float] = (0.0, 1.0),
    batch: int = 64,
) -> np.ndarray:
    """MS-SSIM of each pair of ``images [N, C, *S]`` (``pairs [P, 2]``), channels averaged → ``[P]``.

    Args:
        images: the set (any real dtype).
        pairs: item index pairs.
        scale: ``(lo, hi)``: intensities become ``(x − lo) / (hi − lo)`` before the metric (data range 1).
        batch: pairs per MONAI call.
    """
    lo, hi = float(scale[0]), float(scale[1])
    if not hi > lo:
        raise ValueError(f"intensity scale needs hi > lo, got {scale}")
    spatial = images.shape[2:]
    settings = ms_ssim_settings(spatial)
    metric = MultiScaleSSIMMetric(spatial_dims=len(spatial), data_range=1.0, reduction="none", **settings)
    out = np.empty(len(pairs))
    for s in range(0, len(pairs), batch):
        p = pairs[s : s + batch]
        a = torch.from_numpy((images[p[:, 0]].astype(np.float32) - lo) / (hi - lo))
        b = torch.from_numpy((images[p[:, 1]].astype(np.float32) - lo) / (hi - lo))
        v = metric(a, b)  # [pairs, 1]: MONAI averages the channels
        out[s : s + len(p)] = v.reshape(len(p), -1).mean(dim=1).double().numpy()
    return out


def mean_pairwise_ms_ssim(
    images: np.ndarray, *, n_pairs: int = N_PAIRS, seed: int = 0, scale: tuple[float, float] = (0.0, 1.0)
) -> dict:
    """Mean (and std) MS-SSIM over a seeded sample of pairs within ``images [N, C, *S]`` (N >= 2)."""
    pairs = sample_pairs(len(images), n_pairs, seed)
    if len(pairs) == 0:
        raise ValueError("MS-SSIM diversity needs at least 2 images")
    values = pairwise_ms_ssim(images, pairs, scale=scale)
    return {"mean": float(values.mean()), "std": float(values.std()), "n_pairs": int(len(pairs))}
