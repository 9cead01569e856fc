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
