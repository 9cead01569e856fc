"""Registered correlation: recovers known transforms, refuses tiny overlaps, matches a naive reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from memscan.embed.augment import similarity_theta
from memscan.errors import InputError
from memscan.robust.register import (
    RegisterConfig,
    register_pairs,
    registered_correlation,
    transform_label,
)


def _phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """An asymmetric smooth 2-channel image on a zero background, [2, size, size] in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    head = (xx / 0.36) ** 2 + (yy / 0.42) ** 2 < 1
    img = np.zeros((size, size))
    for _ in range(6):
        cy, cx, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.04, 0.12)
        img += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    img = (0.3 + img) * head
    img = img / img.max()
    return np.stack([img, img**2]).astype(np.float32)


def _scipy_similarity(x: np.ndarray, angle: float, scale: float, shift=(0.0, 0.0)) -> np.ndarray:
    """Independent reference: rotate ``angle`` (counter-clockwise on screen), scale, shift ``(dy, dx)``."""
    h, w = x.shape[-2:]
    a = math.radians(angle)
    # output pixel p (row, col) takes input at  R⁻¹ (p - c - t) / s + c ; CCW on screen in (row, col) coords
    m = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) / scale
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    off = c - m @ (c + np.asarray(shift))
    return np.stack([ndimage.affine_transform(ch, m, offset=off, order=1) for ch in x]).astype(np.float32)


def test_scipy_reference_agrees_with_the_torch_convention():
    x = _phantom(48)
    ref = _scipy_similarity(x, 12.0, 1.1, (2.0, -1.0))
    theta = similarity_theta(torch.tensor([12.0]), torch.tensor([1.1]), torch.tensor([[2.0, -1.0]]), 48, 48)
    grid = F.affine_grid(theta, [1, 2, 48, 48], align_corners=False)
    got = F.grid_sample(torch.from_numpy(x)[None], grid, align_corners=False)[0].numpy()
    assert np.corrcoef(got[:, 6:-6, 6:-6].ravel(), ref[:, 6:-6, 6:-6].ravel())[0, 1] > 0.999


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(12.0, 1.0, (0.0, 0.0)), (-15.0, 0.9, (2.0, -1.0)), (5.0, 1.15, (-2.0, 3.0))],
)
def test_register_recovers_a_known_transform(angle, scale, shift):
    x = _phantom(64)
    y = _scipy_similarity(x, angle, scale, shift)
    reg = register_pairs(torch.from_numpy(y)[None], torch.from_numpy(x)[None], RegisterConfig())
    assert reg.score[0] > 0.99
    assert abs(reg.angle[0] - angle) < 1.5
    assert abs(reg.scale[0] - scale) < 0.03
    assert np.all(np.abs(reg.shift[0] - np.asarray(shift)) < 1.5)
    plain = np.corrcoef(x.ravel(), y.ravel())[0, 1]
    assert reg.score[0] > plain + 0.02  # the registration is what makes it a match


def test_gamma_is_recovered_as_a_monotone_map():
    x = _phantom(64)
    y = x**0.55
    reg = register_pairs(torch.from_numpy(y)[None], torch.from_numpy(x)[None], RegisterConfig())
    assert reg.score[0] > 0.995 and abs(reg.gamma[0] - 0.55) < 0.08
    assert "gamma(0.5" in reg.labels()[0]


def test_tiny_overlap_cannot_score():
    x = torch.from_numpy(_phantom(32))[None]
    corr, overlap = registered_correlation(
        x, x, torch.zeros(1), torch.tensor([math.log(0.6)]), torch.zeros(1, 2), torch.zeros(1), 0.5
    )
    assert abs(float(overlap[0]) - 0.36) < 0.05 and corr[0] == -math.inf
    corr, _ = registered_correlation(
        x, x, torch.zeros(1), torch.zeros(1), torch.tensor([[0.0, 0.6]]), torch.zeros(1), 0.5
    )
    assert corr[0] == -math.inf  # shifted 60 % sideways: 40 % overlap


