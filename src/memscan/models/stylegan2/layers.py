"""StyleGAN2's layers: equalized learning rate, the modulated convolution, resampling, minibatch stddev.

Karras et al. 2018, "Progressive Growing of GANs" (arXiv 1710.10196): equalized learning rate (weights drawn
from N(0, 1) and scaled by He's constant at run time) and the minibatch standard deviation layer (Sec. 3).
Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (arXiv 1912.04958), Sec. 2.2,
Eq. 1–3: weight modulation and demodulation.

Generic over ``spatial_dims`` 2 | 3 (``F.conv2d`` / ``F.conv3d`` picked by one argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def act(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) scaled by √2 to keep unit variance (StyleGAN2's ``lrelu`` gain)."""
    return F.leaky_relu(x, 0.2) * SQRT2


def conv_fn(spatial_dims: int) -> Callable[..., torch.Tensor]:
    return F.conv2d if spatial_dims == 2 else F.conv3d


def resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear/trilinear up- (``factor`` 2) or down-sampling (``factor`` 0.5, a 2× box average)."""
    if factor < 1:
        return F.avg_pool2d(x, 2) if x.ndim == 4 else F.avg_pool3d(x, 2)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    Weights are stored as ``N(0, 1) / lr_mult`` and scaled by ``lr_mult / sqrt(in_features)`` at run time.

    Args:
        in_features: input size.
        out_features: output size.
        bias_init: initial bias value.
        lr_mult: learning-rate multiplier.
        activate: apply the scaled leaky ReLU.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_mult: float = 1.0,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.lr_mult = lr_mult
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in] → [B, out]``."""
        out = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mult)
        return act(out) if self.activate else out


class EqualConv(nn.Module):
    """Convolution (2D or 3D, 'same' padding) with equalized learning rate.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: odd kernel side.
        spatial_dims: 2 or 3.
        bias: add a learned bias.
        activate: apply the scaled leaky ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        spatial_dims: int,
        *,
        bias: bool = True,
        activate: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *[kernel_size] * spatial_dims))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)
        self.conv = conv_fn(spatial_dims)
        self.padding = kernel_size // 2
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, *S] → [B, out, *S]``."""
        out = self.conv(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return act(out) if self.activate else out


class ModulatedConv(nn.Module):
    """Modulated (and optionally demodulated) convolution, StyleGAN2 Sec. 2.2, Eq. 1–3.

    The style ``s = A(w)`` scales the input feature maps of the weights per sample:
    ``w'_ijk = s_i · w_ijk``; demodulation rescales each output map to unit expected variance:
    ``w''_ijk = w'_ijk / sqrt(Σ_ik w'_ijk² + ε)``.

    The per-sample kernels are never built. Since ``w''_ijk = w_ijk · s_i · d_j`` with
    ``d_j = (Σ_i s_i² Σ_k w_ijk² + ε)^(-1/2)``, the convolution with ``w''`` equals scaling the input maps by
    ``s``, one ordinary convolution with the shared ``w`` for the whole batch, and scaling the output maps
    by ``d`` (a ``[B, in] @ [in, out]`` product). Building ``[B, out, in, *k]`` kernels for a grouped
    convolution (``groups = B``) instead made a 32-image training step at 32×32 on a CPU about 2× slower
    (benchmarks/bench_train.py), and grouped convolutions are the slow path of cuDNN and oneDNN too.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: odd kernel side.
        w_dim: style vector size.
        spatial_dims: 2 or 3.
        demodulate: divide by the expected output standard deviation (off for to-image layers).
        up: upsample the input 2× (bilinear/trilinear) before the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        spatial_dims: int,
        *,
        demodulate: bool = True,
        up: bool = False,
    ) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *[kernel_size] * spatial_dims))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)
        self.conv = conv_fn(spatial_dims)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]``, ``w [B, w_dim]`` → ``[B, out, *S']`` (``S' = 2S`` if ``up``)."""
        if self.up:
            x = resample(x, 2.0)
        batch, in_ch = x.shape[:2]
        spread = [1] * (x.ndim - 2)
        styles = self.affine(w)  # [B, in]
        weight = self.weight * self.weight_gain  # [out, in, *k]
        out = self.conv(x * styles.view(batch, in_ch, *spread).to(x.dtype), weight, padding=self.padding)
        if self.demodulate:  # d [B, out] = (s² @ Σ_k w²ᵀ + ε)^(-1/2)
            acc = torch.promote_types(weight.dtype, torch.float32)  # float32 at least, under autocast too
            with torch.autocast(x.device.type, enabled=False):
                energy = weight.to(acc).square().sum(dim=tuple(range(2, weight.ndim)))  # [out, in]
                coef = torch.rsqrt(styles.to(acc).square() @ energy.t() + 1e-8)
            out = out * coef.view(batch, -1, *spread).to(out.dtype)
        return out


def minibatch_stddev(x: torch.Tensor, group_size: int, n_channels: int) -> torch.Tensor:
    """Append the minibatch standard deviation feature maps (Karras et al. 2018, Sec. 3).

    Within groups of ``group_size`` samples (reduced to the largest divisor of B), the standard deviation
    of every feature over the group, averaged over features of each of ``n_channels`` channel groups and
    all positions, is appended as ``n_channels`` constant maps.

    Args:
        x: ``[B, F, *S]``.
        group_size: samples per group.
        n_channels: appended maps (``F`` must be divisible by it); 0 returns ``x``.

    Returns:
        ``[B, F + n_channels, *S]``.
    """
    if n_channels == 0:
        return x
    batch, feats, spatial = x.shape[0], x.shape[1], x.shape[2:]
    group = max(g for g in range(1, min(group_size, batch) + 1) if batch % g == 0)
    y = x.reshape(group, batch // group, n_channels, feats // n_channels, *spatial).float()
    y = (y - y.mean(dim=0)).square().mean(dim=0)  # [B/G, n, F/n, *S] variance over the group
    y = (y + 1e-8).sqrt().mean(dim=tuple(range(2, y.ndim)))  # [B/G, n]
    y = y.repeat(group, 1).view(batch, n_channels, *[1] * len(spatial)).expand(batch, n_channels, *spatial)
    return torch.cat([x, y.to(x.dtype)], dim=1)
