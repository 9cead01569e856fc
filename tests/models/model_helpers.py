"""Small data makers shared by the model tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memscan.dataset.store import DatasetWriter
from memscan.models.base import DataInfo


def smooth_batch(data: DataInfo, n: int = 4, seed: int = 0) -> torch.Tensor:
    """A fixed batch of smooth blobs in [-1, 1], ``[n, C, *S]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, data.n_channels, *[max(1, s // 4) for s in data.spatial_shape]), generator=g)
    mode = "bilinear" if data.spatial_dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(x, size=data.spatial_shape, mode=mode) * 2 - 1


def write_items(path: Path, items: np.ndarray, channels: tuple[str, ...] | None = None) -> Path:
    """``items [n, C, *S]`` as a dataset folder (ids ``item{i}``, subjects ``s{i % 3}``)."""
    channels = channels or tuple(f"c{i}" for i in range(items.shape[1]))
    with DatasetWriter(path, items.shape[1:], str(items.dtype), channels, recipe={"name": "test"}) as w:
        for i, item in enumerate(items):
            w.add(item, {"id": f"item{i}", "subject": f"s{i % 3}"})
        w.commit()
    return path
