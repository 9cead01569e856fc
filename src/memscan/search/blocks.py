"""A train block as the screens see it: prepared rows, screened scores, exclusion groups, k-th values."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class _Prepared:
    start: int
    raw: np.ndarray  # [nb, d] raw rows
    mean: np.ndarray
    norm: np.ndarray
    valid: np.ndarray
    z: torch.Tensor | None  # normalised rows on the device (screen dtype), or pending copy
    raw_dev: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None
    int_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # int8 path: Σx' and d²·variance
    chunks: list[torch.Tensor] | None = None  # int8 path on the CPU: x - 128, one tensor per reduction chunk
    extra: Any = None  # int16 path: the block's exact statistics (screen_int16.IntStats)


@dataclass
class _Screened:
    prep: _Prepared
    scores: torch.Tensor  # [nq, nb] float32/float64 on the device, -inf for invalid items
    s_k: torch.Tensor | None  # [nq] k-th largest screened value in the block (-inf if fewer than k valid)
    acc: torch.Tensor | None = None  # int8 path: the exact integer products Σx'y' [nq, nb]


@dataclass
class _Groups:
    """Exclusion groups: query q never matches train item t when ``query[q] == train[t]``.

    Used for the train-vs-train baselines (group = the item itself, or its subject).
    """

    query: np.ndarray  # int64 [nq]
    train: np.ndarray  # int64 [n_train]

    def same(self, start: int, n: int, device: torch.device) -> torch.Tensor:
        q = torch.from_numpy(self.query).to(device)
        t = torch.from_numpy(self.train[start : start + n]).to(device)
        return q[:, None] == t[None, :]


def _mask_and_kth(scores: torch.Tensor, prep: _Prepared, k: int, groups: _Groups | None) -> torch.Tensor:
    """Set invalid items (and excluded same-group pairs) to -inf in place; return each row's k-th value.

    Args:
        scores: ``[nq, nb]`` screened (or exact) values of one block.
        prep: the block (validity, start index).
        k: neighbours per query.
        groups: optional exclusion groups: a pair (q, t) with equal group ids is never matched.

    Returns:
        ``[nq]`` k-th largest value per row (``-inf`` if the row has fewer than k eligible items).
    """
    _mask_excluded(scores, prep, groups)
    return _kth(scores, k)


def _mask_excluded(scores: torch.Tensor, prep: _Prepared, groups: _Groups | None) -> None:
    """Set invalid items and excluded same-group pairs to -inf in place."""
    if not prep.valid.all():
        scores.masked_fill_(torch.from_numpy(~prep.valid).to(scores.device)[None, :], -math.inf)
    if groups is not None:
        scores.masked_fill_(groups.same(prep.start, scores.shape[1], scores.device), -math.inf)


def _kth(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k-th largest value (``-inf`` if the row has fewer than k items)."""
    if scores.shape[1] >= k:
        return torch.topk(scores, k, dim=1, largest=True, sorted=True).values[:, -1]
    return torch.full((scores.shape[0],), -math.inf, dtype=scores.dtype, device=scores.device)


def _pad_to(n: int, multiple: int, minimum: int = 0) -> int:
    return max(minimum, -(-n // multiple) * multiple)
