"""Pixel-space denoising diffusion model (DDPM) from MONAI's generative blocks, 2D or 3D, any channels.

One concept per module, as in MONAI and diffusers:

* :mod:`.config`   — :class:`DDPMConfig`, the presets, :func:`resolve_config`;
* :mod:`.network`  — the U-Net (:class:`monai.networks.nets.DiffusionModelUNet`) sized for the data;
* :mod:`.schedule` — the noise schedules (MONAI's ``DDPMScheduler`` / ``DDIMScheduler``);
* :mod:`.sampler`  — the sampling loop (ancestral and DDIM) on our own per-item generators;
* :mod:`.model`    — :class:`DDPM`, the family as the training loop sees it, and :func:`build`.

The registry (``memscan.models.registry``) needs ``build``, ``resolve_config`` and ``PRESETS`` from here.
"""

from __future__ import annotations

from memscan.models.ddpm.config import PREDICTIONS, PRESETS, SAMPLERS, SCHEDULES, DDPMConfig, resolve_config
from memscan.models.ddpm.model import DDPM, build
from memscan.models.ddpm.network import attention_levels, check_data
from memscan.models.ema import EMA
from memscan.models.rng import item_generators

__all__ = [
    "DDPM",
    "EMA",
    "PREDICTIONS",
    "PRESETS",
    "SAMPLERS",
    "SCHEDULES",
    "DDPMConfig",
    "attention_levels",
    "build",
    "check_data",
    "item_generators",
    "resolve_config",
]
