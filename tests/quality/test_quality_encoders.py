"""The TorchScript encoder: loading, grey-scale to 3 channels, resizing, description, refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from quality_helpers import random_conv_net

from memscan.core.fingerprint import file_digest
from memscan.errors import InputError
from memscan.quality.encoders import Encoder, TorchScriptEncoder, encode, intensity_scale


def _save_script(path, in_channels: int) -> None:
    net = random_conv_net(seed=1, in_channels=in_channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, torch.zeros(1, in_channels, 32, 32)).save(str(path))


def test_three_channel_network_gets_grey_items_repeated_and_resized(tmp_path):
    path = tmp_path / "enc3.pt"
    _save_script(path, 3)
    enc = TorchScriptEncoder(path, size=48)
    assert isinstance(enc, Encoder)
    items = np.random.default_rng(0).random((5, 1, 64, 64)).astype(np.float32)
    f = enc.features(items)
    assert f.shape == (5, 32) and f.dtype == np.float64
    # the same computation by hand: resize, repeat to RGB, the network
    x = torch.nn.functional.interpolate(
        torch.from_numpy(items), size=(48, 48), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        ref = random_conv_net(seed=1, in_channels=3)(x.repeat(1, 3, 1, 1)).double().numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-6)
    d = enc.description
    assert d["kind"] == "torchscript" and d["file"] == "enc3.pt" and d["output_dim"] == 32
    assert d["input_channels"] == 3 and d["input_size"] == 48
    assert d["sha256"] == file_digest(path, length=64)


def test_multichannel_items_are_encoded_channel_by_channel(tmp_path):
    path = tmp_path / "enc3.pt"
    _save_script(path, 3)
    items = np.random.default_rng(2).random((4, 2, 32, 32)).astype(np.float32)
    enc = TorchScriptEncoder(path, size=None)
    f = enc.features(items)
    assert f.shape == (4, 64) and enc.description["per_channel"] is True
    for c in range(2):
        np.testing.assert_allclose(f[:, 32 * c : 32 * (c + 1)], enc.features(items[:, c : c + 1]), rtol=1e-6)


def test_torch_export_archive_specialised_to_batch_one(tmp_path):
    net = random_conv_net(seed=1, in_channels=3)
    path = tmp_path / "enc.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), str(path))
    items = np.random.default_rng(3).random((5, 1, 40, 40)).astype(np.float32)
    enc = TorchScriptEncoder(path, size=32)
    f = enc.features(items)
    assert enc.description["kind"] == "torch.export" and enc.batch == 1 and f.shape == (5, 32)
    x = torch.nn.functional.interpolate(
        torch.from_numpy(items), size=(32, 32), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        np.testing.assert_allclose(f, net(x.repeat(1, 3, 1, 1)).double().numpy(), rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_features(tmp_path):
    path = tmp_path / "enc1.pt"
    _save_script(path, 1)
    items = np.random.default_rng(1).random((9, 1, 32, 32)).astype(np.float32)
    a = TorchScriptEncoder(path, size=None, batch=2).features(items)
    b = TorchScriptEncoder(path, size=None, batch=64).features(items)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert TorchScriptEncoder(path, size=None).description["input_channels"] is None  # not probed yet


def test_state_dict_missing_file_and_wrong_channels_are_input_errors(tmp_path):
    sd = tmp_path / "weights.pth"
    torch.save(random_conv_net().state_dict(), sd)
    with pytest.raises(InputError, match="state dict.*TorchScript file"):
        TorchScriptEncoder(sd)
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a torch archive"):
        TorchScriptEncoder(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="does not exist"):
        TorchScriptEncoder(tmp_path / "nope.pt")
    path = tmp_path / "enc3.pt"
    _save_script(path, 3)
    with pytest.raises(InputError, match="does not accept these items"):
        TorchScriptEncoder(path, in_channels=2).features(np.zeros((2, 2, 32, 32), np.float32))
    with pytest.raises(InputError, match="2D items"):
        TorchScriptEncoder(path).features(np.zeros((2, 1, 8, 8, 8), np.float32))


def test_intensity_scale_and_encode():
    assert intensity_scale(np.zeros((2, 1, 4, 4), np.uint8)) == (0.0, 255.0)
    assert intensity_scale(np.array([[[[10, 4095]]]], np.uint16)) == (10.0, 4095.0)
    x = np.linspace(-1, 3, 32, dtype=np.float32).reshape(2, 1, 4, 4)
    assert intensity_scale(x) == (-1.0, 3.0)
    assert intensity_scale(np.ones((2, 1, 4, 4), np.float32)) == (1.0, 2.0)

    class Bad:
        description: dict = {}

        def features(self, items):
            return np.full((len(items), 2), np.nan)

    with pytest.raises(InputError, match="NaN"):
        encode(Bad(), x, (-1.0, 3.0))
