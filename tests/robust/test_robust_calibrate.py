"""Robust p-values and the combined verdict (Bonferroni over the two tests, then BH)."""

from __future__ import annotations

import numpy as np
import pytest

from memscan.audit.calibrate import benjamini_hochberg
from memscan.errors import InputError
from memscan.robust.calibrate import combined_pvalues, combined_verdict, robust_pvalues
from memscan.robust.candidates import cosine_topk, cosine_vectors


def test_combined_pvalues_rule_and_missing_values():
    a = np.array([0.01, 0.4, np.nan, np.nan, 0.9])
    b = np.array([0.03, 0.1, 0.2, np.nan, 0.8])
    got = combined_pvalues(a, b)
    np.testing.assert_array_equal(got[[0, 1, 2, 4]], [0.02, 0.2, 0.4, 1.0])
    assert np.isnan(got[3])
    with pytest.raises(ValueError):
        combined_pvalues(a, b[:3])


def test_combined_verdict_is_bh_on_the_combined_pvalues():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=50) ** 3, rng.uniform(size=50) ** 3
    p, flagged, p_star = combined_verdict(a, b, 0.1)
    ref, ref_star = benjamini_hochberg(np.minimum(1, 2 * np.minimum(a, b)), 0.1)
    np.testing.assert_array_equal(flagged, ref)
    assert p_star == ref_star and flagged.any()
    with pytest.raises(InputError):
        combined_verdict(a, b, 0.0)


def test_combined_pvalue_is_valid_under_the_null():
    """Exchangeable null: P(p_comb <= a) <= a, for two strongly dependent tests (Monte Carlo)."""
    rng = np.random.default_rng(1)
    n_null, trials, alpha = 99, 4000, 0.1
    hits = 0
    for _ in range(trials):
        z = rng.normal(size=n_null + 1)
        s1 = z + 0.3 * rng.normal(size=n_null + 1)  # two correlated scores of the same items
        s2 = z + 0.3 * rng.normal(size=n_null + 1)
        p1 = robust_pvalues(s1[:-1], s1[-1:])
        p2 = robust_pvalues(s2[:-1], s2[-1:])
        hits += combined_pvalues(p1, p2)[0] <= alpha
    rate = hits / trials
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_robust_pvalues_leave_unscored_items_unscored():
    null = np.array([0.5, 0.6, -np.inf, 0.7])
    p = robust_pvalues(null, np.array([0.9, 0.65, -np.inf, np.nan]))
    np.testing.assert_allclose(p[:2], [1 / 4, 2 / 4])  # the unscored held-out item is not in the null
    assert np.isnan(p[2]) and np.isnan(p[3])
    with pytest.raises(InputError):
        robust_pvalues(np.array([-np.inf]), np.array([0.5]))


def test_cosine_topk_matches_a_naive_float64_reference():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    t = rng.normal(size=(40, 16)).astype(np.float32)
    res = cosine_topk(q, t, 5, block=9)
    qd, td = q.astype(np.float64), t.astype(np.float64)
    cos = (qd @ td.T) / np.linalg.norm(qd, axis=1)[:, None] / np.linalg.norm(td, axis=1)[None]
    ref = np.argsort(-cos, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(res.indices, ref)
    np.testing.assert_allclose(res.values, np.take_along_axis(cos, ref, 1), atol=1e-12)
    v = cosine_vectors(q)
    assert v.shape == (7, 32) and np.allclose(v.mean(axis=1), 0.0, atol=1e-6)
