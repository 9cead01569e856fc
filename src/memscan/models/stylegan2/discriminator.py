"""StyleGAN2's residual discriminator (Karras et al. 2020, arXiv 1912.04958, Fig. 7c) with the minibatch
standard deviation layer (Karras et al. 2018, arXiv 1710.10196, Sec. 3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from memscan.models.stylegan2.config import StyleGAN2Config, check_image_shape, levels
from memscan.models.stylegan2.layers import SQRT2, EqualConv, EqualLinear, minibatch_stddev, resample


class DiscriminatorBlock(nn.Module):
    """Residual block (StyleGAN2 Fig. 7c): two 3×3 convolutions and a 2× downsampling, plus a
    downsampled 1×1 skip path; the sum is scaled by 1/√2."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv0 = EqualConv(in_channels, in_channels, 3, spatial_dims, activate=True)
        self.conv1 = EqualConv(in_channels, out_channels, 3, spatial_dims, activate=True)
        self.skip = EqualConv(in_channels, out_channels, 1, spatial_dims, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, *S] → [B, out, *S/2]``."""
        y = self.skip(resample(x, 0.5))
        x = self.conv1(resample(self.conv0(x), 0.5))
        return (x + y) / SQRT2


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: ``[B, C, *spatial_shape] → logits [B]``.

    From-image 1×1 convolution, residual blocks down to the lowest level (smallest side 4), then
    minibatch standard deviation, a 3×3 convolution and two fully connected layers.

    Args:
        cfg: hyperparameters.
        img_channels: C.
        spatial_shape: ``(H, W)`` or ``(X, Y, Z)``, powers of two ≥ 4.
    """

    def __init__(self, cfg: StyleGAN2Config, img_channels: int, spatial_shape: tuple[int, ...]) -> None:
        super().__init__()
        check_image_shape(spatial_shape)
        spatial_dims = len(spatial_shape)
        base, channels = levels(spatial_shape, cfg)
        mbstd_channels = math.gcd(cfg.mbstd_channels, channels[0]) if cfg.mbstd_channels else 0
        self.mbstd_group, self.mbstd_channels = cfg.mbstd_group, mbstd_channels
        self.from_image = EqualConv(img_channels, channels[-1], 1, spatial_dims, activate=True)
        self.blocks = nn.Sequential(
            *[
                DiscriminatorBlock(channels[i], channels[i - 1], spatial_dims)
                for i in range(len(channels) - 1, 0, -1)
            ]
        )
        self.conv = EqualConv(channels[0] + mbstd_channels, channels[0], 3, spatial_dims, activate=True)
        self.fc = EqualLinear(channels[0] * math.prod(base), channels[0], activate=True)
        self.out = EqualLinear(channels[0], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S] → [B]`` (real: positive)."""
        x = self.blocks(self.from_image(img))
        x = self.conv(minibatch_stddev(x, self.mbstd_group, self.mbstd_channels))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
