"""StyleGAN2's skip generator: mapping network ``z → w``, a learned constant, style layers with noise
inputs, and to-image outputs summed over the levels.

Karras et al. 2019, "A Style-Based Generator Architecture for GANs" (arXiv 1812.04948): mapping network,
learned constant input, per-pixel noise with learned strength, truncation ``w_avg + ψ (w − w_avg)``.
Karras et al. 2020 (StyleGAN2, arXiv 1912.04958), Fig. 7b: the skip generator.
"""

from __future__ import annotations

import torch
from torch import nn

from memscan.models.rng import NoiseSource, randn
from memscan.models.stylegan2.config import StyleGAN2Config, check_image_shape, levels
from memscan.models.stylegan2.layers import EqualLinear, ModulatedConv, act, resample


class MappingNetwork(nn.Module):
    """``z → w``: normalize z to unit second moment, then an MLP with leaky ReLU (StyleGAN Sec. 2).

    Keeps ``w_avg``, a running mean of ``w`` (decay 0.995) used for truncation.
    """

    def __init__(self, z_dim: int, w_dim: int, n_layers: int, lr_mult: float) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * n_layers
        self.layers = nn.Sequential(
            *[
                EqualLinear(a, b, lr_mult=lr_mult, activate=True)
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: torch.Tensor, *, update_w_avg: bool = False, truncation: float = 1.0
    ) -> torch.Tensor:
        """``z [B, z_dim] → w [B, w_dim]``; ``w_avg + truncation · (w − w_avg)``."""
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        w = self.layers(z)
        if update_w_avg:
            self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, 0.995))
        if truncation != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)
        return w


class StyleLayer(nn.Module):
    """Modulated 3×3 convolution + per-pixel noise with learned strength + bias + leaky ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, spatial_dims: int, *, up: bool, use_noise: bool
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, 3, w_dim, spatial_dims, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(())) if use_noise else None
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_generator: NoiseSource) -> torch.Tensor:
        """``x [B, in, *S]`` → ``[B, out, *S']``; noise ``[B, 1, *S']`` drawn from ``noise_generator``."""
        out = self.conv(x, w)
        if self.noise_strength is not None:
            noise = randn((out.shape[0], 1, *out.shape[2:]), noise_generator, out.device).to(out.dtype)
            out = out + noise * self.noise_strength
        bias = self.bias.view(1, -1, *[1] * (out.ndim - 2))
        return act(out + bias)


class SynthesisBlock(nn.Module):
    """One resolution level of the skip generator (StyleGAN2 Fig. 7b).

    The first level starts from a learned constant and has one style layer; later levels upsample 2× and
    have two. Every level adds its to-image output (a 1×1 modulated convolution without demodulation) to
    the upsampled image of the level below.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_channels: int,
        w_dim: int,
        spatial_dims: int,
        *,
        base_shape: tuple[int, ...] | None,
        use_noise: bool,
    ) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(out_channels, *base_shape)) if base_shape is not None else None
        self.conv0 = (
            None
            if base_shape is not None
            else StyleLayer(in_channels, out_channels, w_dim, spatial_dims, up=True, use_noise=use_noise)
        )
        self.conv1 = StyleLayer(
            out_channels, out_channels, w_dim, spatial_dims, up=False, use_noise=use_noise
        )
        self.to_image = ModulatedConv(out_channels, img_channels, 1, w_dim, spatial_dims, demodulate=False)
        self.to_image_bias = nn.Parameter(torch.zeros(img_channels))

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        w: torch.Tensor,
        noise_generator: NoiseSource,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, in, *S]`` (``None`` at the first level), ``img [B, C, *S]`` → both at ``2S``."""
        if self.const is not None:
            x = self.const[None].expand(w.shape[0], *self.const.shape).to(w.dtype)
        else:
            x = self.conv0(x, w, noise_generator)
        x = self.conv1(x, w, noise_generator)
        y = self.to_image(x, w) + self.to_image_bias.view(1, -1, *[1] * (x.ndim - 2))
        img = y if img is None else resample(img, 2.0) + y
        return x, img


class Generator(nn.Module):
    """StyleGAN2 skip generator: ``z [B, z_dim] → images [B, C, *spatial_shape]``.

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
        self.z_dim = cfg.z_dim
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mult)
        self.blocks = nn.ModuleList(
            SynthesisBlock(
                channels[max(i - 1, 0)],
                channels[i],
                img_channels,
                cfg.w_dim,
                spatial_dims,
                base_shape=base if i == 0 else None,
                use_noise=cfg.use_noise,
            )
            for i in range(len(channels))
        )

    def forward(
        self,
        z: torch.Tensor,
        *,
        truncation: float = 1.0,
        noise_generator: NoiseSource = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """``z [B, z_dim]`` → ``[B, C, *S]`` (not clamped); noise from ``noise_generator``."""
        w = self.mapping(z, update_w_avg=update_w_avg, truncation=truncation)
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w, noise_generator)
        return img
