"""robust_scan end to end, the way a user works: phantom NIfTI files → prepare → robust scan."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from memscan import phantoms
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.embed import EncoderConfig
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.robust import COLUMNS, RegisterConfig, RobustOptions, combined_verdict, robust_scan

ANGLE = 12.0
pytestmark = pytest.mark.slow  # ~1 min: phantom files, prepare, a small encoder, two robust scans


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    shape = (64, 64, 40)
    phantoms.write_brats_tree(root / "raw", 5, seed=0, shape=shape)
    phantoms.write_brats_tree(root / "raw_fresh", 2, seed=1000, shape=shape)
    prepare_dataset(root / "raw", root / "ds", PrepareOptions(layout="brats", size=48, test_subjects=1))
    prepare_dataset(root / "raw_fresh", root / "fresh", PrepareOptions(layout="brats", size=48))
    train, hold = Dataset.open(root / "ds" / "train"), Dataset.open(root / "ds" / "test")
    fresh = Dataset.open(root / "fresh")
    pos = train.n_items // 2
    source = train.take([pos])[0]
    copy = np.stack([ndimage.rotate(ch.astype(float), ANGLE, reshape=False, order=1) for ch in source])
    with DatasetWriter(
        root / "syn", item_shape=train.item_shape, dtype="uint8", channels=train.channels, recipe={}
    ) as w:
        w.add(np.clip(np.rint(copy), 0, 255).astype(np.uint8), {"id": "copy", "subject": "x"})
        for i, item in enumerate(fresh.take(np.arange(0, fresh.n_items, max(1, fresh.n_items // 12)))):
            w.add(item, {"id": f"novel{i}", "subject": "x"})
        syn = w.commit()
    opts = RobustOptions(
        cache_dir=root / "cache",
        top_k=5,
        refine_k=2,
        query_block=16,
        encoder=EncoderConfig(input_size=32, width=8, steps=30, batch=16),
        register=RegisterConfig(fine_size=32, fine_steps=25, final_steps=2),
    )
    df = robust_scan(train, syn, hold, options=opts)
    return train, hold, syn, opts, str(train.subjects[pos]), df


def test_robust_scan_finds_the_rotated_copy(cohort):
    train, hold, syn, opts, subject, df = cohort
    assert list(df.columns) == list(COLUMNS) and len(df) == syn.n_items
    copy = df.set_index("synthetic_id").loc["copy"]
    null = np.asarray(df.attrs["null_scores"])
    assert len(null) == hold.n_items
    assert copy["robust_subject"] == subject
    assert copy["robust_score"] > 0.97 and copy["robust_score"] > null.max()
    assert copy["robust_p_value"] == pytest.approx(1.0 / (len(null) + 1))
    assert abs(abs(float(copy["robust_transform"].split("rot(")[1].split(")")[0])) - ANGLE) < 2.0
    novel = df[df["synthetic_id"] != "copy"]
    assert copy["robust_score"] > novel["robust_score"].max()
    assert (novel["robust_p_value"] >= copy["robust_p_value"]).all()
    assert df["robust_p_value"].between(0, 1).all()
    # the pixel test alone would not flag it at this size; the combined verdict does, via the robust p
    p_pixel = np.full(len(df), 0.5)
    _, flagged, _ = combined_verdict(p_pixel, df["robust_p_value"].to_numpy(), alpha=0.5)
    assert flagged[df["synthetic_id"].to_numpy() == "copy"].all()
    assert set(df.attrs["seconds"]) >= {"encoder", "register_synthetic", "register_holdout"}


def test_robust_scan_does_not_depend_on_the_query_block_and_reuses_the_encoder(cohort):
    train, hold, syn, opts, _, first = cohort
    again = robust_scan(train, syn, hold, options=dataclasses.replace(opts, query_block=5))
    assert again["robust_train_id"].equals(first["robust_train_id"])
    np.testing.assert_allclose(again["robust_score"], first["robust_score"], atol=1e-5)
    np.testing.assert_allclose(again["robust_p_value"], first["robust_p_value"], atol=0.05)
    assert len(list(opts.cache_dir.glob("encoder-*"))) == 1
    assert len(list(opts.cache_dir.glob("encoder-*/null-*.parquet"))) == 1
    assert again.attrs["seconds"]["register_holdout"] == 0.0  # the held-out null was reused
    np.testing.assert_array_equal(again.attrs["null_scores"], first.attrs["null_scores"])


def test_robust_scan_refuses_other_item_shapes(cohort, tmp_path):
    train, hold, _syn, opts, _, _ = cohort
    with DatasetWriter(
        tmp_path / "odd",
        item_shape=(train.item_shape[0], 40, 40),
        dtype="uint8",
        channels=train.channels,
        recipe={},
    ) as w:
        w.add(np.zeros((train.item_shape[0], 40, 40), np.uint8), {"id": "a", "subject": "s"})
        odd = w.commit()
    with pytest.raises(InputError, match="differ from training items"):
        robust_scan(train, odd, hold, options=opts)


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="refine_k"):
        RobustOptions(top_k=2, refine_k=3)
    with pytest.raises(InputError, match="device"):
        RobustOptions(device="gpu")
