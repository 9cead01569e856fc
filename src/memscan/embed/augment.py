"""Random perturbations that span what a generator does to a memorised image (2D, batched, seeded).

The self-supervised encoder (:mod:`memscan.embed.train`) learns to map two perturbed views of one image
close together (SimCLR, Chen et al. 2020, arXiv 2002.05709), so the perturbations below define what it
learns to ignore. They span the near-copies the robust scan must catch (issue 18):

* geometry, composed into ONE affine map per image and applied with one ``grid_sample``: rotation up to
  ±``max_rotation`` degrees, isotropic scale log-uniform in ``scale_range`` (a scale above 1 is a centre
  crop resized back to full size), translation up to ``max_shift`` of the half-size, left-right mirror;
* an elastic warp: a smooth random displacement field (a coarse Gaussian grid upsampled bicubically),
  added to the same sampling grid (Simard et al. 2003's elastic distortion, in its smooth-field form);
* intensity: gamma (``x ** g`` on [0, 1] images, g log-uniform in ``gamma_range``), contrast and
  brightness, Gaussian blur, additive Gaussian noise.

Why by hand: torchvision is unusable with this project's torch, kornia is not installed, and MONAI's
random transforms draw from NumPy's global-ish per-transform state one image at a time; a batched
version seeded by one ``torch.Generator`` makes training reproducible and resumable step by step
(each step's views depend only on ``(seed, step)``).

Shapes: ``x`` is ``[B, C, H, W]`` float32 in [0, 1] (background 0); output the same shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from memscan.core.validate import check_float


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random perturbations (each probability applies per image).

    Attributes:
        max_rotation: largest rotation in degrees (uniform in ±max_rotation).
        scale_range: (low, high) isotropic scale, log-uniform.
        max_shift: largest translation as a fraction of the half-size (uniform).
        p_mirror: probability of a left-right mirror.
        p_elastic: probability of an elastic warp; ``elastic_amplitude`` its largest displacement as a
            fraction of the half-size, on a ``elastic_grid`` x ``elastic_grid`` control grid.
        gamma_range: (low, high) gamma, log-uniform.
        contrast_range: (low, high) multiplicative contrast; brightness uniform in ±``max_brightness``.
        p_blur: probability of a Gaussian blur with sigma uniform in (0, ``max_blur``] pixels.
        p_noise: probability of Gaussian noise with sigma uniform in (0, ``max_noise``].
    """

    max_rotation: float = 20.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_shift: float = 0.06
    p_mirror: float = 0.5
    p_elastic: float = 0.5
    elastic_amplitude: float = 0.03
    elastic_grid: int = 5
    gamma_range: tuple[float, float] = (0.5, 2.0)
    contrast_range: tuple[float, float] = (0.7, 1.3)
    max_brightness: float = 0.1
    p_blur: float = 0.5
    max_blur: float = 1.2
    p_noise: float = 0.5
    max_noise: float = 0.06

    def __post_init__(self) -> None:
        check_float(self.max_rotation, "max_rotation", low=0.0, high=180.0)
        for name in ("scale_range", "gamma_range", "contrast_range"):
            lo, hi = getattr(self, name)
            check_float(lo, f"{name}[0]", low=0.0, open_low=True)
            check_float(hi, f"{name}[1]", low=lo)
            object.__setattr__(self, name, (float(lo), float(hi)))
        for name in ("p_mirror", "p_elastic", "p_blur", "p_noise"):
            check_float(getattr(self, name), name, low=0.0, high=1.0)
        for name in ("max_shift", "elastic_amplitude", "max_brightness", "max_blur", "max_noise"):
            check_float(getattr(self, name), name, low=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _log_uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), g))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image ``sigma [B]`` (pixels; 0 leaves the image unchanged).

    ``x [B, C, H, W]`` → same shape; zero padding (the background of the images is 0).
    """
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3.0 * float(sigma.max())))) if sigma.numel() else 1
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # [B, 2r+1]; sigma -> 0 gives the identity kernel
    k = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0)), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius)), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def similarity_theta(
    angle_deg: torch.Tensor, scale: torch.Tensor, shift_yx: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """``affine_grid`` matrices that move an image by rotation, isotropic scale and translation.

    The output image at pixel position ``p`` (pixel units, origin at the image centre, y down) takes the
    input's value at ``T⁻¹ p`` with ``T p = scale · R(angle) p + shift``: the content is rotated by
    ``angle`` degrees (counter-clockwise as displayed), enlarged by ``scale`` and moved by ``shift``
    pixels (dy down, dx right). The matrix is converted to ``affine_grid``'s normalised coordinates
    (``align_corners=False``), so non-square images rotate without shear.

    Args:
        angle_deg, scale: ``[B]``; shift_yx: ``[B, 2]`` pixels.

    Returns:
        ``[B, 2, 3]`` float matrices for ``F.affine_grid``.
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    # counter-clockwise as displayed with y pointing down: (x, y) -> (x cos + y sin, -x sin + y cos)
    # inverse map R(-a)/s in pixel (x, y) coordinates
    inv = (
        torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / scale[:, None, None]
    )  # [B, 2, 2] acting on (x, y)
    t_pix = torch.stack([shift_yx[:, 1], shift_yx[:, 0]], -1)  # (dx, dy)
    off = -(inv @ t_pix[:, :, None])[:, :, 0]  # T^-1 p = inv (p - t)
    # normalised coords: x_n = x / (w/2), y_n = y / (h/2)
    d = torch.tensor([w / 2.0, h / 2.0], dtype=inv.dtype, device=inv.device)
    inv_n = inv * d[None, None, :] / d[None, :, None]
    off_n = off / d[None, :]
    return torch.cat([inv_n, off_n[:, :, None]], dim=2)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random perturbation per image of ``x [B, C, H, W]`` (float in [0, 1]), drawn from ``g``.

    The number of draws from ``g`` depends only on ``B`` and the image size, so a step's views are a
    function of the generator's seed.
    """
    b, c, h, w = x.shape
    x = x.float()
    angle = _uniform(b, -cfg.max_rotation, cfg.max_rotation, g)
    scale = _log_uniform(b, *cfg.scale_range, g)
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * cfg.max_shift * torch.tensor([h / 2.0, w / 2.0])
    mirror = torch.rand(b, generator=g) < cfg.p_mirror
    theta = similarity_theta(angle, scale, shift, h, w)
    theta[:, :, 0] = torch.where(mirror[:, None], -theta[:, :, 0], theta[:, :, 0])
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    n = cfg.elastic_grid
    field = torch.randn(b, 2, n, n, generator=g) * (cfg.elastic_amplitude / 2.0)
    elastic = (torch.rand(b, generator=g) < cfg.p_elastic).float()[:, None, None, None]
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True) * elastic
    grid = grid + field.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    gamma = _log_uniform(b, *cfg.gamma_range, g)[:, None, None, None]
    contrast = _log_uniform(b, *cfg.contrast_range, g)[:, None, None, None]
    bright = _uniform(b, -cfg.max_brightness, cfg.max_brightness, g)[:, None, None, None]
    x = x.clamp(0.0, 1.0) ** gamma * contrast + bright
    sigma = _uniform(b, 0.0, cfg.max_blur, g) * (torch.rand(b, generator=g) < cfg.p_blur)
    if cfg.max_blur > 0:
        x = gaussian_blur(x, sigma)
    noise_sd = _uniform(b, 0.0, cfg.max_noise, g) * (torch.rand(b, generator=g) < cfg.p_noise)
    x = x + torch.randn(x.shape, generator=g) * noise_sd[:, None, None, None]
    return x
