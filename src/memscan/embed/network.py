"""The encoder network: a small 2D CNN, all channels of an item as input channels.

Why a hand-written ``nn.Sequential`` and not a MONAI network: the encoder must embed an item the same way
whatever batch it comes in (GroupNorm, no BatchNorm: the scan's results never depend on block sizes) and
stay tiny enough to train in minutes on two CPU cores; MONAI's classifiers (DenseNet, ResNet, ViT) are
built around BatchNorm or are orders of magnitude larger.

Input: ``[N, C, S, S]`` float32 (items resized to ``input_size`` and standardised per item and channel).
Output of :meth:`Encoder.forward`: ``[N, width * 4]`` features; the SimCLR projection head is separate
(Chen et al. 2020: the representation *before* the head transfers better, so it is what we embed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from memscan.core.validate import check_int


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the encoder.

    Attributes:
        in_channels: channels of an item (all are used).
        width: channels of the first convolution (doubled twice).
        proj_dim: output size of the projection head (training only).
    """

    in_channels: int = 1
    width: int = 32
    proj_dim: int = 64

    def __post_init__(self) -> None:
        check_int(self.in_channels, "in_channels", minimum=1)
        check_int(self.width, "width", minimum=4)
        check_int(self.proj_dim, "proj_dim", minimum=2)

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=2, padding=1),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    ]


class Encoder(nn.Module):
    """Four stride-2 stages (``S → S/16``), global average pooling; ``features = 4 · width``."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.backbone = nn.Sequential(
            *_block(cfg.in_channels, w),
            *_block(w, 2 * w),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, cfg.proj_dim)
        )

    @property
    def dim(self) -> int:
        return 4 * self.cfg.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
