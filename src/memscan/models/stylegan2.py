"""A compact StyleGAN2 with adaptive discriminator augmentation, for 2D and 3D multi-channel images.

Written from the papers (NVIDIA's code is not used; its licence forbids copying):

* Karras et al. 2019, "A Style-Based Generator Architecture for GANs" (StyleGAN, arXiv 1812.04948):
  mapping network ``z → w``, learned constant input, per-pixel noise inputs with learned strength,
  truncation ``w_avg + ψ (w − w_avg)``.
* Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2,
  arXiv 1912.04958): weight modulation/demodulation (Sec. 2.2, Eq. 1–3) run as one grouped convolution,
  the skip generator (to-image outputs at every resolution, upsampled and summed) and the residual
  discriminator (Sec. 4.1, Fig. 7), lazy regularization (Sec. 3.1). Path-length regularization and
  style-mixing regularization are left out (both optional in the paper).
* Karras et al. 2018, "Progressive Growing of GANs" (arXiv 1710.10196): equalized learning rate (weights
  drawn from N(0, 1) and scaled by He's constant at run time) and the minibatch standard deviation layer.
* Karras et al. 2020, "Training GANs with Limited Data" (ADA, arXiv 2006.06676): see
  :mod:`memscan.models.augment`; also the R1 weight heuristic ``γ = 0.0002 · N / B`` (N pixels per image,
  B batch; the paper's Appendix B.1) and the EMA half-life in thousands of images.
* Goodfellow et al. 2014 (arXiv 1406.2661): the non-saturating logistic loss ``softplus(−D(G(z)))``.
* Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?" (arXiv 1801.04406): the
  R1 penalty ``γ/2 · E‖∇ₓD(x)‖²`` on real images.

Generic over ``spatial_dims`` 2 | 3 (``F.conv2d`` / ``F.conv3d`` picked by one argument) and any channel
count. Images are ``[B, C, H, W]`` or ``[B, C, X, Y, Z]`` in ``[-1, 1]``; every spatial size a power of
two ≥ 4 (they may differ: a ``32×64`` image starts from a ``4×8`` constant).

Horizontal mirroring (the study's ``--mirror``) flips the left-right axis of each real image with
probability 1/2: W of 2D images, X of 3D volumes in NIfTI ``[X, Y, Z]`` order
(:func:`memscan.models.augment.mirror_axis`).

Randomness in :meth:`StyleGAN2Model.train_step` comes from a generator seeded by ``(config.seed, step)``
on the batch's device, so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memscan.errors import InputError
from memscan.models.augment import AUGMENT_OPS, adjust_augment_p, augment, mirror_axis
from memscan.models.base import DataInfo

__all__ = [
    "PRESETS",
    "Discriminator",
    "Generator",
    "ModulatedConv",
    "StyleGAN2Config",
    "StyleGAN2Model",
    "build",
    "check_image_shape",
    "ema_beta",
    "resolve_config",
    "update_ema",
]

_SQRT2 = math.sqrt(2.0)
NoiseSource = torch.Generator | list[torch.Generator] | None
"""Where random numbers come from: one generator, one CPU generator per item, or the global RNG."""


def _act(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) scaled by √2 to keep unit variance (StyleGAN2's ``lrelu`` gain)."""
    return F.leaky_relu(x, 0.2) * _SQRT2


def _conv_fn(spatial_dims: int) -> Callable[..., torch.Tensor]:
    return F.conv2d if spatial_dims == 2 else F.conv3d


