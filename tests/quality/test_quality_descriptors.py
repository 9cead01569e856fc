"""The image statistics beside the learned embedding, their standardisation, and the default encoder's
sanity on phantoms (fresh, copies, noise)."""

from __future__ import annotations

import numpy as np
import pytest
from quality_helpers import write_dataset

from memscan.embed import EncoderConfig, train_encoder
from memscan.quality.descriptors import CombinedEncoder, ImageStatistics
from memscan.quality.panel import QualityOptions, assess_quality, standardise_blocks
from memscan.scanning.robust_stage import EmbeddingEncoder


def test_image_statistics_see_noise_blur_and_intensity():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    smooth = (0.2 + 0.6 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.1))[None, None]
    noisy = np.clip(smooth + rng.normal(0, 0.1, smooth.shape), 0, 1)
    const = np.full_like(smooth, 0.4)
    items = np.concatenate([smooth, noisy, const, smooth * 0.5]).astype(np.float32)
    f = ImageStatistics().features(items)
    names = ImageStatistics.description["per_channel"]
    assert f.shape == (4, len(names)) == (4, 12)
    col = {n: f[:, i] for i, n in enumerate(names)}
    assert col["band_rms_1px"][1] > 3 * col["band_rms_1px"][0]  # noise: fine-scale energy (borders: zero pad)
    assert col["grad_mean"][1] > 5 * col["grad_mean"][0]
    assert col["std"][2] == 0 and col["grad_mean"][2] == 0  # a constant image
    assert col["q50"][2] == pytest.approx(0.4)
    assert col["mean"][3] == pytest.approx(col["mean"][0] / 2, rel=1e-5)  # intensity changes count
    multi = ImageStatistics().features(np.concatenate([items, items[:, :1] * 0.3], axis=1))
    assert multi.shape == (4, 24) and np.allclose(multi[:, :12], f)


def test_standardise_blocks_gives_each_block_unit_total_variance():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 8)) * np.array([5.0, 1, 1, 1, 1, 1, 1, 0.01])
    stats = rng.normal(size=(200, 3)) * np.array([1000.0, 0.001, 0.0]) + 7
    feats = {"train": np.hstack([emb, stats]), "other": np.hstack([emb[:10] * 2, stats[:10]])}
    out = standardise_blocks(feats, [("emb", 8, False), ("stats", 3, True)])
    tr = out["train"]
    assert tr[:, :8].var(axis=0).sum() == pytest.approx(1.0)
    assert tr[:, 8:].var(axis=0).sum() == pytest.approx(2.0 / 3.0)  # the constant column stays 0
    # the embedding keeps its geometry (one factor for the block); the statistics are z-scored per column
    ratio = tr[:, :8].std(axis=0) / emb.std(axis=0)
    assert np.allclose(ratio, ratio[0])
    assert np.allclose(tr[:, 8:10].std(axis=0), 1 / np.sqrt(3))
    assert np.allclose(out["other"][:, :8], (emb[:10] * 2 - emb.mean(axis=0)) * ratio[0])
    with pytest.raises(ValueError):
        standardise_blocks(feats, [("emb", 8, False)])


@pytest.fixture(scope="module")
def default_panels(tmp_path_factory, slice_sets):
    """The panel with the scan's default encoder (embedding trained on the training phantoms + image
    statistics) for fresh slices, copies and noise."""
    root = tmp_path_factory.mktemp("default-enc")
    ds = {k: write_dataset(root / k, v, k) for k, v in slice_sets.items()}
    trained = train_encoder(ds["train"], root / "cache", EncoderConfig(input_size=32, steps=60, batch=32))
    opts = QualityOptions(kid_subset_size=50, ct_min_synthetic=5)
    panels = {}
    for name in ("fresh", "copies", "noise"):
        enc = CombinedEncoder(EmbeddingEncoder(trained), ImageStatistics())
        panels[name] = assess_quality(ds["train"], ds["holdout"], ds[name], enc, opts)
    return panels


def test_default_encoder_sanity(default_panels):
    fresh, copies, noise = default_panels["fresh"], default_panels["copies"], default_panels["noise"]
    assert noise["precision"] < 0.05 and noise["fd_relative"] > 10  # the embedding alone does not see noise
    assert copies["authenticity"] < 0.05 and copies["ct_statistic"] < fresh["ct_statistic"] - 5
    assert fresh["authenticity"] > 0.3 and fresh["precision"] > 0.5
    assert fresh["fd_relative"] < noise["fd_relative"] / 10
    assert [b["width"] for b in fresh["feature_blocks"]] == [64, 12]
    assert fresh["encoder"]["parts"][1]["kind"] == "image statistics"