def test_weighted_pearson_matches_naive_float64():
    rng = np.random.default_rng(1)
    s = torch.from_numpy(rng.random((3, 2, 20, 24)).astype(np.float32))
    t = torch.from_numpy(rng.random((3, 2, 20, 24)).astype(np.float32))
    angle, logs = torch.tensor([7.0, -3.0, 0.0]), torch.log(torch.tensor([1.1, 0.95, 1.0]))
    shift, logg = (
        torch.tensor([[0.05, -0.02], [0.0, 0.1], [0.0, 0.0]]),
        torch.log(torch.tensor([1.3, 0.8, 1.0])),
    )
    corr, overlap = registered_correlation(s, t, angle, logs, shift, logg, 0.3)
    theta = similarity_theta(angle, torch.exp(logs), shift * torch.tensor([20.0, 24.0]), 20, 24)
    grid = F.affine_grid(theta, [3, 1, 20, 24], align_corners=False)
    warped = F.grid_sample(t, grid, align_corners=False).double().numpy()
    inside = F.grid_sample(torch.ones(3, 1, 20, 24), grid, align_corners=False).numpy()[:, 0] > 0.999
    for i in range(3):
        tt = (np.maximum(warped[i], 0) + 1e-6) ** float(torch.exp(logg[i]))
        a = s[i].double().numpy()[:, inside[i]].ravel()
        b = tt[:, inside[i]].ravel()
        assert abs(np.corrcoef(a, b)[0, 1] - float(corr[i])) < 1e-5
        assert abs(inside[i].mean() - float(overlap[i])) < 1e-6


def test_results_do_not_depend_on_the_batch():
    x = _phantom(48)
    ys = [_scipy_similarity(x, a, s) for a, s in ((10.0, 1.0), (-8.0, 1.1), (0.0, 0.9))]
    s = torch.from_numpy(np.stack(ys))
    t = torch.from_numpy(np.stack([x] * 3))
    cfg = RegisterConfig(fine_steps=10, final_steps=2)
    together = register_pairs(s, t, cfg)
    alone = [register_pairs(s[i : i + 1], t[i : i + 1], cfg) for i in range(3)]
    for i in range(3):
        assert abs(together.score[i] - alone[i].score[0]) < 1e-5
        assert abs(together.angle[i] - alone[i].angle[0]) < 1e-3


def test_transform_label():
    assert transform_label(-8.04, 0.912, np.array([2.2, -0.6]), 1.0) == "rot(-8.0)+scale(0.91)+shift(+2,-1)"
    assert transform_label(0.0, 1.0, np.zeros(2), 0.55).endswith("+gamma(0.55)")


def test_bad_register_config_is_refused():
    with pytest.raises(InputError):
        RegisterConfig(min_overlap=0.0)
    with pytest.raises(InputError):
        RegisterConfig(scale_range=(1.2, 0.8))
    angles, scales = RegisterConfig().grid()
    assert angles.size == 9 * 7  # 9 angles x 7 log-spaced scales (the middle one is 1.0)
    assert np.any((angles == 0) & np.isclose(scales, 1.0))


def _smooth_warp(x: np.ndarray, amp: float, seed: int = 3) -> np.ndarray:
    """``x [C, H, W]`` displaced by a smooth random field (a 4x4 cubic-spline field of max ``amp`` px)."""
    rng = np.random.default_rng(seed)
    h, w = x.shape[-2:]
    field = np.stack([ndimage.zoom(rng.normal(size=(4, 4)), (h / 4, w / 4), order=3) for _ in range(2)])
    field *= amp / np.abs(field).max()
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    coords = np.stack([yy + field[0], xx + field[1]])
    return np.stack([ndimage.map_coordinates(ch, coords, order=1) for ch in x]).astype(np.float32)


