"""DDPM's options: :class:`DDPMConfig` (validated on construction), the named presets, and overrides.

Tensors play no part here; the config is saved as JSON in the model folder and rebuilds the same model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from memscan.core.validate import check_choice, did_you_mean
from memscan.errors import InputError

SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class DDPMConfig:
    """Everything that defines a DDPM run (saved as JSON in the model folder).

    Attributes:
        channels: U-Net feature channels per resolution level (level i works at ``size / 2**i``).
        num_res_blocks: residual blocks per level.
        attention_resolutions: feature-map sizes (pixels along the smallest image side) that get
            self-attention, e.g. ``(32, 16)`` for the study at 256 px; mapped to levels from the data size.
            MONAI's middle block always has attention as well.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (every entry of ``channels`` must be a multiple).
        num_train_timesteps: diffusion steps T.
        schedule: ``linear_beta`` (Ho et al. 2020), ``scaled_linear_beta`` or ``cosine`` (Nichol &
            Dhariwal 2021).
        beta_start: β_1 of the linear schedules.
        beta_end: β_T of the linear schedules.
        prediction_type: ``epsilon`` (Ho et al. 2020), ``v_prediction`` or ``sample``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: clip the gradient norm to this (0: no clipping).
        batch_size: default training batch (``--batch`` overrides it).
        steps: default number of training steps (``--steps`` overrides it).
        ema_decay: EMA decay of the sampling weights.
        ema_warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` over the first updates.
        hflip: mirror training images left-right at random (off: the study's DDPM did not).
        sampler: default sampler, ``ddpm`` (ancestral; the study's guided-diffusion code samples this way)
            or ``ddim`` (Song et al. 2021). Measured on a DDPM trained for 96,000 presentations of 33
            slices: deterministic DDIM (η = 0) left visible noise in most samples, at 50 and 200 steps
            alike, where the ancestral chain's samples were clean, so an audit would under-count copies.
        sampling_steps: default number of sampling steps (``ddpm``: ``num_train_timesteps`` is the full
            chain, fewer is the strided chain).
        ddim_eta: DDIM's η (0: deterministic given the initial noise).
        clip_sample: clip the predicted x_0 to ``[-1, 1]`` in each sampling step.
        flash_attention: use ``torch.nn.functional.scaled_dot_product_attention`` (same weights).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_head_channels: int = 32
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction_type: str = "epsilon"
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 32
    steps: int = 5000
    ema_decay: float = 0.999
    ema_warmup: bool = True
    hflip: bool = False
    sampler: str = "ddpm"
    sampling_steps: int = 100
    ddim_eta: float = 0.0
    clip_sample: bool = True
    flash_attention: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.default)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if not self.channels or any(c < 1 for c in self.channels):
            raise InputError(f"ddpm: channels must be positive numbers, got {list(self.channels)}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise InputError(
                f"ddpm: every entry of channels {list(self.channels)} must be a multiple of "
                f"norm_num_groups={self.norm_num_groups}"
            )
        for name in ("num_res_blocks", "num_head_channels", "num_train_timesteps", "batch_size", "steps"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ddpm: {name} must be >= 1, got {getattr(self, name)}")
        if any(r < 1 for r in self.attention_resolutions):
            raise InputError(
                f"ddpm: attention_resolutions must be positive sizes, got {self.attention_resolutions}"
            )
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTIONS)
        _check_choice("sampler", self.sampler, SAMPLERS)
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise InputError(
                f"ddpm: need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}"
            )
        if not self.lr > 0:
            raise InputError(f"ddpm: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError("ddpm: weight_decay and grad_clip must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ddpm: ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 1 <= self.sampling_steps <= self.num_train_timesteps:
            raise InputError(
                f"ddpm: sampling_steps must be between 1 and num_train_timesteps={self.num_train_timesteps}, "
                f"got {self.sampling_steps}"
            )
        if self.ddim_eta < 0:
            raise InputError(f"ddpm: ddim_eta must be >= 0, got {self.ddim_eta}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d


def _check_type(name: str, value: Any, default: Any) -> None:
    """The value's type must match the field's (bool, int, float, str, tuple of ints)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        expected = "a string"
    else:
        ok = isinstance(value, tuple | list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        expected = "a list of integers"
    if not ok:
        raise InputError(f"ddpm: {name} must be {expected}, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    check_choice(value, choices, f"ddpm: {name}")


#: Named presets. ``study`` is the study's diffusion model (guided-diffusion's 256 px U-Net: channel
#: multipliers 1,1,2,2,4,4 on 64 base channels, 3 residual blocks, attention at 32 and 16 px, T = 4000,
#: linear schedule rescaled by 1000/T as in Nichol & Dhariwal 2021 §3.1's code, lr 1e-4, batch 32,
#: EMA 0.9999, ε-prediction).
PRESETS: dict[str, dict[str, Any]] = {
    "study": dict(
        channels=(64, 64, 128, 128, 256, 256),
        num_res_blocks=3,
        attention_resolutions=(32, 16),
        num_head_channels=64,
        norm_num_groups=32,
        num_train_timesteps=4000,
        schedule="linear_beta",
        beta_start=1e-4 * 1000 / 4000,
        beta_end=2e-2 * 1000 / 4000,
        lr=1e-4,
        batch_size=32,
        steps=100_000,
        ema_decay=0.9999,
        ema_warmup=False,
        sampler="ddpm",
        sampling_steps=250,
    ),
    # 64 x 64 phantoms in minutes on one GPU.
    "quick": dict(
        channels=(32, 64, 64),
        num_res_blocks=2,
        attention_resolutions=(16,),
        num_head_channels=32,
        norm_num_groups=32,
        num_train_timesteps=1000,
        lr=2e-4,
        batch_size=32,
        steps=5000,
        ema_decay=0.999,
        ema_warmup=True,
        sampler="ddpm",
        sampling_steps=100,
    ),
    # 3D volumes (e.g. 64^3): no attention except in MONAI's middle block.
    "quick3d": dict(
        channels=(32, 64, 64),
        num_res_blocks=1,
        attention_resolutions=(),
        num_head_channels=32,
        norm_num_groups=32,
        num_train_timesteps=1000,
        lr=2e-4,
        batch_size=4,
        steps=5000,
        ema_decay=0.999,
        ema_warmup=True,
        sampler="ddpm",
        sampling_steps=50,
    ),
    # CPU tests: ~45k parameters, a training step well under 0.5 s at 16 x 16.
    "tiny": dict(
        channels=(8, 16),
        num_res_blocks=1,
        attention_resolutions=(),
        num_head_channels=8,
        norm_num_groups=4,
        num_train_timesteps=100,
        lr=2e-3,
        batch_size=8,
        steps=20,
        ema_decay=0.9,
        ema_warmup=True,
        sampler="ddpm",
        sampling_steps=5,
    ),
}


def resolve_config(config: dict[str, Any] | None = None, preset: str = "quick") -> DDPMConfig:
    """Preset values overridden by ``config`` (a dict of :class:`DDPMConfig` fields).

    Raises:
        InputError: unknown preset or key (the nearest valid name is suggested), or a bad value.
    """
    if preset not in PRESETS:
        raise InputError(
            f"unknown ddpm preset {preset!r}{did_you_mean(preset, PRESETS)}; presets: {', '.join(PRESETS)}"
        )
    names = [f.name for f in fields(DDPMConfig)]
    values = dict(PRESETS[preset])
    for key, value in (config or {}).items():
        if key not in names:
            raise InputError(f"unknown ddpm config key {key!r}{did_you_mean(key, names)}")
        values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return DDPMConfig(**values)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise InputError(f"ddpm: bad config value: {exc}") from None
