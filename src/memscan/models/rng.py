"""Random numbers of training and sampling: one normal-noise drawer, seeded generators, RNG forks.

A sample must depend on its seed only, not on the device's RNG or on the batch it was generated in, so the
samplers draw their noise from CPU ``torch.Generator`` objects (one per item, or one per batch) and move it
to the device; training draws from the device's own generators, which the loop seeds and checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

NoiseSource = torch.Generator | list[torch.Generator] | None
"""Where random numbers come from: one generator, one CPU generator per item, or the global RNG."""


def randn(shape: tuple[int, ...], generator: NoiseSource, device: torch.device | str) -> torch.Tensor:
    """``N(0, 1)`` of ``shape`` on ``device``.

    Drawn on ``generator``'s device (the global RNG of ``device`` if ``None``) and moved to ``device``; a
    list of CPU generators draws item ``i`` (``shape[0]`` items) from generator ``i``, so each item is
    independent of the batch it is in.

    Raises:
        ValueError: a list whose length is not ``shape[0]``.
    """
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator]).to(device)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def _seeded(entropy: list[int]) -> torch.Generator:
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def item_generators(seed: int, first: int, n: int) -> list[torch.Generator]:
    """One CPU generator per item ``first .. first + n - 1``, seeded from ``(seed, item index)`` only."""
    return [_seeded([int(seed), int(i)]) for i in range(first, first + n)]


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator of batch ``batch_index`` (families without per-item generators).

    The constant ``2**31`` in the entropy keeps these streams apart from :func:`item_generators`'.
    """
    return _seeded([int(seed), 2**31, int(batch_index)])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """Random numbers drawn inside (e.g. a sample grid during training) leave every global RNG unchanged."""
    devices = [device.index or 0] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)
