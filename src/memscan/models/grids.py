"""Sample grids: a batch of images as one PNG, for a glance at training progress."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from memscan.core.atomic import atomic_path

GRID_ITEMS = 16


def write_grid(images: torch.Tensor, path: str | Path) -> Path:
    """Save ``[n, C, *S]`` images in ``[-1, 1]`` as one PNG grid (first channel; 3D: middle of last axis).

    Tiles are ``round(clip((x + 1) · 127.5))`` in a ``ceil(sqrt(n))``-column grid with 2-pixel black gutters.
    """
    from PIL import Image

    path = Path(path)
    x = images.detach().float().cpu()[:, 0]
    while x.ndim > 3:
        x = x[..., x.shape[-1] // 2]
    n, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2), dtype=np.uint8)
    tiles = np.clip(np.rint((x.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = tiles[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")  # the temporary name has no .png to infer it from
    return path
