"""The settings the training and sampling loops give the models on CUDA, run on the CPU.

On a GPU the loops configure bf16 autocast and channels-last (``memscan.models.train.speed_settings``); on
the CPU neither. CPU autocast supports bf16 too, so the dtype and memory-layout paths that only a GPU run
would otherwise take are exercised here: finite losses, float32 weights, checkpoints that a plain float32
model loads, exact resume, and samples that scan.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from model_helpers import smooth_batch, write_items

from memscan.models import device as device_module
from memscan.models import folder as folder_module
from memscan.models import train as train_module
from memscan.models.base import DataInfo
from memscan.models.registry import build_model
from memscan.models.sample import sample_model
from memscan.models.train import read_log, train_model

CUDA_LIKE = {"amp": torch.bfloat16, "channels_last": True}
CHANNELS = ("t1", "t2", "t1ce", "flair", "seg")


def _model(family: str, data: DataInfo):
    torch.manual_seed(0)
    return build_model(family, None, data, preset="tiny")


def test_speed_settings_per_device():
    assert device_module.speed_settings(torch.device("cpu")) == {"amp": None, "channels_last": False}
    assert device_module.speed_settings(torch.device("cuda")) == CUDA_LIKE


@pytest.mark.parametrize("family", ["ddpm", "stylegan2"])
@pytest.mark.parametrize(("shape", "n_channels"), [((16, 16), 1), ((16, 16), 3), ((8, 8, 8), 2)])
def test_train_steps_and_sampling_under_bf16_and_channels_last(family, shape, n_channels):
    data = DataInfo(CHANNELS[:n_channels], shape)
    model = _model(family, data)
    model.configure(torch.device("cpu"), **CUDA_LIKE)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in model.modules().items()}
    for step in range(3):  # StyleGAN2's step 0 includes the lazy R1 pass
        out = model.train_step(smooth_batch(data, 4, seed=step), step)
        assert all(math.isfinite(float(v)) for v in out.values()), out
    for key, module in model.modules().items():
        params = list(module.parameters())
        assert all(p.dtype == torch.float32 for p in params), key  # autocast leaves the weights float32
        changed = [not torch.equal(a, b) for a, b in zip(before[key], params, strict=True)]
        assert any(changed), key
    y = model.sample(
        3, torch.Generator().manual_seed(0), **({"sampling_steps": 2} if family == "ddpm" else {})
    )
    assert y.shape == (3, n_channels, *shape) and y.dtype == torch.float32
    assert torch.isfinite(y).all() and y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("family", ["ddpm", "stylegan2"])
def test_bf16_losses_are_close_to_float32(family):
    """Same weights, same random numbers: the first step's losses agree to bf16's precision (not a bug's)."""
    data = DataInfo(CHANNELS[:2], (16, 16))
    fp32 = _model(family, data)
    bf16 = copy.deepcopy(fp32)
    fp32.configure(torch.device("cpu"))
    bf16.configure(torch.device("cpu"), **CUDA_LIKE)
    batch = smooth_batch(data, 8)
    torch.manual_seed(1)
    a = fp32.train_step(batch, 1)
    torch.manual_seed(1)
    b = bf16.train_step(batch, 1)
    assert set(a) == set(b)
    assert any(float(a[k]) != float(b[k]) for k in a)  # bf16 did run
    for key in a:
        x, y = float(a[key]), float(b[key])
        assert y == pytest.approx(x, rel=0.05, abs=0.02), (key, x, y)


@pytest.mark.parametrize("family", ["ddpm", "stylegan2"])
def test_loop_with_cuda_settings_resumes_exactly_and_its_checkpoints_load_in_float32(
    family, tmp_path, monkeypatch
):
    """Train with the GPU's settings (killed and resumed), then sample with the CPU's: the GPU-to-CPU path."""
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan

    rng = np.random.default_rng(0)
    data = write_items(tmp_path / "data", rng.integers(0, 256, size=(6, 2, 16, 16), dtype=np.uint8))
    kw = dict(batch=2, checkpoint_every=2, preset="tiny", device="cpu", log_every=1, sample_every=2)
    with monkeypatch.context() as m:
        for module in (train_module, folder_module):  # where the loops call it
            m.setattr(module, "speed_settings", lambda device: dict(CUDA_LIKE))
        train_model(data, tmp_path / "a", family, steps=4, **kw)
        train_model(data, tmp_path / "b", family, steps=2, **kw)
        kw.pop("preset")
        train_model(data, tmp_path / "b", family, steps=4, resume=True, **kw)
        gpu_like = sample_model(tmp_path / "a", 3, tmp_path / "s_bf16", seed=3, device="cpu")
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    keys = [k for k in a[0] if k.startswith("loss")]
    assert keys and all(math.isfinite(r[k]) for r in a for k in keys)
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert sorted(p.name for p in (tmp_path / "a" / "samples").glob("*.png"))  # grids under autocast
    plain = sample_model(tmp_path / "a", 3, tmp_path / "s_fp32", seed=3, device="cpu")  # float32, CPU layout
    assert plain.item_shape == gpu_like.item_shape == (2, 16, 16)
    # the same weights sampled in float32 and in bf16: the images agree to bf16's precision
    diff = np.abs(plain.read(0, 3).astype(float) - gpu_like.read(0, 3).astype(float))
    assert 0 < diff.max() and np.median(diff) <= 8, (diff.max(), np.median(diff))  # bf16 ran, and agrees
    result = scan(data, plain.path, tmp_path / "run", ScanOptions(top_k=1, baseline_items=0), report=False)
    assert len(result.synthetic) == 3
