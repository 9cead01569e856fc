"""Items → feature rows: the selected channels and the pixels inside the shared mask, flattened.

Shapes: items ``[n, C, *S]`` (``S`` = ``(H, W)`` or ``(X, Y, Z)``) → rows ``[n, d]``. The stored dtype is
kept (uint8 stays uint8) so blocks stay small; the engine normalizes. This lives in ``search/`` because
both the local scan and the Dask workers (``search/cluster.py``) turn items into rows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.search import variants

__all__ = ["Features"]


@dataclass
class Features:
    """Items ``[n, C, *S]`` → feature rows ``[n, d]`` (selected channels, pixels inside the mask).

    Attributes:
        channels: channel positions to keep, or None for all.
        mask: bool ``[C', *S]`` after channel selection, or None for every pixel.
    """

    channels: list[int] | None
    mask: np.ndarray | None

    def __call__(self, items: np.ndarray) -> np.ndarray:
        """``[n, C, *S]`` → ``[n, d]`` in the items' dtype."""
        if self.channels is not None:
            items = items[:, self.channels]
        if self.mask is not None:
            return variants.apply_mask(items, self.mask)
        return items.reshape(len(items), -1)

    def select(self, items: np.ndarray) -> np.ndarray:
        """``[n, C, *S]`` → ``[n, C', *S]``: the selected channels only (the shift re-rank's view)."""
        return items if self.channels is None else items[:, self.channels]

    def dim(self, item_shape: tuple[int, ...]) -> int:
        """``d``, the length of a feature row for items of shape ``item_shape = (C, *S)``."""
        if self.mask is not None:
            return int(self.mask.sum())
        c = len(self.channels) if self.channels is not None else item_shape[0]
        return int(c * np.prod(item_shape[1:]))


def check_finite_train(train: Dataset, start: int, rows: np.ndarray) -> np.ndarray:
    """Refuse training feature rows ``[n, d]`` (items ``start..start+n``) holding NaN or ±Inf.

    The engine gives such an item no correlation, so it would be silently never matched: a copy of it
    would go unflagged. Integer rows cannot hold them and are not scanned (no cost for 8/16-bit data).

    Raises:
        InputError: naming the first such item and the count in this block.
    """
    if rows.dtype.kind != "f":
        return rows
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(
            f"training item {str(train.ids[start + int(bad[0])])!r} holds NaN or infinite values "
            f"({len(bad)} such item(s) in items {start}..{start + len(rows) - 1}): it could never be "
            "matched; re-prepare the training set (prepare refuses such values; --nan zero reads NaN as 0)",
            train.path,
        )
    return rows
