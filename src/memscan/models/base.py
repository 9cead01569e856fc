"""What every generative model family (DDPM, StyleGAN2) offers the shared training loop and sampler.

The training loop (``memscan.models.train``) owns data loading, devices, mixed precision, checkpoints,
resume, logs and sample grids; a model family owns its networks, losses and sampling. Images cross this
boundary as float tensors scaled to ``[-1, 1]``, shaped ``[B, C, H, W]`` (2D) or ``[B, C, D, H, W]`` (3D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class DataInfo:
    """The training data's shape, taken from the dataset folder.

    Attributes:
        channels: channel names (``len`` = C).
        spatial_shape: ``(H, W)`` or ``(D, H, W)``.
        dtype: stored dtype of the dataset (``uint8`` → scaled by 127.5, float → by its range).
    """

    channels: tuple[str, ...]
    spatial_shape: tuple[int, ...]
    dtype: str = "uint8"

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerativeModel(Protocol):
    """A model family as the training loop and the sampler see it."""

    name: str  # "ddpm" | "stylegan2"

    def config_dict(self) -> dict[str, Any]:
        """The resolved config (saved as JSON beside the weights)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Networks whose weights are checkpointed (safetensors), e.g. ``{"unet": ..., "ema": ...}``."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers whose state is checkpointed."""

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on ``batch [B, C, *S]`` in ``[-1, 1]``; returns scalars to log."""

    def extra_state(self) -> dict[str, float | int]:
        """Small non-tensor state to checkpoint (e.g. StyleGAN2-ADA's augmentation probability)."""

    def load_extra_state(self, state: dict[str, float | int]) -> None:
        """Restore ``extra_state``."""

    def sample(self, n: int, generator: torch.Generator, **options: Any) -> torch.Tensor:
        """``n`` samples ``[n, C, *S]`` in ``[-1, 1]`` from the EMA weights; deterministic for a generator."""
