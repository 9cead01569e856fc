from __future__ import annotations

import numpy as np
import pytest

from memscan.audit.calibrate import benjamini_hochberg, calibrate, empirical_pvalues
from memscan.errors import InputError


def test_empirical_pvalues_with_plus_one_correction():
    null = np.array([0.5, 0.6, 0.7, 0.8, np.nan])
    p = empirical_pvalues(null, np.array([0.9, 0.8, 0.65, 0.1, np.nan]))
    np.testing.assert_allclose(p[:4], [1 / 5, 2 / 5, 3 / 5, 5 / 5])
    assert np.isnan(p[4])
    with pytest.raises(InputError, match="no usable"):
        empirical_pvalues(np.array([np.nan]), np.array([0.5]))


def test_benjamini_hochberg_against_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    rejected, p_star = benjamini_hochberg(p, 0.05)
    # m = 4: sorted 0.01 <= 0.0125, 0.03 <= 0.025? no, 0.04 <= 0.0375? no -> only the first
    assert rejected.tolist() == [True, False, False, False, False] and p_star == 0.01
    rejected, p_star = benjamini_hochberg(np.array([0.01, 0.02, 0.03, 0.04]), 0.05)
    assert rejected.all() and p_star == 0.04  # step-up: the last one passes 0.04 <= 0.05
    rejected, p_star = benjamini_hochberg(np.array([0.5, 0.9]), 0.05)
    assert not rejected.any() and p_star == 0.0


def test_planted_copies_flagged_fresh_subjects_not():
    rng = np.random.default_rng(0)
    null = rng.normal(0.85, 0.03, size=400).clip(-1, 1)  # held-out real images
    fresh = rng.normal(0.85, 0.03, size=200).clip(-1, 1)  # new real-like synthetic images
    copies = rng.uniform(0.985, 1.0, size=20)  # memorized copies
    scores = np.concatenate([fresh, copies])
    p, flagged, cal = calibrate(null, scores, method="fdr", alpha=0.05)
    assert flagged[200:].all()
    assert flagged[:200].sum() <= 2
    assert cal.threshold is not None and cal.threshold > null.max() - 0.02
    assert cal.n_null == 400 and cal.null_quantiles["max"] == pytest.approx(null.max())
    _, flagged_q, cal_q = calibrate(null, scores, method="quantile", alpha=0.05)
    assert flagged_q[200:].all() and cal_q.p_threshold == 0.05
    assert 2 <= flagged_q[:200].sum() <= 25  # about 5% of fresh images pass a per-image 5% level


def test_small_null_note_and_validation():
    _, flagged, cal = calibrate(np.array([0.5, 0.6]), np.array([0.99] + [0.1] * 99), alpha=0.05)
    assert not flagged.any() and cal.threshold is None and "smallest possible p-value" in cal.note
    with pytest.raises(InputError):
        calibrate(np.array([0.5]), np.array([0.5]), method="bonferroni")
    with pytest.raises(InputError):
        calibrate(np.array([0.5]), np.array([0.5]), alpha=1.5)
