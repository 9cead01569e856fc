"""The encoder: deterministic, cached, resumable; embeddings normalised and batch-invariant."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import memscan.embed.train as train_mod
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.embed import EncoderConfig, embed, train_encoder
from memscan.embed.train import CHECKPOINT_FILE, MODEL_FILE, nt_xent
from memscan.errors import InputError

TINY = dict(input_size=16, width=8, steps=4, batch=6, checkpoint_every=2)


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Dataset:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("embed") / "ds"
    with DatasetWriter(path, item_shape=(2, 24, 24), dtype="uint8", channels=("a", "b"), recipe={}) as w:
        yy, xx = np.mgrid[:24, :24]
        for i in range(12):
            blob = np.exp(
                -((yy - rng.uniform(6, 18)) ** 2 + (xx - rng.uniform(6, 18)) ** 2) / rng.uniform(10, 40)
            )
            item = np.stack([blob, blob**2]) * 255
            w.add(item.astype(np.uint8), {"id": f"i{i}", "subject": f"s{i // 3}"})
        return w.commit()


def _weights(enc) -> dict[str, torch.Tensor]:
    return load_file(str(enc.path / MODEL_FILE))


def test_training_is_deterministic_and_cached(tiny_ds, tmp_path):
    cfg = EncoderConfig(**TINY)
    a = train_encoder(tiny_ds, tmp_path / "a", cfg)
    b = train_encoder(tiny_ds, tmp_path / "b", cfg)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    mtime = (a.path / MODEL_FILE).stat().st_mtime_ns
    again = train_encoder(tiny_ds, tmp_path / "a", cfg)
    assert again.path == a.path and (a.path / MODEL_FILE).stat().st_mtime_ns == mtime
    assert not (a.path / CHECKPOINT_FILE).exists()
    other = train_encoder(tiny_ds, tmp_path / "a", EncoderConfig(**{**TINY, "seed": 1}))
    assert other.path != a.path
    meta = json.loads((a.path / "config.json").read_text())
    assert meta["config"]["steps"] == 4 and meta["in_channels"] == 2
    assert a.description["dim"] == 32 and "SimCLR" in a.description["method"]


def test_interrupted_training_resumes_to_the_same_weights(tiny_ds, tmp_path, monkeypatch):
    cfg = EncoderConfig(**TINY)
    whole = _weights(train_encoder(tiny_ds, tmp_path / "whole", cfg))
    calls = {"n": 0}
    real = train_mod.augment

    def failing(x, c, g):
        calls["n"] += 1
        if calls["n"] > 6:  # two views per step: dies during step 4, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(x, c, g)

    monkeypatch.setattr(train_mod, "augment", failing)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(tiny_ds, tmp_path / "resumed", cfg)
    ckpts = list((tmp_path / "resumed").glob(f"encoder-*/{CHECKPOINT_FILE}"))
    assert len(ckpts) == 1 and int(load_file(str(ckpts[0]))["step"]) == 2
    monkeypatch.setattr(train_mod, "augment", real)
    resumed = _weights(train_encoder(tiny_ds, tmp_path / "resumed", cfg))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_embed_is_normalised_and_batch_invariant(tiny_ds, tmp_path):
    enc = train_encoder(tiny_ds, tmp_path, EncoderConfig(**TINY))
    items = tiny_ds.read(0, 12)
    e = embed(enc, items)
    assert e.shape == (12, enc.dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embed(enc, items[i : i + 1]) for i in range(12)])
    np.testing.assert_allclose(one_by_one, e, atol=1e-5)
    np.testing.assert_allclose(embed(enc, items, batch=5), e, atol=1e-5)


def test_embed_refuses_wrong_channels(tiny_ds, tmp_path):
    enc = train_encoder(tiny_ds, tmp_path, EncoderConfig(**TINY))
    with pytest.raises(InputError, match=r"\[N, 2, H, W\]"):
        embed(enc, np.zeros((2, 3, 24, 24), dtype=np.uint8))


def test_nt_xent_matches_a_naive_float64_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1).numpy()
    t, n, total = 0.3, 10, 0.0
    for i in range(n):
        j = (i + 5) % n
        logits = np.array([z[i] @ z[m] / t for m in range(n) if m != i])
        others = [m for m in range(n) if m != i]
        total += -(z[i] @ z[j] / t) + np.log(np.exp(logits).sum())
        assert j in others
    assert abs(float(nt_xent(z1, z2, t)) - total / n) < 1e-5


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"batch": 1}, {"lr": -1.0}, {"input_size": 4}])
def test_bad_encoder_config_is_refused(kwargs):
    with pytest.raises(InputError):
        EncoderConfig(**kwargs)
