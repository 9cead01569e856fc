"""Intensity scaling between a dataset's stored values and the networks' ``[-1, 1]``.

uint8 data map ``[0, 255]`` to ``[-1, 1]``; float data map their own minimum and maximum, which are saved in
the model folder's ``config.json`` so that samples are written back in the training data's units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from memscan.dataset.store import Dataset
from memscan.errors import InputError


def data_scaling(ds: Dataset) -> dict[str, float]:
    """``{"lo", "hi"}`` mapped to -1 and 1: ``[0, 255]`` for uint8, else the data's own min and max."""
    if ds.dtype == np.uint8:
        return {"lo": 0.0, "hi": 255.0}
    lo, hi = math.inf, -math.inf
    for _, block in ds.iter_blocks(max(1, 2**26 // max(1, ds.item_nbytes))):
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if not hi > lo:
        raise InputError(f"every pixel of the dataset has the value {lo}: nothing to learn", ds.path)
    return {"lo": lo, "hi": hi}


def to_model_range(x: torch.Tensor, scaling: dict[str, float]) -> torch.Tensor:
    """Stored values ``[n, C, *S]`` → float32 in ``[-1, 1]``."""
    lo, hi = scaling["lo"], scaling["hi"]
    return (x.float() - lo) * (2.0 / (hi - lo)) - 1.0


def from_model_range(x: torch.Tensor, scaling: dict[str, float], dtype: str | np.dtype) -> np.ndarray:
    """Float ``[-1, 1]`` ``[n, C, *S]`` → the stored dtype (uint8: ``round(clip((x + 1) · 127.5))``)."""
    dtype = np.dtype(dtype)
    lo, hi = scaling["lo"], scaling["hi"]
    y = (x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * ((hi - lo) / 2.0) + lo
    arr = y.numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    return arr.astype(dtype)
