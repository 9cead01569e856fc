"""Each quality metric against its reference implementation (torchmetrics, prdc, MONAI) and a naive float64
reference on the same features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm

from memscan.quality import alpha_precision, copying, distances, diversity, frechet, kid, prdc


class _Identity(torch.nn.Module):
    """The "feature extractor" of torchmetrics' metrics: the features themselves."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _features(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """``n`` draws of one correlated Gaussian (the same for every seed), moved and scaled."""
    mix = np.random.default_rng(1000 + d).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mix * scale + shift


# ----------------------------------------------------------------------------------------------- FD


def test_frechet_distance_equals_torchmetrics_and_scipy_sqrtm():
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _features(0, 300, 12), _features(1, 250, 12, shift=0.3, scale=1.4)
    ours = frechet.frechet_distance(a, b)
    fid = FrechetInceptionDistance(feature=_Identity(12))
    fid.update(torch.from_numpy(a), real=True)
    fid.update(torch.from_numpy(b), real=False)
    assert ours == pytest.approx(float(fid.compute()), rel=1e-9)
    # naive float64 reference: the formula with scipy's matrix square root of the product
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    naive = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert ours == pytest.approx(naive, rel=1e-9)


def test_frechet_distance_zero_for_identical_sets_and_relative_form():
    a = _features(0, 200, 8)
    assert frechet.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    b, c = _features(1, 200, 8, shift=1.0), _features(2, 200, 8, shift=0.5)
    rel = frechet.relative_frechet_distance(b, c, a)
    assert rel["fd"] == pytest.approx(frechet.frechet_distance(b, a))
    assert rel["fd_holdout"] == pytest.approx(frechet.frechet_distance(c, a))
    assert rel["fd_relative"] == pytest.approx(rel["fd"] / rel["fd_holdout"])
    assert rel["fd_relative"] > 2  # shift 1.0 vs 0.5: about 4x the squared mean gap


# ---------------------------------------------------------------------------------------------- KID


def _naive_kid(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save:UserWarning")
def test_kid_equals_torchmetrics_and_a_naive_loop_on_full_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _features(0, 40, 6), _features(1, 40, 6, shift=0.2)
    ours = kid.kernel_inception_distance(a, b, subsets=3, subset_size=40)
    # one subset of every item: the random permutation cannot change the (permutation-invariant) MMD
    tm = KernelInceptionDistance(feature=_Identity(6), subsets=1, subset_size=40)
    tm.update(torch.from_numpy(a), real=True)
    tm.update(torch.from_numpy(b), real=False)
    assert ours["kid"] == pytest.approx(float(tm.compute()[0]), rel=1e-9)
    assert ours["kid"] == pytest.approx(_naive_kid(a, b), rel=1e-9)
    assert ours["kid_std"] == pytest.approx(0.0, abs=1e-15)  # every subset is the whole set


def test_kid_subsets_are_seeded_and_near_zero_for_one_distribution():
    a, b, c = _features(0, 400, 8), _features(1, 400, 8), _features(2, 400, 8, shift=0.5)
    r1 = kid.kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=7)
    assert r1 == kid.kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=7)
    assert r1 != kid.kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=8)
    far = kid.kernel_inception_distance(a, c, subsets=20, subset_size=100, seed=7)
    assert abs(r1["kid"]) < 3 * r1["kid_std"] + 1e-12
    assert far["kid"] > 10 * r1["kid_std"]
    assert kid.kernel_inception_distance(a, b[:30], subset_size=1000)["kid_subset_size"] == 30


# --------------------------------------------------------------------------------------------- PRDC


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_prdc_equals_the_prdc_package(shift):
    from prdc import compute_prdc

    real, fake = _features(0, 250, 10), _features(1, 180, 10, shift=shift)
    ours = prdc.prdc(real, fake, k=5)
    ref = compute_prdc(real, fake, nearest_k=5)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


def test_prdc_of_copies_decides_ties_exactly():
    # copies of real items lie exactly on the k-NN spheres of the items whose k-th neighbour they copy: not
    # strictly inside; an exact float64 reference (distances from the differences) says the same
    real = _features(5, 120, 6) * 300 + 50
    fake = real[::2].copy()
    full = np.sqrt(((real[:, None] - fake[None]) ** 2).sum(-1))
    rr = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), axis=1)[:, 5]
    rf = np.sort(np.sqrt(((fake[:, None] - fake[None]) ** 2).sum(-1)), axis=1)[:, 5]
    ours = prdc.prdc(real, fake)
    assert ours["density"] == pytest.approx((full < rr[:, None]).sum(0).mean() / 5, abs=1e-12)
    assert ours["precision"] == pytest.approx((full < rr[:, None]).any(0).mean(), abs=1e-12)
    assert ours["recall"] == pytest.approx((full < rf[None, :]).any(1).mean(), abs=1e-12)
    assert ours["coverage"] == pytest.approx((full.min(1) < rr).mean(), abs=1e-12)


