"""Exponential moving average (EMA) of a network's weights, the weights both families sample from.

Polyak & Juditsky 1992, "Acceleration of stochastic approximation by averaging"; Ho et al. 2020 §4 (DDPM,
decay 0.9999); Karras et al. 2020 (ADA: the decay from a half-life in images, with a ramp-up).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema ← β · ema + (1 − β) · model`` for parameters; buffers (e.g. ``w_avg``) are copied.

    One multi-tensor kernel (``_foreach_lerp_``): a per-parameter loop is ~150 small launches per step on a
    GPU.

    Raises:
        ValueError: the two networks have different numbers of parameters.
    """
    ema_p = list(ema.parameters())
    src_p = [p.detach() for p in model.parameters()]
    if len(ema_p) != len(src_p):
        raise ValueError("EMA and model have different parameters")
    torch._foreach_lerp_(ema_p, src_p, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def warmup_decay(decay: float, n_updates: int, warmup: bool) -> float:
    """The decay of update ``n``: ``min(decay, (1 + n) / (10 + n))`` with ``warmup`` (the num_updates rule of
    TensorFlow's ExponentialMovingAverage, so early averages are not dominated by the random init), else
    ``decay``."""
    if not warmup:
        return decay
    return min(decay, (1.0 + n_updates) / (10.0 + n_updates))


def ema_beta(batch_size: int, ema_kimg: float, nimg: int = 0, rampup: float | None = None) -> float:
    """EMA decay per step for a half-life of ``ema_kimg`` thousand images (ADA's convention).

    ``β = 0.5 ** (batch_size / half_life)`` with ``half_life = ema_kimg · 1000`` images, limited to
    ``rampup · nimg`` (images seen so far) when ``rampup`` is set, so early weights are forgotten fast.
    """
    half_life = ema_kimg * 1000.0
    if rampup is not None:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


class EMA:
    """A frozen copy of a network that follows it by :func:`update_ema` with the :func:`warmup_decay` rule.

    Args:
        model: the trained network (copied).
        decay: the decay once warmed up.
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self, n_updates: int) -> float:
        return warmup_decay(self.decay, n_updates, self.warmup)

    def update(self, model: nn.Module, n_updates: int) -> None:
        """``ema ← d·ema + (1 − d)·θ`` with ``d`` the decay of update ``n_updates``."""
        update_ema(self.module, model, self.current_decay(n_updates))
