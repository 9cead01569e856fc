"""The training set held in memory (on the device when it fits) and its seeded batch sampler.

Speed (a plain MONAI loop on a GPU is launch-bound): the whole training set is kept on the device in its
stored dtype (uint8 stays uint8: 4x less memory) and batches are gathered and scaled there.
"""

from __future__ import annotations

import numpy as np
import torch

from memscan.dataset.store import Dataset
from memscan.models.base import DataInfo
from memscan.models.scaling import to_model_range


def data_info(ds: Dataset) -> DataInfo:
    """The shape a model family needs: channels, spatial shape and stored dtype of ``ds``."""
    return DataInfo(channels=tuple(ds.channels), spatial_shape=tuple(ds.item_shape[1:]), dtype=str(ds.dtype))


class DeviceData:
    """The training set held in memory (on the device when it fits) and a seeded batch sampler.

    Batches are drawn uniformly with replacement by a ``torch.Generator`` on the data's device, seeded from
    the run's seed; its state is checkpointed.

    Args:
        ds: the dataset (or split) to train on.
        scaling: ``{"lo", "hi"}`` mapped to ``[-1, 1]``.
        device: where the batches are needed.
        keep_on: where the stored items live (``device`` or the CPU).
        seed: seed of the batch generator.
    """

    def __init__(
        self, ds: Dataset, scaling: dict[str, float], device: torch.device, keep_on: torch.device, seed: int
    ) -> None:
        self.scaling = scaling
        self.device = device
        self.keep_on = keep_on
        blocks = [torch.from_numpy(np.ascontiguousarray(b)) for _, b in ds.iter_blocks(4096)]
        items = torch.cat(blocks)  # [N, C, *S] in the stored dtype
        if items.dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
            items = items.float()
        if keep_on.type == "cpu" and device.type == "cuda":
            items = items.pin_memory()
        self.items = items.to(keep_on)
        self.n = int(self.items.shape[0])
        self.generator = torch.Generator(device=keep_on).manual_seed(int(seed))

    def batch(self, size: int) -> torch.Tensor:
        """``[size, C, *S]`` float32 in ``[-1, 1]`` on the device."""
        idx = torch.randint(0, self.n, (size,), generator=self.generator, device=self.keep_on)
        x = self.items.index_select(0, idx)
        if self.keep_on != self.device:
            x = x.to(self.device, non_blocking=True)
        return to_model_range(x, self.scaling)
