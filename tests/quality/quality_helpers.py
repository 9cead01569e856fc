"""Helpers of the quality tests: phantom slice sets and a stand-in encoder.

``RandomConvEncoder`` is a TEST FIXTURE, not the product's encoder: a small convolutional network with
fixed random weights (seeded), which maps images to 32 features deterministically. The product uses a
user's TorchScript file or the self-supervised encoder of ``memscan.embed``.
"""

from __future__ import annotations

import numpy as np
import torch

from memscan import phantoms

SHAPE = (64, 64, 40)
SLICES_PER_SUBJECT = 12


def random_conv_net(seed: int = 0, in_channels: int = 1) -> torch.nn.Module:
    """Conv 5x5/2 → ReLU → conv 3x3/2 → ReLU → conv 3x3/2 → 2x2 average pool → 32 features."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 16, 5, stride=2, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 8, 3, stride=2, padding=1),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    ).eval()


class RandomConvEncoder:
    """Test stand-in of the Encoder interface (fixed random weights; see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.net = random_conv_net(seed)
        self.description = {"kind": "test-random-conv", "seed": seed, "output_dim": 32}

    def features(self, items: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
            return self.net(x).double().numpy()


def phantom_slices(subjects: range, *, seed: int = 3) -> np.ndarray:
    """T1 axial slices ``[n_subjects * 12, 1, 64, 64]`` float32 in [0, 1] of phantom brain subjects."""
    out = []
    for i in subjects:
        vol = phantoms.brain_subject(i, seed=seed, shape=SHAPE)["t1"]
        vol = vol / vol.max()
        ks = np.linspace(SHAPE[2] * 0.3, SHAPE[2] * 0.7, SLICES_PER_SUBJECT).round().astype(int)
        out += [np.rot90(vol[:, :, k])[None] for k in ks]
    return np.stack(out).astype(np.float32)


def write_dataset(path, items: np.ndarray, prefix: str, subjects_of: int = 12):
    """A float32 single-channel dataset folder of ``items``, ``subjects_of`` items per subject."""
    from memscan.dataset.store import DatasetWriter

    with DatasetWriter(path, items.shape[1:], "float32", ("t1",), {"name": "test"}) as w:
        for i, item in enumerate(items):
            w.add(item, {"id": f"{prefix}{i:04d}", "subject": f"{prefix}s{i // subjects_of}"})
        return w.commit()
