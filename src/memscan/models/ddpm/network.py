"""DDPM's network: MONAI's :class:`~monai.networks.nets.DiffusionModelUNet` (an ε-prediction U-Net with a
time embedding) sized for the data, and the checks that the data fit it.

Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", arXiv 2102.09672: the
"guided-diffusion style" U-Net (attention at chosen feature-map sizes) of the study's presets.
"""

from __future__ import annotations

import logging

import torch

from memscan.errors import InputError
from memscan.models.base import DataInfo
from memscan.models.ddpm.config import DDPMConfig

log = logging.getLogger(__name__)


def attention_levels(cfg: DDPMConfig, spatial_shape: tuple[int, ...]) -> tuple[bool, ...]:
    """Which U-Net levels get attention: level i works at ``min(spatial_shape) / 2**i`` pixels."""
    base = min(spatial_shape)
    sizes = [base // 2**i for i in range(len(cfg.channels))]
    unmatched = [r for r in cfg.attention_resolutions if r not in sizes]
    if unmatched:
        log.warning(
            "ddpm: attention_resolutions %s match no U-Net level for %s images (level sizes %s); ignored",
            unmatched,
            "x".join(map(str, spatial_shape)),
            sizes,
        )
    return tuple(s in cfg.attention_resolutions for s in sizes)


def check_data(cfg: DDPMConfig, data: DataInfo) -> None:
    """Raise InputError when the U-Net cannot take images of this shape."""
    if data.spatial_dims not in (2, 3):
        raise InputError(f"ddpm: images must be 2D or 3D, got spatial shape {data.spatial_shape}")
    if data.n_channels < 1:
        raise InputError("ddpm: the dataset has no channels")
    factor = 2 ** (len(cfg.channels) - 1)
    bad = [s for s in data.spatial_shape if s % factor or s < factor]
    if bad:
        raise InputError(
            f"ddpm: image size {'x'.join(map(str, data.spatial_shape))} must be a multiple of {factor} on "
            f"every side for a U-Net with {len(cfg.channels)} levels (pick a smaller preset or prepare the "
            "data with --size)"
        )


def make_unet(cfg: DDPMConfig, data: DataInfo, levels: tuple[bool, ...]) -> torch.nn.Module:
    """The U-Net for ``data`` (``[B, C, *S] → [B, C, *S]``), with attention at the ``levels`` marked True.

    Raises:
        InputError: a level with attention (or the last, which MONAI's middle block attends) whose channels
            are not a multiple of ``num_head_channels``.
    """
    from monai.networks.nets import DiffusionModelUNet

    with_attention = [c for c, a in zip(cfg.channels, levels, strict=True) if a] + [cfg.channels[-1]]
    if any(c % cfg.num_head_channels for c in with_attention):
        raise InputError(
            f"ddpm: levels with attention (and the last level, which MONAI's middle block attends) need "
            f"channels divisible by num_head_channels={cfg.num_head_channels}, got {with_attention}"
        )
    return DiffusionModelUNet(
        spatial_dims=data.spatial_dims,
        in_channels=data.n_channels,
        out_channels=data.n_channels,
        num_res_blocks=cfg.num_res_blocks,
        channels=cfg.channels,
        attention_levels=levels,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
        use_flash_attention=cfg.flash_attention,
    )
