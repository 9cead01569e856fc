"""Precision, recall, density and coverage of a synthetic feature set (k-nearest-neighbour manifolds).

Naeem et al. 2020, "Reliable fidelity and diversity metrics for generative models", ICML (k = 5), building
on Kynkäänniemi et al. 2019 (precision and recall as k-NN ball coverage). With ``r_k(x)`` the distance of a
real item to its k-th nearest real neighbour:

- precision: share of synthetic items inside at least one real ball ``B(x, r_k(x))`` (fidelity);
- recall: share of real items inside at least one synthetic ball (diversity);
- density: mean number of real balls holding a synthetic item, divided by k (fidelity that rewards
  samples where real data is dense; about 1 for a set drawn like the real one, unbounded above);
- coverage: share of real items whose own ball holds at least one synthetic item (diversity, robust to
  outliers).

Same rules as the authors' ``prdc`` package (strict ``<``, the same neighbour count), tested equal to it
on the same features; comparisons that rounding could flip are decided on exact distances (a copy of a real
item lies exactly on some real items' k-NN spheres); computed in row blocks, never an N x M matrix at once.
"""

from __future__ import annotations

import numpy as np

from memscan.quality.distances import as_features, distance_blocks, kth_neighbour_distance, refine_near

NEAREST_K = 5


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = NEAREST_K) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake [M, D]`` against ``real [N, D]`` (k-NN radius ``k``)."""
    real, fake = as_features(real, "real features"), as_features(fake, "fake features")
    r_real = kth_neighbour_distance(real, k)  # [N]
    r_fake = kth_neighbour_distance(fake, k)  # [M]
    inside_count = np.zeros(len(fake), dtype=np.int64)  # real balls holding each synthetic item
    real_recalled = np.zeros(len(real), dtype=bool)
    real_covered = np.zeros(len(real), dtype=bool)
    for lo, d in distance_blocks(real, fake):  # d [rows of real, M]
        d = refine_near(d, real[lo : lo + len(d)], fake, r_real[lo : lo + len(d), None], r_fake[None, :])
        inside = d < r_real[lo : lo + len(d), None]
        inside_count += inside.sum(axis=0)
        real_recalled[lo : lo + len(d)] = (d < r_fake[None, :]).any(axis=1)
        real_covered[lo : lo + len(d)] = d.min(axis=1) < r_real[lo : lo + len(d)]
    return {
        "precision": float((inside_count > 0).mean()),
        "recall": float(real_recalled.mean()),
        "density": float(inside_count.mean() / k),
        "coverage": float(real_covered.mean()),
    }
