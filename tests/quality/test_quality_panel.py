"""The quality panel: sanity on phantoms (fresh, copies, noise), dataset folders end to end, quality.json."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from quality_helpers import random_conv_net
from quality_helpers import write_dataset as _write

from memscan import phantoms
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.quality.encoders import TorchScriptEncoder, encode
from memscan.quality.panel import (
    CONTRACT_KEYS,
    QualityOptions,
    assess_quality,
    panel_from_features,
    write_quality,
)

OPTS = QualityOptions(kid_subset_size=50, ct_min_synthetic=5)


@pytest.fixture(scope="module")
def panels(slice_sets, encoder):
    """The panel of each synthetic candidate against the same training and held-out phantoms."""
    feats = {k: encode(encoder, v, (0.0, 1.0)) for k, v in slice_sets.items()}
    return {
        name: panel_from_features(feats["train"], feats["holdout"], feats[name], OPTS)
        for name in ("fresh", "copies", "noise")
    }


def test_fresh_real_slices_are_as_close_as_new_patients_and_authentic(panels):
    p = panels["fresh"]
    assert 0.6 < p["fd_relative"] < 1.6
    assert p["authenticity"] > 0.6
    assert p["precision"] > 0.8 and p["coverage"] > 0.5
    assert abs(p["ct_statistic"]) < 3 and p["ct_p_value"] > 0.01
    ref = p["holdout_reference"]
    assert p["authenticity"] == pytest.approx(ref["authenticity"], abs=0.15)


def test_copies_of_training_slices_are_not_authentic_and_copy_by_ct(panels):
    p, fresh = panels["copies"], panels["fresh"]
    assert p["authenticity"] < 0.05
    assert p["ct_statistic"] < fresh["ct_statistic"] - 5 and p["ct_p_value"] < 1e-6
    assert p["ct"]["ct_copying_cells"][0]["z_u"] < -5


def test_noise_has_no_precision_and_a_large_relative_fd(panels):
    p = panels["noise"]
    assert p["precision"] < 0.05 and p["density"] < 0.05
    assert p["fd_relative"] > 10
    assert p["kid"] > 10 * panels["fresh"]["kid"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, slice_sets):
    root = tmp_path_factory.mktemp("quality-ds")
    return {k: _write(root / k, v, k) for k, v in slice_sets.items()}


def test_assess_quality_on_dataset_folders_writes_the_contract(datasets, encoder, tmp_path):
    opts = QualityOptions(kid_subset_size=50, kid_subsets=20, ct_min_synthetic=5, ms_ssim_pairs=40)
    used = (datasets["train"], datasets["holdout"], datasets["copies"])
    p = assess_quality(*used, encoder, opts)
    assert list(p)[: len(CONTRACT_KEYS) + 1] == [*CONTRACT_KEYS, "encoder"]
    assert p["encoder"]["kind"] == "test-random-conv"
    assert p["ms_ssim"]["settings"]["kernel_size"] == 7 and len(p["ms_ssim"]["settings"]["weights"]) == 4
    assert p["ms_ssim"]["synthetic"]["n_pairs"] == 40
    assert 0 < p["ms_ssim_holdout"] < 1 and 0 < p["ms_ssim_synthetic"] < 1
    assert p["authenticity"] < 0.05 and p["holdout_reference"]["authenticity"] > 0.5
    assert p["n_items"] == {"train": 120, "holdout": 96, "synthetic": 96}
    path = write_quality(tmp_path, p)
    loaded = json.loads(path.read_text())
    assert set(CONTRACT_KEYS) <= set(loaded) and loaded["kid_std"] >= 0
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    # deterministic: the same inputs and seed give the same file
    (tmp_path / "again").mkdir()
    again = write_quality(tmp_path / "again", assess_quality(*used, encoder, opts))
    assert again.read_text() == path.read_text()


def test_subsampling_is_seeded_and_recorded(datasets, encoder):
    opts = QualityOptions(
        kid_subset_size=30, kid_subsets=5, ct_min_synthetic=5, ms_ssim_pairs=10, max_items=60
    )
    a = assess_quality(datasets["train"], datasets["holdout"], datasets["fresh"], encoder, opts)
    b = assess_quality(datasets["train"], datasets["holdout"], datasets["fresh"], encoder, opts)
    assert a == b and a["n_used"] == {"train": 60, "holdout": 60, "synthetic": 60}


def test_without_a_holdout_set_the_metrics_that_need_new_patients_are_none(datasets, encoder, monkeypatch):
    from memscan.quality import panel as panel_module

    opts = QualityOptions(kid_subset_size=30, kid_subsets=5, ms_ssim_pairs=70)
    with_hold = assess_quality(datasets["train"], datasets["holdout"], datasets["fresh"], encoder, opts)
    monkeypatch.setattr(panel_module, "MS_SSIM_PAIRS_PER_READ", 8)  # reading in chunks changes nothing
    p = assess_quality(datasets["train"], None, datasets["fresh"], encoder, opts)
    for key in ("fd_relative", "ct_statistic", "ct_p_value", "ms_ssim_holdout", "holdout_reference"):
        assert p[key] is None, key
    for key in ("fd", "precision", "recall", "density", "coverage", "authenticity", "ms_ssim_synthetic"):
        assert p[key] == pytest.approx(with_hold[key]), key
    assert p["n_items"] == {"train": 120, "synthetic": 96}


def test_undefined_values_are_written_as_null(tmp_path):
    path = write_quality(
        tmp_path, {"ct_statistic": float("nan"), "fd_relative": float("inf"), "x": [np.float32(1)]}
    )
    assert json.loads(path.read_text()) == {"ct_statistic": None, "fd_relative": None, "x": [1.0]}


def test_bad_inputs_are_input_errors(datasets, encoder, tmp_path):
    with pytest.raises(InputError, match="at least 6 held-out"):
        panel_from_features(np.zeros((10, 2)), np.zeros((1, 2)), np.zeros((10, 2)))
    with pytest.raises(InputError, match="at least 6 synthetic"):
        panel_from_features(np.zeros((10, 2)), None, np.zeros((5, 2)))
    small = _write(tmp_path / "small", np.zeros((3, 1, 32, 32), np.float32), "s")
    with pytest.raises(InputError, match="item shapes differ"):
        assess_quality(datasets["train"], small, datasets["fresh"], encoder)
    with pytest.raises(InputError, match="kid_subsets must be >= 1"):
        QualityOptions(kid_subsets=0)


def test_prepared_brats_files_with_a_torchscript_encoder(tmp_path):
    """The user's way: NIfTI files → ``prepare`` → datasets; planted copies; the user's TorchScript file."""
    phantoms.write_brats_tree(tmp_path / "raw", 6, seed=4, shape=(48, 48, 24))
    prepare_dataset(
        tmp_path / "raw", tmp_path / "ds", PrepareOptions(layout="brats", size=48, test_subjects=2)
    )
    train, test = Dataset.open(tmp_path / "ds" / "train"), Dataset.open(tmp_path / "ds" / "test")
    copies = plant_copies(train, None, tmp_path / "copies", n_copies=20, transforms=("exact",), seed=1)
    path = tmp_path / "encoder.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(random_conv_net(seed=2, in_channels=3), torch.zeros(1, 3, 32, 32)).save(str(path))
    enc = TorchScriptEncoder(path, size=32)
    opts = QualityOptions(kid_subset_size=20, kid_subsets=10, ct_min_synthetic=5, ms_ssim_pairs=30)
    p = assess_quality(train, test, copies, enc, opts)
    c = train.item_shape[0]
    assert p["encoder"]["per_channel"] is True and p["encoder"]["output_dim"] == 32 * c == p["feature_dim"]
    assert p["authenticity"] == 0.0 and p["holdout_reference"]["authenticity"] > 0.3
    assert p["intensity_scale"] == [0.0, 255.0] if train.dtype == np.uint8 else p["intensity_scale"][1] > 0
