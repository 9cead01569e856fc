"""Pixel-space denoising diffusion model (DDPM) from MONAI's generative blocks, 2D or 3D, any channels.

Network, noise schedule and sampling loop are separate, as in MONAI and diffusers:

* network: :class:`monai.networks.nets.DiffusionModelUNet` (ε-prediction U-Net with time embedding),
* schedule: :class:`monai.networks.schedulers.DDPMScheduler` / ``DDIMScheduler`` (betas, ᾱ_t, q(x_t|x_0)),
* training forward pass: :class:`monai.inferers.DiffusionInferer`,
* sampling loop: :meth:`DDPM.sample` (ours: it draws every random number from per-item ``torch.Generator``
  objects on the CPU, so a sample depends on its seed only, not on the device's RNG or the batch size).

References:
    Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239 (training
    objective, linear schedule, ancestral sampler, EMA of the weights).
    Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", arXiv 2010.02502 (DDIM sampler).
    Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", arXiv 2102.09672 (the
    "guided-diffusion style" U-Net and the linear schedule rescaled to T steps used by the study; sampling
    a strided subsequence of the T steps, §4).
    Polyak & Juditsky 1992, "Acceleration of stochastic approximation by averaging" (weight averaging).

Tensors crossing this module's boundary: images ``[B, C, H, W]`` or ``[B, C, D, H, W]`` in ``[-1, 1]``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from memscan.errors import InputError
from memscan.models.base import DataInfo

log = logging.getLogger(__name__)

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
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InputError(f"ddpm: {name} must be one of {', '.join(choices)}, got {value!r}{extra}")


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
        hint = difflib.get_close_matches(str(preset), PRESETS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise InputError(f"unknown ddpm preset {preset!r}{extra}; presets: {', '.join(PRESETS)}")
    names = [f.name for f in fields(DDPMConfig)]
    values = dict(PRESETS[preset])
    for key, value in (config or {}).items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InputError(f"unknown ddpm config key {key!r}{extra}")
        values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return DDPMConfig(**values)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise InputError(f"ddpm: bad config value: {exc}") from None


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


class EMA:
    """Exponential moving average of a network's weights (Polyak averaging; Ho et al. 2020 §4 used 0.9999).

    With ``warmup`` the decay used at update n is ``min(decay, (1 + n) / (10 + n))`` (the num_updates rule
    of TensorFlow's ExponentialMovingAverage), so early averages are not dominated by the random init.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self, n_updates: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + n_updates) / (10.0 + n_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, n_updates: int) -> None:
        """``ema ← d·ema + (1 − d)·θ`` for parameters; buffers are copied."""
        d = self.current_decay(n_updates)
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def item_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    """One CPU generator per item ``first .. first + n - 1``, seeded from ``(seed, item index)`` only."""
    gens = []
    for i in range(first, first + n):
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint64)[0]
        gens.append(torch.Generator().manual_seed(int(state) & (2**63 - 1)))
    return gens


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on ``device``, or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _randn(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """Standard normal noise drawn on the CPU: ``[B, *shape[1:]]`` from one generator or one per item."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


class DDPM:
    """The DDPM model family as the shared training loop and the sampler see it (``GenerativeModel``).

    Args:
        cfg: resolved config.
        data: the training data's channels and spatial shape.
    """

    name = "ddpm"
    per_item_generators = True  # sample() also takes one generator per item (batch-size invariant)

    def __init__(self, cfg: DDPMConfig, data: DataInfo) -> None:
        from monai.inferers import DiffusionInferer
        from monai.networks.nets import DiffusionModelUNet
        from monai.networks.schedulers import DDPMScheduler

        check_data(cfg, data)
        self.cfg = cfg
        self.data = data
        self.levels = attention_levels(cfg, data.spatial_shape)
        with_attention = [c for c, a in zip(cfg.channels, self.levels, strict=True) if a] + [cfg.channels[-1]]
        if any(c % cfg.num_head_channels for c in with_attention):
            raise InputError(
                f"ddpm: levels with attention (and the last level, which MONAI's middle block attends) need "
                f"channels divisible by num_head_channels={cfg.num_head_channels}, got {with_attention}"
            )
        self.unet = DiffusionModelUNet(
            spatial_dims=data.spatial_dims,
            in_channels=data.n_channels,
            out_channels=data.n_channels,
            num_res_blocks=cfg.num_res_blocks,
            channels=cfg.channels,
            attention_levels=self.levels,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            use_flash_attention=cfg.flash_attention,
        )
        self.scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            schedule=cfg.schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=cfg.clip_sample,
            **self._schedule_args(),
        )
        self.inferer = DiffusionInferer(self.scheduler)
        self.ema = EMA(self.unet, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.n_updates = 0
        self._forward = self.unet  # replaced by a compiled callable in configure()
        self._amp: torch.dtype | None = None
        self._channels_last = False

    def _schedule_args(self) -> dict[str, float]:
        if self.cfg.schedule == "cosine":
            return {}
        return {"beta_start": self.cfg.beta_start, "beta_end": self.cfg.beta_end}

    # --- GenerativeModel protocol -------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "ema": self.ema.module}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def extra_state(self) -> dict[str, float | int]:
        return {"n_updates": self.n_updates}

    def load_extra_state(self, state: dict[str, float | int]) -> None:
        self.n_updates = int(state.get("n_updates", 0))

    # --- optional hooks used by memscan.models.train ------------------------------------------------
    def configure(
        self,
        device: torch.device,
        *,
        amp: torch.dtype | None = None,
        compile: bool | str = False,
        channels_last: bool = False,
    ) -> None:
        """Move to ``device`` and set the speed options (called once by the training loop, before steps).

        Args:
            device: where the networks and the optimizer state live.
            amp: autocast dtype for the forward pass (bf16 on CUDA), or None for float32.
            compile: wrap the U-Net's forward in ``torch.compile`` (the checkpointed module is unchanged);
                a string is ``torch.compile``'s mode, e.g. ``"reduce-overhead"`` (CUDA graphs).
            channels_last: NHWC memory layout (2D on CUDA: faster convolutions on tensor cores).
        """
        self.unet.to(device)
        self.ema.module.to(device)
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self._amp = amp
        self._channels_last = bool(channels_last and self.data.spatial_dims == 2)
        if self._channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.ema.module.to(memory_format=torch.channels_last)
        if device.type == "cuda":  # fused AdamW: one kernel for the whole update
            self.optimizer = torch.optim.AdamW(
                self.unet.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True
            )
        if isinstance(compile, str):
            self._forward = torch.compile(self.unet, mode=compile)
        else:
            self._forward = torch.compile(self.unet) if compile else self.unet

    def memory_estimate(self, batch: int) -> int:
        """Rough peak bytes of one training step (weights, EMA, AdamW state, gradients, activations)."""
        n_params = sum(p.numel() for p in self.unet.parameters())
        pixels = math.prod(self.data.spatial_shape)
        act = 0
        for i, c in enumerate(self.cfg.channels):
            level_pixels = pixels / (2**self.data.spatial_dims) ** i
            # ~ (2 convs + norms + activations) per res block, down and up paths, kept for backward
            act += level_pixels * c * (self.cfg.num_res_blocks * 2 + 1) * 2 * 6
            if self.levels[i] or i == len(self.cfg.channels) - 1:
                act += level_pixels * c * 8
        bytes_per = 2 if self._amp is not None else 4
        return int(n_params * 4 * 5 + batch * act * bytes_per)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float | torch.Tensor]:
        """One AdamW step of the simplified objective ``‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²``.

        Ho et al. 2020, Algorithm 1 (t uniform on {0..T−1}); ``v_prediction`` / ``sample`` targets are the
        usual alternatives. Random numbers come from the device's default generator (the training loop
        seeds it and checkpoints its state).

        Args:
            batch: ``[B, C, *S]`` in ``[-1, 1]``.
            step: the global step (unused: the EMA counts its own updates).

        Returns:
            ``{"loss": 0-d tensor}`` (kept on the device: no synchronisation per step).
        """
        x0 = batch
        if self.cfg.hflip:
            flip = torch.rand(x0.shape[0], device=x0.device) < 0.5
            x0 = torch.where(flip.view(-1, *[1] * (x0.ndim - 1)), x0.flip(-1), x0)
        if self._channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
        if self.cfg.prediction_type == "epsilon":
            target = noise
        elif self.cfg.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        self.unet.train()
        with _autocast(x0.device, self._amp):
            pred = self.inferer(inputs=x0, diffusion_model=self._forward, noise=noise, timesteps=t)
        loss = F.mse_loss(pred.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.ema.update(self.unet, self.n_updates)
        self.n_updates += 1
        return {"loss": loss.detach()}

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | list[torch.Generator],
        *,
        sampler: str | None = None,
        sampling_steps: int | None = None,
        eta: float | None = None,
        weights: str = "ema",
    ) -> torch.Tensor:
        """Generate ``n`` images ``[n, C, *S]`` in ``[-1, 1]`` with the EMA weights.

        Every random number (the initial x_T, and the per-step noise of the ancestral sampler or of DDIM
        with η > 0) is drawn on the CPU from ``generator`` and moved to the device, so a result depends on
        the generator only (up to floating-point differences between devices). With one generator per
        item the result of each item is also independent of the batch it was generated in.

        Args:
            n: number of images.
            generator: one CPU generator for the batch, or a list of ``n`` (one per item).
            sampler: ``ddpm`` (ancestral: Ho et al. 2020 Alg. 2) or ``ddim`` (Song et al. 2021 eq. 12);
                default from the config.
            sampling_steps: steps (default from the config). ``ddpm`` with T steps is Algorithm 2 itself;
                with fewer it samples the strided ("respaced") chain of Nichol & Dhariwal 2021 §4, which is
                DDIM with η = 1 on those steps (Song et al. 2021 §4.1: its σ_t is the strided posterior's).
            eta: DDIM's η (default from the config); ``ddpm`` with fewer steps uses η = 1.
            weights: ``ema`` (default) or ``raw`` (the trained, un-averaged weights).
        """
        from monai.networks.schedulers import DDIMScheduler

        sampler = sampler or self.cfg.sampler
        _check_choice("sampler", sampler, SAMPLERS)
        eta = self.cfg.ddim_eta if eta is None else float(eta)
        net = self.ema.module if weights == "ema" else self.unet
        net.eval()
        device = next(net.parameters()).device
        shape = (n, self.data.n_channels, *self.data.spatial_shape)
        x = _randn(shape, generator).to(device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        steps = int(sampling_steps or self.cfg.sampling_steps)
        if not 1 <= steps <= self.cfg.num_train_timesteps:
            raise InputError(
                f"--sampling-steps must be between 1 and {self.cfg.num_train_timesteps}, got {steps}"
            )
        if sampler == "ddpm" and steps < self.cfg.num_train_timesteps:
            sampler, eta = "ddim", 1.0  # the strided ancestral chain
        if sampler == "ddim":
            sched = DDIMScheduler(
                num_train_timesteps=self.cfg.num_train_timesteps,
                schedule=self.cfg.schedule,
                prediction_type=self.cfg.prediction_type,
                clip_sample=self.cfg.clip_sample,
                **self._schedule_args(),
            )
            sched.set_timesteps(steps)
            # MONAI rounds linspace(T-1, 0, N) but steps back by T // N; use the evenly strided timesteps
            # of the DDIM paper (t_i = i * T // N) so that each step lands on the next model call's t.
            sched.timesteps = torch.arange(steps - 1, -1, -1) * (self.cfg.num_train_timesteps // steps)
        else:
            sched = self.scheduler
            sched.set_timesteps(self.cfg.num_train_timesteps)
        sched.alphas_cumprod = sched.alphas_cumprod.to(device)
        for t in sched.timesteps.tolist():
            tt = torch.full((n,), t, device=device, dtype=torch.long)
            with _autocast(device, self._amp):
                out = net(x, timesteps=tt)
            out = out.float()
            if sampler == "ddim":
                x = self._ddim_step(sched, out, t, x, eta, generator)
            else:
                x = self._ddpm_step(sched, out, t, x, generator)
        return x.clamp(-1.0, 1.0).contiguous()

    def _ddim_step(
        self, sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor, eta: float, generator: Any
    ) -> torch.Tensor:
        """DDIM step x_t → x_prev (Song et al. 2021 eq. 12): ``√ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z``.

        MONAI's ``DDIMScheduler.step`` gives x̂_0 (clipped as configured) and, with η = 0, the deterministic
        ``x_det = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε̂``; for η > 0 we recover ε̂ from those two, shrink the
        direction term and add σ_t(η) z (eq. 16) with z drawn from our generators (MONAI would draw it on
        the device's generator, which is neither reproducible across devices nor per item).
        """
        x_det, x0 = sched.step(model_output, t, x, eta=0.0)
        if eta <= 0:
            return x_det
        prev = t - sched.num_train_timesteps // sched.num_inference_steps
        if prev < 0:  # the last step: ᾱ_prev is the scheduler's final value (a host tensor, no device sync)
            if float(sched.final_alpha_cumprod) >= 1.0:  # lands on x̂_0: no direction term, no noise
                return x_det
            ab_prev = sched.final_alpha_cumprod
        else:
            ab_prev = sched.alphas_cumprod[prev]
        ab_prev = torch.as_tensor(ab_prev, dtype=torch.float32, device=x.device)
        sigma2 = eta**2 * sched._get_variance(t, prev).to(device=x.device, dtype=torch.float32)
        eps = (x_det - ab_prev.sqrt() * x0) / (1 - ab_prev).sqrt()
        z = _randn(tuple(x.shape), generator).to(x.device)
        return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma2).clamp(min=0).sqrt() * eps + sigma2.sqrt() * z

    def _ddpm_step(
        self, sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor, generator: Any
    ) -> torch.Tensor:
        """Ancestral step x_t → x_{t−1} (Ho et al. 2020 eq. 6–7 via MONAI's step, σ_t² = β̃_t).

        MONAI's ``DDPMScheduler.step`` draws its noise from a generator on the model's device; we call it
        without noise (at t = 0 it adds none) by computing the mean with MONAI and adding our own noise.
        """
        alphas_cumprod = sched.alphas_cumprod.to(x.device)
        sched.alphas_cumprod = alphas_cumprod
        mean, _ = _ddpm_mean(sched, model_output, t, x)
        if t == 0:
            return mean
        var = sched._get_variance(t).to(x.device)
        return mean + var.sqrt() * _randn(tuple(x.shape), generator).to(x.device)


def _ddpm_mean(sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """MONAI's posterior mean μ̃_t(x_t, x̂_0) (the noise-free part of ``DDPMScheduler.step``)."""
    # At t = 0 MONAI's step adds no noise, so step(…, 0, …) is the mean; for t > 0 use the same formula
    # through the scheduler's own helpers.
    if t == 0:
        return sched.step(model_output, 0, x)
    ab_t = sched.alphas_cumprod[t]
    if sched.prediction_type == "epsilon":
        x0 = (x - (1 - ab_t) ** 0.5 * model_output) / ab_t**0.5
    elif sched.prediction_type == "sample":
        x0 = model_output
    else:
        x0 = ab_t**0.5 * x - (1 - ab_t) ** 0.5 * model_output
    if sched.clip_sample:
        x0 = torch.clamp(x0, sched.clip_sample_values[0], sched.clip_sample_values[1])
    return sched._get_mean(t, x0, x), x0


def build(config: dict[str, Any] | None, data: DataInfo, *, preset: str = "quick") -> DDPM:
    """Build a DDPM for ``data`` from a preset and config overrides (the registry's builder).

    Raises:
        InputError: unknown preset/key, bad value, or images the U-Net cannot take.
    """
    cfg = resolve_config(config, preset)
    check_data(cfg, data)
    return DDPM(cfg, data)