def test_the_smooth_warp_recovers_a_known_smooth_displacement():
    x = _phantom(64, seed=2)
    y = _smooth_warp(x, 3.0)
    s, t = torch.from_numpy(y)[None], torch.from_numpy(x)[None]
    base = RegisterConfig(score_size=None)
    rigid = register_pairs(s, t, base)
    warped = register_pairs(s, t, RegisterConfig(score_size=None, warp_grid=5, warp_max=0.08))
    # the similarity transform cannot undo a local warp; the warp stage removes most of what is left
    assert 1.0 - warped.score[0] < 0.5 * (1.0 - rigid.score[0])
    assert warped.score[0] > 0.99
    assert 1.0 <= warped.warp[0] <= 0.08 * 64 + 1e-6  # moved, within the box bound
    assert "+warp(" in warped.labels()[0]
    # no displacement to find: the warp stays near zero and the score near the rigid one
    same = register_pairs(t, t, RegisterConfig(score_size=None, warp_grid=5, warp_max=0.08))
    assert same.score[0] > 0.999 and same.warp[0] < 1.0


def test_the_warp_is_bounded_and_the_overlap_rule_still_holds():
    x = torch.from_numpy(_phantom(32))[None]
    field = torch.full((1, 2, 4, 4), 0.9)  # moves everything 45 % of the size sideways
    corr, overlap = registered_correlation(
        x, x, torch.zeros(1), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), 0.5, field
    )
    assert float(overlap[0]) < 0.6 and corr[0] == -math.inf


def test_matched_blur_raises_a_blurred_copy_more_than_a_different_image():
    x = _phantom(64, seed=4)
    other = _phantom(64, seed=5)
    blurred = np.stack([ndimage.gaussian_filter(ch, 2.0) for ch in x]).astype(np.float32)
    t = torch.from_numpy(np.stack([x, x]))
    s = torch.from_numpy(np.stack([blurred, other]))
    plain = register_pairs(s, t, RegisterConfig(score_size=None, blur_sigmas=()))
    matched = register_pairs(s, t, RegisterConfig(score_size=None, blur_sigmas=(1.0, 2.0)))
    assert matched.blur[0] == 2.0 and matched.score[0] > 0.999 > plain.score[0]
    assert matched.score[0] - plain.score[0] > 0.0
    assert np.all(matched.score >= plain.score - 1e-6)  # a maximum over a set that includes "no blur"
    assert "+blur(2.0)" in matched.labels()[0]


def test_blur_at_the_score_matches_scipy():
    x = _phantom(48, seed=6)
    xt = torch.from_numpy(x)[None]
    zero = torch.zeros(1)
    corr, _ = registered_correlation(
        xt, xt, zero, zero, torch.zeros(1, 2), zero, 0.5, None, torch.tensor([1.5])
    )
    ref = np.stack(
        [ndimage.gaussian_filter(ch.astype(np.float64), 1.5, mode="constant", truncate=3.0) for ch in x]
    )
    assert abs(np.corrcoef(x.ravel(), (ref + 1e-6).ravel())[0, 1] - float(corr[0])) < 1e-4


def test_polish_then_refine_recovers_scale_between_grid_points():
    x = _phantom(64)
    y = _scipy_similarity(x, 2.5, 0.9)  # 0.9 lies between the grid's scales 0.86 and 0.93
    cfg = RegisterConfig(polish_steps=15)
    reg = register_pairs(torch.from_numpy(y)[None], torch.from_numpy(x)[None], cfg)
    assert reg.score[0] > 0.99 and abs(reg.scale[0] - 0.9) < 0.02


def test_bad_new_register_options_are_refused():
    for bad in ({"warp_grid": 1}, {"warp_max": 0.5}, {"polish_steps": -1}, {"blur_sigmas": (0.0,)}):
        with pytest.raises(InputError):
            RegisterConfig(**bad)
