"""DDPM's noise schedules: MONAI's ``DDPMScheduler`` (training and the full ancestral chain) and
``DDIMScheduler`` on evenly strided timesteps (DDIM and the strided ancestral chain).

Ho, Jain & Abbeel 2020, arXiv 2006.11239 (linear β schedule, q(x_t | x_0)); Song, Meng & Ermon 2021,
arXiv 2010.02502 (DDIM); Nichol & Dhariwal 2021, arXiv 2102.09672 (cosine schedule; the linear schedule
rescaled to T steps; sampling a strided subsequence of the T steps, §4).
"""

from __future__ import annotations

from typing import Any

import torch

from memscan.models.ddpm.config import DDPMConfig


def schedule_args(cfg: DDPMConfig) -> dict[str, float]:
    """β_1 and β_T for the linear schedules (the cosine schedule has none)."""
    if cfg.schedule == "cosine":
        return {}
    return {"beta_start": cfg.beta_start, "beta_end": cfg.beta_end}


def training_scheduler(cfg: DDPMConfig) -> Any:
    """The ``DDPMScheduler`` of training (β_t, ᾱ_t, q(x_t | x_0)); also the full ancestral chain's."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip_sample,
        **schedule_args(cfg),
    )


def strided_scheduler(cfg: DDPMConfig, steps: int) -> Any:
    """A ``DDIMScheduler`` on the timesteps ``t_i = i · (T // steps)``, ``i = steps − 1 … 0``.

    MONAI rounds ``linspace(T − 1, 0, N)`` but steps back by ``T // N``; the evenly strided timesteps of the
    DDIM paper make each step land on the next model call's t.
    """
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip_sample,
        **schedule_args(cfg),
    )
    sched.set_timesteps(steps)
    sched.timesteps = torch.arange(steps - 1, -1, -1) * (cfg.num_train_timesteps // steps)
    return sched
