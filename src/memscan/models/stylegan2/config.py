"""StyleGAN2-ADA's options: :class:`StyleGAN2Config` (validated on construction), the presets, overrides,
the image sizes the networks accept and the feature maps per level.

Karras et al. 2020, "Training GANs with Limited Data" (ADA, arXiv 2006.06676), Appendix B: the 256 px
configuration of the ``study`` preset and the R1 weight heuristic ``γ = 0.0002 · N / B``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from memscan.core.validate import did_you_mean
from memscan.errors import InputError
from memscan.models.augment import AUGMENT_OPS


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
                    f"stylegan2 config: unknown augment op {op!r}{did_you_mean(op, AUGMENT_OPS)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["augment_ops"] = list(self.augment_ops)
        return out


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


def resolve_config(config: dict[str, Any] | None = None, preset: str = "quick") -> StyleGAN2Config:
    """``preset`` values overridden by ``config`` (field names of :class:`StyleGAN2Config`).

    Raises:
        InputError: unknown preset or option (with the nearest valid name), or an invalid value.
    """
    if preset not in PRESETS:
        raise InputError(
            f"unknown stylegan2 preset {preset!r}{did_you_mean(preset, PRESETS)}; "
            f"expected one of {', '.join(PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(StyleGAN2Config)}
    unknown = sorted(set(config or {}) - fields)
    if unknown:
        raise InputError(f"unknown stylegan2 option {unknown[0]!r}{did_you_mean(unknown[0], sorted(fields))}")
    try:
        return StyleGAN2Config(**{**PRESETS[preset], **(config or {})})
    except TypeError as exc:  # e.g. a string where a number belongs
        raise InputError(f"stylegan2: bad config value: {exc}") from None


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


def levels(spatial_shape: tuple[int, ...], cfg: StyleGAN2Config) -> tuple[tuple[int, ...], list[int]]:
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


def auto_r1_gamma(spatial_shape: tuple[int, ...], batch_size: int) -> float:
    """ADA's heuristic R1 weight ``γ = 0.0002 · N / B`` (N pixels or voxels per image, B batch size)."""
    return 0.0002 * math.prod(spatial_shape) / batch_size
