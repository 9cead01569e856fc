"""Fixtures of the quality tests (helpers in quality_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from quality_helpers import RandomConvEncoder, phantom_slices


@pytest.fixture(scope="session")
def encoder() -> RandomConvEncoder:
    return RandomConvEncoder()


@pytest.fixture(scope="session")
def slice_sets() -> dict[str, np.ndarray]:
    """Disjoint phantom subjects: train (10), held-out (8), fresh (8); copies of training slices; noise."""
    train = phantom_slices(range(0, 10))
    holdout = phantom_slices(range(10, 18))
    fresh = phantom_slices(range(18, 26))
    rng = np.random.default_rng(0)
    copies = train[rng.choice(len(train), len(holdout), replace=False)]
    noise = rng.random(holdout.shape).astype(np.float32)
    return {"train": train, "holdout": holdout, "fresh": fresh, "copies": copies, "noise": noise}