def test_prdc_blocks_do_not_change_the_result(monkeypatch):
    real, fake = _features(0, 90, 5), _features(1, 70, 5, shift=0.3)
    whole = prdc.prdc(real, fake)
    monkeypatch.setattr(distances, "BLOCK_ROWS", 7)
    monkeypatch.setattr(distances.distance_blocks, "__defaults__", (7,))
    assert prdc.prdc(real, fake) == whole


def test_kept_distances_are_exact_for_copies_of_large_features():
    # |x| ~ 1e4: the matrix-product form alone leaves ~1e-4 where the true distance is 0
    x = _features(4, 300, 16) * 1000 + 1e4
    dup = np.concatenate([x, x[:5]])
    d, i = distances.nearest(x[:20], x)
    assert (d == 0).all() and (i == np.arange(20)).all()
    d, _ = distances.nearest_other(dup)
    assert (d[:5] == 0).all() and (d[-5:] == 0).all()
    assert (distances.kth_neighbour_distance(dup, 1)[:5] == 0).all()


def test_kth_neighbour_distance_against_sorting():
    x = _features(3, 50, 4)
    full = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(
        distances.kth_neighbour_distance(x, 5), np.sort(full, axis=1)[:, 5], rtol=1e-12
    )


# ------------------------------------------------------------------------- α-precision, authenticity


def _naive_alpha(real: np.ndarray, fake: np.ndarray, n_steps: int = 30) -> dict[str, float]:
    alphas = np.linspace(0, 1, n_steps)
    dist = lambda u, v: float(np.sqrt(((u - v) ** 2).sum()))  # noqa: E731
    c = real.mean(0)
    radii = np.quantile([dist(r, c) for r in real], alphas)
    p_curve = [np.mean([dist(f, c) <= r for f in fake]) for r in radii]
    real_nn = [min(dist(real[i], real[j]) for j in range(len(real)) if j != i) for i in range(len(real))]
    closest = [min(range(len(fake)), key=lambda j, r=r: dist(r, fake[j])) for r in real]
    cf = fake.mean(0)
    closest_d = [dist(fake[j], cf) for j in closest]
    f_radii = np.quantile(closest_d, alphas)
    r_curve = [
        np.mean(
            [dist(real[i], fake[closest[i]]) <= real_nn[i] and closest_d[i] <= fr for i in range(len(real))]
        )
        for fr in f_radii
    ]
    step = alphas[1] - alphas[0]
    authentic = []
    for f in fake:
        i = min(range(len(real)), key=lambda i, f=f: dist(f, real[i]))
        authentic.append(dist(f, real[i]) > real_nn[i])
    return {
        "alpha_precision": 1 - 2 * np.abs(np.array(p_curve) - alphas).sum() * step,
        "beta_recall": 1 - 2 * np.abs(np.array(r_curve) - alphas).sum() * step,
        "authenticity": float(np.mean(authentic)),
    }


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_alpha_precision_beta_recall_authenticity_against_a_naive_reference(shift):
    real, fake = _features(0, 60, 4), _features(1, 45, 4, shift=shift)
    ours = alpha_precision.alpha_beta_authenticity(real, fake)
    ref = _naive_alpha(real, fake)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_copies_are_never_authentic_and_same_distribution_scores_near_ideal():
    real = _features(0, 400, 4)
    copies = real[::3]
    assert alpha_precision.alpha_beta_authenticity(real, copies)["authenticity"] == 0.0
    same = alpha_precision.alpha_beta_authenticity(real, _features(1, 400, 4))
    # an independent draw of the same distribution: about half its items are nearer to their nearest real
    # item than that item's own nearest real neighbour is (exchangeability), so authenticity is about 0.5
    assert same["alpha_precision"] > 0.85 and 0.35 < same["authenticity"] < 0.65
    far = alpha_precision.alpha_beta_authenticity(real, _features(1, 400, 4, shift=5.0))
    assert far["alpha_precision"] < 0.2 and far["beta_recall"] < 0.2


# ---------------------------------------------------------------------------------------------- C_T


def test_z_u_against_a_naive_pair_count():
    rng = np.random.default_rng(0)
    a, b = rng.random(13), rng.random(17)
    u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    m, n = len(a), len(b)
    assert copying.z_u(a, b) == pytest.approx((u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))


def test_ct_one_cell_is_the_mann_whitney_z_and_its_p_value():
    train, test = _features(0, 200, 3), _features(1, 80, 3)
    synth = _features(2, 60, 3)
    out = copying.data_copying_test(train, test, synth, n_cells=1, min_synthetic=1)
    l_q = np.sqrt(((synth[:, None] - train[None]) ** 2).sum(-1)).min(1)
    l_p = np.sqrt(((test[:, None] - train[None]) ** 2).sum(-1)).min(1)
    assert out["ct_statistic"] == pytest.approx(copying.z_u(l_q, l_p))
    assert out["ct_p_value"] == pytest.approx(norm.cdf(out["ct_statistic"]))


