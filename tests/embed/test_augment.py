"""The encoder's perturbations: geometry conventions, determinism, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memscan.embed.augment import AugmentConfig, augment, gaussian_blur, similarity_theta
from memscan.errors import InputError


def _warp(x: torch.Tensor, angle: float, scale: float, shift=(0.0, 0.0)) -> torch.Tensor:
    b, c, h, w = x.shape
    theta = similarity_theta(
        torch.full((b,), angle), torch.full((b,), scale), torch.tensor([shift] * b, dtype=torch.float32), h, w
    )
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_identity_and_integer_shift_move_pixels_exactly():
    x = torch.rand(2, 3, 16, 20)
    assert torch.allclose(_warp(x, 0.0, 1.0), x, atol=1e-6)
    y = _warp(x, 0.0, 1.0, (2.0, -3.0))  # content moves 2 down, 3 left
    assert torch.allclose(y[..., 2:, : 20 - 3], x[..., : 16 - 2, 3:], atol=1e-5)


def test_rotation_is_counter_clockwise_as_displayed():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 16] = 1.0  # right of the centre (row 10, col 10)
    y = _warp(x, 90.0, 1.0)
    r, c = divmod(int(torch.argmax(y)), 21)
    assert (r, c) == (4, 10)  # above the centre: a quarter turn counter-clockwise on screen


def test_scale_enlarges_about_the_centre():
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 30] = 1.0  # 10 px right of the centre
    y = _warp(x, 0.0, 1.5)
    cols = torch.nonzero(y[0, 0, 20] > 0.2).ravel().tolist()
    assert any(abs(c - 35) <= 1 for c in cols)  # 15 px right


def test_augment_is_a_function_of_the_seed():
    x = torch.rand(4, 2, 32, 32)
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    c = augment(x, cfg, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_without_perturbations_is_identity():
    cfg = AugmentConfig(
        max_rotation=0.0,
        scale_range=(1.0, 1.0),
        max_shift=0.0,
        p_mirror=0.0,
        p_elastic=0.0,
        gamma_range=(1.0, 1.0),
        contrast_range=(1.0, 1.0),
        max_brightness=0.0,
        max_blur=0.0,
        max_noise=0.0,
    )
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(augment(x, cfg, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_blur_sigma_zero_is_identity_and_blur_spreads_a_point():
    x = torch.zeros(2, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0
    y = gaussian_blur(x, torch.tensor([0.0, 1.5]))
    assert torch.allclose(y[0], x[0], atol=1e-6)
    assert float(y[1, 0, 7, 7]) < 0.2 and abs(float(y[1].sum()) - 1.0) < 1e-4
    ref = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)  # radius ceil(3 sigma)
    ref /= ref.sum()
    np.testing.assert_allclose(y[1, 0, 7, 2:13].numpy(), ref[5] * ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_rotation": -1.0}, {"scale_range": (1.2, 0.9)}, {"p_mirror": 1.5}, {"max_noise": float("nan")}],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(InputError):
        AugmentConfig(**kwargs)
