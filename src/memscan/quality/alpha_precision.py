"""α-precision, β-recall and authenticity (Alaa et al. 2022).

Alaa, van Breugel, Saveliev & van der Schaar 2022, "How faithful is your synthetic data? Sample-level
metrics for evaluating and auditing generative models", ICML. Computed on the encoder's features (the paper
first maps both sets with a one-class embedding trained on the real data; memscan's features already come
from an encoder of the real data, so the mean of the real features is the centre and distances are
Euclidean).

- α-precision curve ``P(α)``: share of synthetic items inside the ball around the real centre that holds
  the fraction α of the real items (radius = α-quantile of the real items' distances to the centre).
  Ideal: ``P(α) = α``.
- β-recall curve ``R(β)``: share of real items whose nearest synthetic item lies within the real item's
  nearest-real-neighbour distance *and* inside the β-quantile ball of the synthetic items (around the
  synthetic centre). Ideal: ``R(β) = β``.
- ``alpha_precision`` = ``1 − 2 ∫|P(α) − α| dα`` and ``beta_recall`` = ``1 − 2 ∫|R(β) − β| dβ`` (the
  paper's integrated IP_α and IR_β), on ``n_steps`` evenly spaced levels in [0, 1] (the authors' 30).
  1 is ideal; lower means mass outside the real support (precision) or real modes missed (recall).
- ``authenticity``: share of synthetic items that are not closer to their nearest real item than that
  real item is to its own nearest other real item (the paper's Section 3.3 hypothesis test with the
  simple threshold). A copy of a training item has distance 0 and is never authentic; a new real patient
  is authentic unless the training set is sparser around it than he is from it.
  Note: the authors' released code compares the arrays per *real* item with mismatched indices; this
  module follows the paper's per-synthetic-item definition.
"""

from __future__ import annotations

import numpy as np

from memscan.quality.distances import as_features, nearest, nearest_other

N_STEPS = 30


def alpha_beta_authenticity(
    real: np.ndarray, fake: np.ndarray, *, n_steps: int = N_STEPS
) -> dict[str, float]:
    """α-precision, β-recall and authenticity of ``fake [M, D]`` against ``real [N, D]`` (N >= 2, M >= 1)."""
    real, fake = as_features(real, "real features"), as_features(fake, "fake features")
    alphas = np.linspace(0.0, 1.0, n_steps)
    centre = real.mean(axis=0)
    real_radii = np.quantile(np.linalg.norm(real - centre, axis=1), alphas)
    fake_to_centre = np.linalg.norm(fake - centre, axis=1)
    precision_curve = (fake_to_centre[None, :] <= real_radii[:, None]).mean(axis=1)

    real_nn, _ = nearest_other(real)  # [N] each real item's nearest other real item
    real_to_fake, fake_idx = nearest(real, fake)  # [N] each real item's nearest synthetic item
    fake_centre = fake.mean(axis=0)
    closest_fake_to_centre = np.linalg.norm(fake[fake_idx] - fake_centre, axis=1)
    fake_radii = np.quantile(closest_fake_to_centre, alphas)
    within = real_to_fake <= real_nn
    recall_curve = (within[None, :] & (closest_fake_to_centre[None, :] <= fake_radii[:, None])).mean(axis=1)

    step = alphas[1] - alphas[0]
    fake_to_real, real_idx = nearest(fake, real)  # [M]
    authentic = fake_to_real > real_nn[real_idx]
    return {
        "alpha_precision": float(1.0 - 2.0 * np.abs(precision_curve - alphas).sum() * step),
        "beta_recall": float(1.0 - 2.0 * np.abs(recall_curve - alphas).sum() * step),
        "authenticity": float(authentic.mean()),
    }
