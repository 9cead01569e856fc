"""The DDPM model family as the shared training loop and the sampler see it (``GenerativeModel``).

Network (:mod:`.network`), noise schedule (:mod:`.schedule`) and sampling loop (:mod:`.sampler`) are
separate, as in MONAI and diffusers; this module holds the training step, the EMA and the optimizer.

References:
    Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", arXiv 2006.11239 (training
    objective, EMA of the weights).

Tensors crossing this module's boundary: images ``[B, C, H, W]`` or ``[B, C, D, H, W]`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from memscan.core.validate import check_choice
from memscan.errors import InputError
from memscan.models.base import DataInfo
from memscan.models.ddpm.config import SAMPLERS, DDPMConfig, resolve_config
from memscan.models.ddpm.network import attention_levels, check_data, make_unet
from memscan.models.ddpm.sampler import run_chain
from memscan.models.ddpm.schedule import strided_scheduler, training_scheduler
from memscan.models.device import autocast
from memscan.models.ema import EMA
from memscan.models.rng import randn


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

        check_data(cfg, data)
        self.cfg = cfg
        self.data = data
        self.levels = attention_levels(cfg, data.spatial_shape)
        self.unet = make_unet(cfg, data, self.levels)
        self.scheduler = training_scheduler(cfg)
        self.inferer = DiffusionInferer(self.scheduler)
        self.ema = EMA(self.unet, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.n_updates = 0
        self._forward = self.unet  # replaced by a compiled callable in configure()
        self._amp: torch.dtype | None = None
        self._channels_last = False

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
        with autocast(x0.device, self._amp):
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
        sampler = sampler or self.cfg.sampler
        check_choice(sampler, SAMPLERS, "ddpm: sampler")
        eta = self.cfg.ddim_eta if eta is None else float(eta)
        net = self.ema.module if weights == "ema" else self.unet
        net.eval()
        device = next(net.parameters()).device
        shape = (n, self.data.n_channels, *self.data.spatial_shape)
        x = randn(shape, generator, device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        steps = int(sampling_steps or self.cfg.sampling_steps)
        if not 1 <= steps <= self.cfg.num_train_timesteps:
            raise InputError(
                f"sampling_steps must be between 1 and {self.cfg.num_train_timesteps}, got {steps}"
            )
        if sampler == "ddpm" and steps < self.cfg.num_train_timesteps:
            sampler, eta = "ddim", 1.0  # the strided ancestral chain
        if sampler == "ddim":
            sched = strided_scheduler(self.cfg, steps)
        else:
            sched = self.scheduler
            sched.set_timesteps(self.cfg.num_train_timesteps)
        return run_chain(net, sched, x, sampler=sampler, eta=eta, generator=generator, amp=self._amp)


def build(config: dict[str, Any] | None, data: DataInfo, *, preset: str = "quick") -> DDPM:
    """Build a DDPM for ``data`` from a preset and config overrides (the registry's builder).

    Raises:
        InputError: unknown preset/key, bad value, or images the U-Net cannot take.
    """
    cfg = resolve_config(config, preset)
    check_data(cfg, data)
    return DDPM(cfg, data)