def _resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear/trilinear up- (``factor`` 2) or down-sampling (``factor`` 0.5, a 2× box average)."""
    if factor < 1:
        return F.avg_pool2d(x, 2) if x.ndim == 4 else F.avg_pool3d(x, 2)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None, device: torch.device
) -> torch.Tensor:
    """``N(0, 1)`` of ``shape`` on ``device``.

    Drawn on ``generator``'s device (the global RNG of ``device`` if ``None``) and moved to ``device``; a
    list of CPU generators draws item ``i`` (``shape[0]`` items) from generator ``i``.
    """
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator]).to(device)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class StyleGAN2Config:
    """StyleGAN2-ADA hyperparameters (defaults: the ``study`` preset, ADA's 256 px configuration).

    Attributes:
        z_dim: latent size.
        w_dim: intermediate latent (style) size.
        mapping_layers: fully connected layers of the mapping network.
        mapping_lr_mult: learning-rate multiplier of the mapping network (0.01 in StyleGAN).
        channel_base: feature maps at a level whose largest side is ``r``: ``min(channel_base // r,
            channel_max)``.
        channel_max: upper bound on feature maps per layer.
        use_noise: per-pixel noise inputs in the generator.
        mbstd_group: group size of the minibatch standard deviation layer (reduced to a divisor of B).
        mbstd_channels: feature groups of the minibatch standard deviation layer.
        lr_g: generator Adam learning rate.
        lr_d: discriminator Adam learning rate (scaled for lazy R1 as in StyleGAN2 Sec. 3.1).
        adam_betas: Adam ``(β1, β2)``.
        batch_size: recommended images per step (the training loop decides; also sets the auto R1 γ).
        r1_gamma: R1 weight γ; ``None`` = ADA's heuristic ``0.0002 · pixels / batch_size``, resolved by
            :func:`build`. ``0`` turns R1 off.
        r1_interval: apply R1 every this many steps (lazy regularization), weighted by the interval.
        ema_kimg: half-life of the generator EMA in thousands of images.
        ema_rampup: if set, the half-life is at most ``rampup ×`` the images seen so far (early training).
        mirror: random horizontal mirroring of the real images (dataset augmentation).
        ada: adapt the augmentation probability ``p`` from ``r_t``; if false, ``p`` stays ``augment_p``.
        ada_target: target of ``r_t = E[sign(D(x_real))]``.
        ada_interval: steps between adjustments of ``p``.
        ada_kimg: thousands of images for ``p`` to move from 0 to 1.
        augment_p: initial (or, with ``ada`` off, fixed) augmentation probability, in ``[0, 1)``.
        augment_ops: transforms of :data:`memscan.models.augment.AUGMENT_OPS` to use.
        seed: seed of the training randomness (latents, noise, mirroring, augmentation) per step.
    """

    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mult: float = 0.01
    channel_base: int = 16384
    channel_max: int = 512
    use_noise: bool = True
    mbstd_group: int = 4
    mbstd_channels: int = 1
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    adam_betas: tuple[float, float] = (0.0, 0.99)
    batch_size: int = 32
    r1_gamma: float | None = None
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float | None = None
    mirror: bool = True
    ada: bool = True
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    augment_p: float = 0.0
    augment_ops: tuple[str, ...] = AUGMENT_OPS
    seed: int = 0

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists: accept them, store tuples.
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        object.__setattr__(self, "augment_ops", tuple(self.augment_ops))
        for name in (
            "z_dim",
            "w_dim",
            "mapping_layers",
            "channel_base",
            "channel_max",
            "mbstd_group",
            "batch_size",
            "r1_interval",
            "ada_interval",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("mbstd_channels", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("mapping_lr_mult", "lr_g", "lr_d", "ema_kimg", "ada_kimg"):
            _check_float(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("use_noise", "mirror", "ada"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(
                    f"stylegan2 config: {name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.r1_gamma is not None:
            _check_float("r1_gamma", self.r1_gamma, low=0.0)
        if self.ema_rampup is not None:
            _check_float("ema_rampup", self.ema_rampup, low=0.0, low_open=True)
        _check_float("ada_target", self.ada_target, low=-1.0, high=1.0)
        _check_float("augment_p", self.augment_p, low=0.0, high=1.0, high_open=True)
        if len(self.adam_betas) != 2:
            raise InputError(f"stylegan2 config: adam_betas must be two numbers, got {list(self.adam_betas)}")
        for beta in self.adam_betas:
            _check_float("adam_betas", beta, low=0.0, high=1.0, high_open=True)
        for op in self.augment_ops:
            if op not in AUGMENT_OPS:
                raise InputError(
                    f"stylegan2 config: unknown augment op {op!r}{_did_you_mean(op, AUGMENT_OPS)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["augment_ops"] = list(self.augment_ops)
        return out


def _did_you_mean(word: str, options: Any) -> str:
    near = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"stylegan2 config: {name} must be an integer ≥ {minimum}, got {value!r}")


def _check_float(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"stylegan2 config: {name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # The study: 256 px, 5 channels, StyleGAN2-ADA's 256 px configuration (ADA paper Appendix B),
    # mirroring and ADA on, batch 32; R1 γ from the resolution (0.0002 · 256² / 32 ≈ 0.41).
    "study": {
        "z_dim": 512,
        "w_dim": 512,
        "mapping_layers": 8,
        "channel_base": 16384,
        "channel_max": 512,
        "lr_g": 0.0025,
        "lr_d": 0.0025,
        "batch_size": 32,
        "r1_gamma": None,
        "ema_kimg": 10.0,
        "mirror": True,
        "ada": True,
    },
    # Quick GPU runs at 64 px.
    "quick": {
        "z_dim": 256,
        "w_dim": 256,
        "mapping_layers": 2,
        "channel_base": 4096,
        "channel_max": 256,
        "lr_g": 0.0025,
        "lr_d": 0.0025,
        "batch_size": 32,
        "r1_gamma": None,
        "ema_kimg": 5.0,
        "ema_rampup": 0.05,
        "mirror": True,
        "ada": True,
        "ada_kimg": 100.0,
    },
    # 3D volumes of 32³ on a GPU.
    "quick3d": {
        "z_dim": 128,
        "w_dim": 128,
        "mapping_layers": 2,
        "channel_base": 1024,
        "channel_max": 128,
        "lr_g": 0.0025,
        "lr_d": 0.0025,
        "batch_size": 8,
        "r1_gamma": None,
        "ema_kimg": 2.0,
        "ema_rampup": 0.05,
        "mirror": True,
        "ada": True,
        "ada_kimg": 100.0,
    },
    # CPU tests: a step well under a second at 16×16 or 8×8×8.
    "tiny": {
        "z_dim": 32,
        "w_dim": 32,
        "mapping_layers": 2,
        "channel_base": 256,
        "channel_max": 32,
        "lr_g": 0.002,
        "lr_d": 0.002,
        "batch_size": 4,
        "r1_gamma": None,
        "r1_interval": 4,
        "ema_kimg": 0.01,
        "mirror": True,
        "ada": True,
        "ada_interval": 2,
        "ada_kimg": 1.0,
    },
}


def check_image_shape(spatial_shape: tuple[int, ...]) -> None:
    """Raise :class:`InputError` unless every spatial size is a power of two ≥ 4 (2 or 3 axes)."""
    shape = tuple(int(s) for s in spatial_shape)
    text = "×".join(str(s) for s in shape)
    if len(shape) not in (2, 3):
        raise InputError(f"stylegan2 needs 2D or 3D images, got spatial shape {text or '()'}")
    if any(s < 4 or s & (s - 1) for s in shape):
        raise InputError(
            f"stylegan2 needs every image size to be a power of two ≥ 4 (e.g. 64, 128, 256), got {text}; "
            "pad or resize the dataset"
        )


def _levels(spatial_shape: tuple[int, ...], cfg: StyleGAN2Config) -> tuple[tuple[int, ...], list[int]]:
    """Shape of the lowest level and feature maps per level (level 0 = lowest resolution).

    Returns:
        ``(base_shape, channels)``: the smallest side of ``base_shape`` is 4; level ``i`` has shape
        ``base_shape · 2**i``; ``channels[i] = min(channel_base // largest side, channel_max)``.
    """
    n_up = int(math.log2(min(spatial_shape))) - 2
    base = tuple(s >> n_up for s in spatial_shape)
    largest = max(spatial_shape)
    channels = [
        max(1, min(cfg.channel_base // (largest >> (n_up - i)), cfg.channel_max)) for i in range(n_up + 1)
    ]
    return base, channels


# ----------------------------------------------------------------------------------------------------------
# Layers with equalized learning rate (Karras et al. 2018, Sec. 4.1)


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
        return _act(out) if self.activate else out


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
        self.conv = _conv_fn(spatial_dims)
        self.padding = kernel_size // 2
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, *S] → [B, out, *S]``."""
        out = self.conv(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return _act(out) if self.activate else out


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
        self.conv = _conv_fn(spatial_dims)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x [B, in, *S]``, ``w [B, w_dim]`` → ``[B, out, *S']`` (``S' = 2S`` if ``up``)."""
        if self.up:
            x = _resample(x, 2.0)
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


# ----------------------------------------------------------------------------------------------------------
# Generator


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
            noise = _randn((out.shape[0], 1, *out.shape[2:]), noise_generator, out.device).to(out.dtype)
            out = out + noise * self.noise_strength
        bias = self.bias.view(1, -1, *[1] * (out.ndim - 2))
        return _act(out + bias)


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
        img = y if img is None else _resample(img, 2.0) + y
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
        base, channels = _levels(spatial_shape, cfg)
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


# ----------------------------------------------------------------------------------------------------------
# Discriminator


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
        y = self.skip(_resample(x, 0.5))
        x = self.conv1(_resample(self.conv0(x), 0.5))
        return (x + y) / _SQRT2


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
        base, channels = _levels(spatial_shape, cfg)
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


# ----------------------------------------------------------------------------------------------------------
# EMA


def ema_beta(batch_size: int, ema_kimg: float, nimg: int = 0, rampup: float | None = None) -> float:
    """EMA decay per step for a half-life of ``ema_kimg`` thousand images (ADA's convention).

    ``β = 0.5 ** (batch_size / half_life)`` with ``half_life = ema_kimg · 1000`` images, limited to
    ``rampup · nimg`` (images seen so far) when ``rampup`` is set, so early weights are forgotten fast.
    """
    half_life = ema_kimg * 1000.0
    if rampup is not None:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema ← β · ema + (1 − β) · model`` for parameters (one multi-tensor kernel: a per-parameter loop is
    ~150 small launches per step on a GPU); buffers (``w_avg``) are copied."""
    ema_p = list(ema.parameters())
    src_p = [p.detach() for p in model.parameters()]
    if len(ema_p) != len(src_p):
        raise ValueError("EMA and model have different parameters")
    torch._foreach_lerp_(ema_p, src_p, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


# ----------------------------------------------------------------------------------------------------------
# The model family


def _step_seed(seed: int, step: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % (2**63)


class StyleGAN2Model:
    """StyleGAN2-ADA as the training loop sees it (:class:`memscan.models.base.GenerativeModel`).

    Args:
        config: hyperparameters (``r1_gamma=None`` is resolved from the image size here).
        data: channel names and spatial shape of the training images.
    """

    name = "stylegan2"
    per_item_generators = True  # sample() also takes one CPU generator per item (batch-size invariant)

    def __init__(self, config: StyleGAN2Config, data: DataInfo) -> None:
        check_image_shape(data.spatial_shape)
        if data.n_channels < 1:
            raise InputError("stylegan2 needs at least one image channel")
        if config.r1_gamma is None:
            config = dataclasses.replace(
                config, r1_gamma=auto_r1_gamma(data.spatial_shape, config.batch_size)
            )
        self.config, self.data = config, data
        shape, c = tuple(data.spatial_shape), data.n_channels
        self.G = Generator(config, c, shape)
        self.D = Discriminator(config, c, shape)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g, self.opt_d = self._make_optimizers(fused=False)
        self.augment_p = float(config.augment_p)
        self.nimg = 0  # images seen (for the EMA ramp-up)
        self._ada_sum: float | torch.Tensor = 0.0  # Σ sign(D(real)) since the last adjustment of p
        self._ada_n = 0  # images counted in _ada_sum
        self._ada_steps = 0  # steps since the last adjustment of p
        self._amp: torch.dtype | None = None
        self._d_forward: Callable[[torch.Tensor], torch.Tensor] = self.D

    def _make_optimizers(self, *, fused: bool) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """Adam for G; Adam for D with lr and betas adjusted for lazy R1 (StyleGAN2 Sec. 3.1)."""
        cfg = self.config
        b1, b2 = cfg.adam_betas
        ratio = cfg.r1_interval / (cfg.r1_interval + 1) if cfg.r1_gamma > 0 else 1.0
        extra = {"fused": True} if fused else {}
        opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=(b1, b2), eps=1e-8, **extra)
        opt_d = torch.optim.Adam(
            self.D.parameters(), lr=cfg.lr_d * ratio, betas=(b1**ratio, b2**ratio), eps=1e-8, **extra
        )
        return opt_g, opt_d

    # --- GenerativeModel interface ------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """Resolved hyperparameters; ``build(model.config_dict(), data)`` rebuilds the same model."""
        return self.config.to_dict()

    def modules(self) -> dict[str, nn.Module]:
        """``{"G": generator, "D": discriminator, "G_ema": EMA generator}``."""
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``{"G": Adam, "D": Adam}``."""
        return {"G": self.opt_g, "D": self.opt_d}

    def extra_state(self) -> dict[str, float | int]:
        """ADA probability and counters (reads one scalar from the device)."""
        return {
            "augment_p": self.augment_p,
            "nimg": self.nimg,
            "ada_sum": float(self._ada_sum),
            "ada_n": self._ada_n,
            "ada_steps": self._ada_steps,
        }

    def load_extra_state(self, state: dict[str, float | int]) -> None:
        """Restore :meth:`extra_state`."""
        self.augment_p = float(state["augment_p"])
        self.nimg = int(state["nimg"])
        self._ada_sum = float(state["ada_sum"])
        self._ada_n = int(state["ada_n"])
        self._ada_steps = int(state["ada_steps"])

    # --- optional hooks of the training loop (as in memscan.models.ddpm) ---------------------------------

    def configure(
        self,
        device: torch.device,
        *,
        amp: torch.dtype | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        """Move to ``device`` and set speed options; call before loading optimizer state.

        Args:
            device: where networks and optimizer state live.
            amp: autocast dtype of the network forward passes (bf16 on CUDA), or ``None`` for float32.
            compile: ``torch.compile`` the discriminator for its non-R1 passes (R1 needs double backward,
                which compiled graphs do not support, so R1 steps use the eager module).
            channels_last: ignored (not measured to help here).
        """
        del channels_last
        device = torch.device(device)
        for module in self.modules().values():
            module.to(device)
        self.opt_g, self.opt_d = self._make_optimizers(fused=device.type == "cuda")
        self._amp = amp
        self._d_forward = torch.compile(self.D) if compile else self.D

    def memory_estimate(self, batch: int) -> int:
        """Rough peak bytes of one training step (weights, EMA, Adam state, gradients, activations)."""
        n_params = sum(p.numel() for m in (self.G, self.D) for p in m.parameters())
        _, channels = _levels(tuple(self.data.spatial_shape), self.config)
        pixels = math.prod(self.data.spatial_shape)
        n = self.data.spatial_dims
        level_act = sum(pixels / 2 ** (n * (len(channels) - 1 - i)) * c for i, c in enumerate(channels))
        bytes_per = 2 if self._amp is not None else 4
        # ~12 stored maps per level in G and D together, ×3 for the R1 double backward
        return int(n_params * 4 * 5 + batch * level_act * 12 * 3 * bytes_per)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return (
            torch.autocast(device.type, dtype=self._amp)
            if self._amp is not None
            else contextlib.nullcontext()
        )

    # --- training -----------------------------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float | torch.Tensor]:
        """One generator update, one discriminator update (R1 when ``step % r1_interval == 0``), EMA, ADA.

        All random numbers come from a generator on the batch's device seeded by ``(config.seed, step)``.
        Scalars stay on the device (no synchronisation per step) except every ``ada_interval`` steps,
        when ADA reads ``r_t`` to adjust ``p``.

        Args:
            batch: real images ``[B, C, *S]`` in ``[-1, 1]`` on the modules' device.
            step: global step number (seeds this step's randomness; schedules lazy R1).

        Returns:
            0-d tensors ``loss_g``, ``loss_d`` (without R1), ``d_real``/``d_fake`` (mean logits), ``r_t``
            (mean sign of ``D(real)`` in this batch), ``r1`` (``E‖∇D‖²``, on R1 steps only), and the float
            ``aug_p`` (after any adjustment).
        """
        cfg = self.config
        expected = (self.data.n_channels, *self.data.spatial_shape)
        if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise InputError(
                f"stylegan2 expects batches [B, {', '.join(map(str, expected))}], got {list(batch.shape)}"
            )
        device, n = batch.device, batch.shape[0]
        gen = torch.Generator(device=device)
        gen.manual_seed(_step_seed(cfg.seed, step))
        real = batch.float()
        if cfg.mirror:  # dataset augmentation: flip the left-right axis of half of the images
            flip = (_randn((n,), gen, device) > 0).view(n, *[1] * (real.ndim - 1))
            real = torch.where(flip, real.flip(mirror_axis(real.ndim - 2)), real)
        p, ops = self.augment_p, cfg.augment_ops

        # Generator: non-saturating loss softplus(-D(aug(G(z)))) (Goodfellow et al. 2014).
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self._autocast(device):
            fake = self.G(_randn((n, cfg.z_dim), gen, device), noise_generator=gen, update_w_avg=True)
            logits = self._d_forward(augment(fake, p, gen, ops))
        loss_g = F.softplus(-logits.float()).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.nimg += n
        update_ema(self.G_ema, self.G, ema_beta(n, cfg.ema_kimg, self.nimg, cfg.ema_rampup))

        # Discriminator: softplus(D(aug(fake))) + softplus(-D(aug(real))) [+ lazy R1 on augmented reals].
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        with self._autocast(device):
            with torch.no_grad():
                fake = self.G(_randn((n, cfg.z_dim), gen, device), noise_generator=gen)
            logits_fake = self._d_forward(augment(fake, p, gen, ops)).float()
            real_aug = augment(real, p, gen, ops).detach().requires_grad_(do_r1)
            logits_real = (self.D if do_r1 else self._d_forward)(real_aug).float()
        loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        total = loss_d
        out: dict[str, float | torch.Tensor] = {}
        if do_r1:  # Mescheder et al. 2018, weighted by the interval (StyleGAN2 Sec. 3.1)
            (grad,) = torch.autograd.grad(logits_real.sum(), real_aug, create_graph=True)
            r1 = grad.float().square().sum(dim=tuple(range(1, grad.ndim))).mean()
            total = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            out["r1"] = r1.detach()
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        self.opt_d.step()
        self.G.requires_grad_(True)

        sign_sum = logits_real.detach().sign().sum()
        if cfg.ada:  # ADA Sec. 3: adjust p every ada_interval steps from r_t = E[sign(D(x_real))]
            self._ada_sum = self._ada_sum + sign_sum
            self._ada_n += n
            self._ada_steps += 1
            if self._ada_steps >= cfg.ada_interval:
                r_t = float(self._ada_sum) / self._ada_n  # the only host sync of a training step
                self.augment_p = adjust_augment_p(
                    self.augment_p,
                    r_t,
                    target=cfg.ada_target,
                    batch_size=n,
                    interval=self._ada_steps,
                    ada_kimg=cfg.ada_kimg,
                )
                self._ada_sum, self._ada_n, self._ada_steps = 0.0, 0, 0
        out.update(
            loss_g=loss_g.detach(),
            loss_d=loss_d.detach(),
            d_real=logits_real.detach().mean(),
            d_fake=logits_fake.detach().mean(),
            r_t=sign_sum / n,
            aug_p=self.augment_p,
        )
        return out

    # --- sampling -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | list[torch.Generator],
        truncation: float = 1.0,
        **options: Any,
    ) -> torch.Tensor:
        """``n`` images ``[n, C, *S]`` in ``[-1, 1]`` from ``G_ema``.

        Latents and noise maps are drawn on the CPU from ``generator`` and moved to ``G_ema``'s device, so
        the result depends only on the generator (not on any global or device RNG; up to floating-point
        differences between devices). With one generator per item, each item is also independent of the
        batch it was generated in.

        Args:
            n: number of images.
            generator: one CPU ``torch.Generator``, or a list of ``n`` (one per item).
            truncation: ψ of the truncation trick (1 = none).
            **options: options of other model families; any that is not ``None`` is an error.
        """
        extra = sorted(k for k, v in options.items() if v is not None)
        if extra:
            raise InputError(
                f"stylegan2 sample: unknown option {extra[0]!r} (stylegan2 takes only 'truncation')"
            )
        _check_float("truncation", truncation, low=0.0)
        gens = list(generator) if isinstance(generator, list | tuple) else [generator]
        if any(g.device.type != "cpu" for g in gens):
            raise InputError("stylegan2 sample: expected CPU torch.Generator objects")
        device = next(self.G_ema.parameters()).device
        self.G_ema.eval()
        z = _randn((n, self.config.z_dim), generator, device)
        with self._autocast(device):
            img = self.G_ema(z, truncation=truncation, noise_generator=generator)
        return img.float().clamp(-1.0, 1.0)


def auto_r1_gamma(spatial_shape: tuple[int, ...], batch_size: int) -> float:
    """ADA's heuristic R1 weight ``γ = 0.0002 · N / B`` (N pixels or voxels per image, B batch size)."""
    return 0.0002 * math.prod(spatial_shape) / batch_size


def resolve_config(config: dict[str, Any] | None = None, preset: str = "quick") -> StyleGAN2Config:
    """``preset`` values overridden by ``config`` (field names of :class:`StyleGAN2Config`).

    Raises:
        InputError: unknown preset or option (with the nearest valid name), or an invalid value.
    """
    if preset not in PRESETS:
        raise InputError(
            f"unknown stylegan2 preset {preset!r}{_did_you_mean(preset, PRESETS)}; "
            f"expected one of {', '.join(PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(StyleGAN2Config)}
    unknown = sorted(set(config or {}) - fields)
    if unknown:
        raise InputError(
            f"unknown stylegan2 option {unknown[0]!r}{_did_you_mean(unknown[0], sorted(fields))}"
        )
    try:
        return StyleGAN2Config(**{**PRESETS[preset], **(config or {})})
    except TypeError as exc:  # e.g. a string where a number belongs
        raise InputError(f"stylegan2: bad config value: {exc}") from None


def build(config: dict[str, Any] | None, data: DataInfo, *, preset: str = "quick") -> StyleGAN2Model:
    """A StyleGAN2-ADA model for ``data``: ``preset`` values, overridden by ``config``.

    Args:
        config: overrides (field names of :class:`StyleGAN2Config`), e.g. a saved ``config_dict()``.
        data: channels and spatial shape of the training images (powers of two ≥ 4).
        preset: one of :data:`PRESETS`.

    Raises:
        InputError: unknown preset or option (with the nearest valid name), invalid value, image size not
            a power of two.
    """
    cfg = resolve_config(config, preset)
    check_image_shape(data.spatial_shape)
    return StyleGAN2Model(cfg, data)
