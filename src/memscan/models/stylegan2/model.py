"""StyleGAN2-ADA as the training loop sees it (:class:`memscan.models.base.GenerativeModel`): the two
networks, their EMA, the optimizers, one training step and sampling.

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (arXiv 1912.04958), Sec. 3.1:
lazy regularization (the discriminator's Adam settings adjusted for it). Karras et al. 2020, "Training GANs
with Limited Data" (ADA, arXiv 2006.06676): the augmentation probability tuned from
``r_t = E[sign(D(x_real))]`` (:mod:`memscan.models.augment`) and the EMA half-life in thousands of images.

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
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memscan.errors import InputError
from memscan.models.augment import adjust_augment_p, augment, mirror_axis
from memscan.models.base import DataInfo
from memscan.models.device import autocast
from memscan.models.ema import ema_beta, update_ema
from memscan.models.rng import randn
from memscan.models.stylegan2.config import (
    StyleGAN2Config,
    _check_float,
    auto_r1_gamma,
    check_image_shape,
    levels,
    resolve_config,
)
from memscan.models.stylegan2.discriminator import Discriminator
from memscan.models.stylegan2.generator import Generator
from memscan.models.stylegan2.loss import discriminator_loss, generator_loss, lazy_r1, r1_penalty


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
        _, channels = levels(tuple(self.data.spatial_shape), self.config)
        pixels = math.prod(self.data.spatial_shape)
        n = self.data.spatial_dims
        level_act = sum(pixels / 2 ** (n * (len(channels) - 1 - i)) * c for i, c in enumerate(channels))
        bytes_per = 2 if self._amp is not None else 4
        # ~12 stored maps per level in G and D together, ×3 for the R1 double backward
        return int(n_params * 4 * 5 + batch * level_act * 12 * 3 * bytes_per)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return autocast(device, self._amp)

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
            flip = (randn((n,), gen, device) > 0).view(n, *[1] * (real.ndim - 1))
            real = torch.where(flip, real.flip(mirror_axis(real.ndim - 2)), real)
        p, ops = self.augment_p, cfg.augment_ops

        # Generator: non-saturating loss softplus(-D(aug(G(z)))) (Goodfellow et al. 2014).
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self._autocast(device):
            fake = self.G(randn((n, cfg.z_dim), gen, device), noise_generator=gen, update_w_avg=True)
            logits = self._d_forward(augment(fake, p, gen, ops))
        loss_g = generator_loss(logits)
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
                fake = self.G(randn((n, cfg.z_dim), gen, device), noise_generator=gen)
            logits_fake = self._d_forward(augment(fake, p, gen, ops)).float()
            real_aug = augment(real, p, gen, ops).detach().requires_grad_(do_r1)
            logits_real = (self.D if do_r1 else self._d_forward)(real_aug).float()
        loss_d = discriminator_loss(logits_fake, logits_real)
        total = loss_d
        out: dict[str, float | torch.Tensor] = {}
        if do_r1:  # Mescheder et al. 2018, weighted by the interval (StyleGAN2 Sec. 3.1)
            r1 = r1_penalty(logits_real, real_aug)
            total = loss_d + lazy_r1(r1, cfg.r1_gamma, cfg.r1_interval)
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
        z = randn((n, self.config.z_dim), generator, device)
        with self._autocast(device):
            img = self.G_ema(z, truncation=truncation, noise_generator=generator)
        return img.float().clamp(-1.0, 1.0)


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
