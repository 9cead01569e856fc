"""DDPM's sampling loop: the ancestral sampler and DDIM, with every random number from our generators.

MONAI's schedulers give the deterministic parts (x̂_0, the posterior mean, σ_t); the noise is drawn on the
CPU from per-item (or per-batch) ``torch.Generator`` objects and moved to the device, so a sample depends
on its seed only, not on the device's RNG or the batch size.

Ho, Jain & Abbeel 2020, arXiv 2006.11239 (Algorithm 2, the ancestral sampler); Song, Meng & Ermon 2021,
arXiv 2010.02502 (DDIM, eq. 12 and 16); Nichol & Dhariwal 2021, arXiv 2102.09672 §4 (the strided chain).
"""

from __future__ import annotations

from typing import Any

import torch

from memscan.models.device import autocast
from memscan.models.rng import NoiseSource, randn


@torch.no_grad()
def run_chain(
    net: torch.nn.Module,
    sched: Any,
    x: torch.Tensor,
    *,
    sampler: str,
    eta: float,
    generator: NoiseSource,
    amp: torch.dtype | None,
) -> torch.Tensor:
    """Denoise ``x`` (``[n, C, *S]``, x_T) along ``sched.timesteps`` with ``net``; returns x_0 in ``[-1, 1]``.

    Args:
        net: the ε (or v, or x_0) prediction network, called as ``net(x, timesteps=t)``.
        sched: ``DDPMScheduler`` (``sampler="ddpm"``, every step) or strided ``DDIMScheduler`` (``"ddim"``).
        x: the initial noise on the network's device.
        sampler: ``ddpm`` or ``ddim``.
        eta: DDIM's η (1 on the strided ancestral chain).
        generator: the noise's generator(s).
        amp: autocast dtype of the network, or None.
    """
    device = x.device
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)
    n = x.shape[0]
    for t in sched.timesteps.tolist():
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        with autocast(device, amp):
            out = net(x, timesteps=tt)
        out = out.float()
        if sampler == "ddim":
            x = ddim_step(sched, out, t, x, eta, generator)
        else:
            x = ddpm_step(sched, out, t, x, generator)
    return x.clamp(-1.0, 1.0).contiguous()


def ddim_step(
    sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor, eta: float, generator: NoiseSource
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
    z = randn(tuple(x.shape), generator, x.device)
    return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma2).clamp(min=0).sqrt() * eps + sigma2.sqrt() * z


def ddpm_step(
    sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor, generator: NoiseSource
) -> torch.Tensor:
    """Ancestral step x_t → x_{t−1} (Ho et al. 2020 eq. 6–7 via MONAI's step, σ_t² = β̃_t).

    MONAI's ``DDPMScheduler.step`` draws its noise from a generator on the model's device; we call it
    without noise (at t = 0 it adds none) by computing the mean with MONAI and adding our own noise.
    """
    alphas_cumprod = sched.alphas_cumprod.to(x.device)
    sched.alphas_cumprod = alphas_cumprod
    mean, _ = ddpm_mean(sched, model_output, t, x)
    if t == 0:
        return mean
    var = sched._get_variance(t).to(x.device)
    return mean + var.sqrt() * randn(tuple(x.shape), generator, x.device)


def ddpm_mean(sched: Any, model_output: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
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