def test_ct_detects_copying_and_not_fresh_samples():
    rng = np.random.default_rng(0)
    train, test = _features(0, 600, 3), _features(1, 300, 3)
    fresh = _features(2, 300, 3)
    copies = train[rng.choice(600, 300, replace=False)] + rng.normal(0, 1e-3, size=(300, 3))
    kw = {"n_cells": 5, "min_synthetic": 10, "seed": 0}
    c_fresh = copying.data_copying_test(train, test, fresh, **kw)
    c_copy = copying.data_copying_test(train, test, copies, **kw)
    assert abs(c_fresh["ct_statistic"]) < 3 and c_fresh["ct_p_value"] > 0.01
    assert c_copy["ct_statistic"] < -6 and c_copy["ct_p_value"] < 1e-9
    assert c_copy["ct_copying_cells"][0]["z_u"] <= c_copy["ct_copying_cells"][-1]["z_u"]
    assert c_copy == copying.data_copying_test(train, test, copies, **kw)  # seeded: same cells, same answer


def test_ct_without_a_qualifying_cell_is_undefined_not_zero():
    train, test, synth = _features(0, 50, 2), _features(1, 20, 2), _features(2, 5, 2)
    out = copying.data_copying_test(train, test, synth, n_cells=2, min_synthetic=20)
    assert np.isnan(out["ct_statistic"]) and np.isnan(out["ct_p_value"]) and out["ct_cells_used"] == 0


# ---------------------------------------------------------------------------------------- MS-SSIM


@pytest.mark.parametrize("side", [16, 32, 48, 64, 100, 128, 175, 176, 256])
def test_ms_ssim_settings_are_accepted_by_monai_and_maximal(side):
    from monai.metrics import MultiScaleSSIMMetric

    s = diversity.ms_ssim_settings((side, side))
    x = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(0))
    MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, **s)(x, x.flip(0))  # no ValueError
    assert sum(s["weights"]) == pytest.approx(1.0, abs=2e-4)
    if len(s["weights"]) < 5:  # one more scale would not fit with the smallest kernel
        more = dict(s, kernel_size=7, weights=diversity.STANDARD_WEIGHTS[: len(s["weights"]) + 1])
        with pytest.raises((ValueError, RuntimeError)):
            MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, **more)(x, x)
    if side >= 176:
        assert s["kernel_size"] == 11 and s["weights"] == diversity.STANDARD_WEIGHTS


def test_pairwise_ms_ssim_equals_monai_per_pair_and_identical_images_score_one():
    from monai.metrics import MultiScaleSSIMMetric

    rng = np.random.default_rng(0)
    imgs = rng.random((6, 2, 64, 64)).astype(np.float32) * 200 + 20
    pairs = np.array([[0, 1], [2, 5], [3, 3]])
    ours = diversity.pairwise_ms_ssim(imgs, pairs, scale=(20.0, 220.0))
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, **diversity.ms_ssim_settings((64, 64)))
    for (i, j), v in zip(pairs, ours, strict=True):
        a = torch.from_numpy((imgs[i : i + 1] - 20) / 200)
        b = torch.from_numpy((imgs[j : j + 1] - 20) / 200)
        assert v == pytest.approx(float(metric(a, b).mean()), abs=1e-6)
    assert ours[2] == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_of_3d_volumes():
    rng = np.random.default_rng(1)
    vols = rng.random((3, 1, 32, 32, 24)).astype(np.float32)
    vols[2] = vols[0]
    s = diversity.ms_ssim_settings((32, 32, 24))  # the shortest side (24) decides: 2 scales, kernel 11
    assert s["kernel_size"] == 11 and len(s["weights"]) == 2
    v = diversity.pairwise_ms_ssim(vols, np.array([[0, 2], [0, 1]]))
    assert v[0] == pytest.approx(1.0, abs=1e-6) and v[1] < 0.2


def test_pair_sampling_is_seeded_distinct_and_complete_for_small_sets():
    p = diversity.sample_pairs(100, 300, seed=1)
    assert len(p) == 300 and len({tuple(r) for r in p}) == 300 and (p[:, 0] < p[:, 1]).all()
    np.testing.assert_array_equal(p, diversity.sample_pairs(100, 300, seed=1))
    assert len(diversity.sample_pairs(5, 300)) == 10
    assert len(diversity.sample_pairs(1, 300)) == 0


def test_diversity_of_near_duplicates_is_high_and_of_distinct_images_low(slice_sets):
    dup = np.repeat(slice_sets["train"][:1], 6, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent NaN from MONAI
        same = diversity.mean_pairwise_ms_ssim(dup + np.float32(1e-3) * np.arange(6)[:, None, None, None])
        varied = diversity.mean_pairwise_ms_ssim(slice_sets["holdout"], n_pairs=60)
    assert same["mean"] > 0.99
    assert varied["mean"] < same["mean"] - 0.05


def test_bad_feature_arrays_are_refused():
    with pytest.raises(ValueError, match="2D array"):
        frechet.frechet_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        prdc.prdc(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 6"):
        prdc.prdc(np.zeros((5, 2)), np.zeros((10, 2)))
