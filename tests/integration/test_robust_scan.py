"""``scan --robust`` through the scanner and the CLI on tiny phantom data: a rotated copy of a training slice
that the pixel test misses is flagged by the combined verdict, attributed to its subject, shown in the report;
without ``--robust`` nothing changes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from memscan import phantoms
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.embed import EncoderConfig
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.report.html import write_report
from memscan.robust.pipeline import RobustOptions
from memscan.scanning.options import ScanOptions
from memscan.scanning.robust_stage import ROBUST_COLUMNS, transform_words
from memscan.scanning.runfolder import ENCODER_DIR, content_bytes, load_run
from memscan.scanning.scanner import scan

#: A short encoder training keeps the test fast; the method's accuracy is measured in docs/robust.md.
FAST = RobustOptions(encoder=EncoderConfig(steps=40, batch=32), refine_k=2)
ROTATED = "rotated_copy"
#: A slice whose copy, rotated 10° and enlarged 1.15× (a crop + resize), has a pixel correlation inside the
#: held-out null (0.89 here against a held-out median of 0.89): the pixel test cannot see it.
SOURCE = 10
#: The module's fixture trains an encoder and registers the held-out null (~45 s on the shared 2-core CPU).
pytestmark = pytest.mark.slow


def rotate_and_crop(item: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` → rotated 10° (counter-clockwise as displayed), enlarged 1.15× about the centre."""
    out = []
    for c in item.astype(np.float32):
        z = ndimage.zoom(ndimage.rotate(c, 10, reshape=False, order=1), 1.15, order=1)
        o = (z.shape[0] - c.shape[0]) // 2
        out.append(z[o : o + c.shape[0], o : o + c.shape[1]])
    return np.stack(out)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    phantoms.write_brats_tree(root / "raw", 8, seed=11, shape=(48, 48, 20))
    prepare_dataset(root / "raw", root / "brats", PrepareOptions(layout="brats", size=48, test_subjects=3))
    train, test = Dataset.open(root / "brats" / "train"), Dataset.open(root / "brats" / "test")
    with DatasetWriter(
        root / "syn",
        item_shape=train.item_shape,
        dtype=str(train.dtype),
        channels=train.channels,
        recipe=train.info.get("recipe", {}),
    ) as w:
        copy = rotate_and_crop(train.take(np.array([SOURCE]))[0])
        w.add(np.clip(copy, 0, 255).astype(train.dtype), {"id": ROTATED, "subject": "synthetic"})
        for i in (3, 9, 15, 20, 26, 32):  # real slices of held-out people: not copies
            w.add(test.take(np.array([i]))[0], {"id": f"novel_{i}", "subject": "synthetic"})
        w.commit()
    opts = dict(baseline_items=20, alpha=0.4)
    plain = scan(train.path, root / "syn", root / "plain", ScanOptions(**opts), holdout=test.path)
    robust = scan(
        train.path,
        root / "syn",
        root / "robust",
        ScanOptions(robust=True, quality=True, **opts),
        holdout=test.path,
        robust_options=FAST,
    )
    return {"root": root, "train": train, "plain": plain, "robust": robust}


def test_the_rotated_copy_is_caught_only_by_the_robust_test(cohort):
    plain, robust, train = cohort["plain"], cohort["robust"], cohort["train"]
    p = plain.synthetic.set_index("synthetic_id")
    r = robust.synthetic.set_index("synthetic_id")
    assert not p.loc[ROTATED, "flagged"]  # pixel correlation misses it
    assert r.loc[ROTATED, "flagged"]  # the combined verdict catches it
    assert r.loc[ROTATED, "robust_train_id"] == str(train.ids[SOURCE])
    assert r.loc[ROTATED, "robust_subject"] == str(train.subjects[SOURCE])
    assert "rot(" in r.loc[ROTATED, "robust_transform"]
    assert r.loc[ROTATED, "robust_p_value"] <= r.drop(ROTATED)["robust_p_value"].min()
    assert list(robust.synthetic.columns[-len(ROBUST_COLUMNS) :]) == list(ROBUST_COLUMNS)
    # the roll-up attributes the flag to the copied subject, through its robust match
    subj = robust.subjects.set_index("subject").loc[str(train.subjects[SOURCE])]
    assert subj["leaked"] and subj["n_robust_flagged"] >= 1
    rec = robust.summary.robust
    assert (
        rec["n_flagged_only_by_robust"] >= 1 and rec["n_null"] > 0 and "Bonferroni" not in rec["combination"]
    )
    assert (cohort["root"] / "robust" / ENCODER_DIR).is_dir()
    # read back the same
    again = load_run(cohort["root"] / "robust")
    pd.testing.assert_frame_equal(again.synthetic, robust.synthetic.reset_index(drop=True))


def test_without_robust_every_table_is_unchanged_and_the_pixel_columns_agree(cohort):
    root = cohort["root"]
    for name in ("matches", "train_items", "holdout", "baseline"):
        assert content_bytes(root / "plain" / f"{name}.parquet") == content_bytes(
            root / "robust" / f"{name}.parquet"
        )
    p, r = cohort["plain"].synthetic, cohort["robust"].synthetic
    assert not set(ROBUST_COLUMNS) & set(p.columns)
    cols = ["synthetic_id", "max_correlation", "nearest_train_id", "transform", "p_value"]
    pd.testing.assert_frame_equal(p[cols], r[cols])
    assert (r["flagged"] | ~p["flagged"]).all()  # the combined verdict keeps... every pixel flag here


def test_report_shows_the_registered_pair_and_the_transform_in_words(cohort):
    run = cohort["root"] / "robust"
    html = write_report(run).read_text()
    row = cohort["robust"].synthetic.set_index("synthetic_id").loc[ROTATED]
    assert "Robust matches" in html and transform_words(row["robust_transform"]) in html
    assert (run / "figures" / "robust" / "robust-001.png").is_file()
    assert "Robust matches" not in write_report(cohort["root"] / "plain").read_text()


def test_quality_without_an_encoder_file_uses_the_encoder_trained_for_robust(cohort):
    panel = cohort["robust"].quality
    assert panel is not None and panel["encoder"]["kind"].startswith("memscan.embed")
    assert (
        panel["encoder"]["key"] == cohort["robust"].summary.robust["encoder"]["key"]
    )  # one encoder, trained once
    assert panel["run_id"] == cohort["robust"].run_id and panel["fd"] is not None


def test_transform_words():
    assert transform_words("rot(-8.0)+scale(0.91)+shift(+2,-1)") == (
        "rotated 8.0° clockwise, shrunk to 0.91×, moved 2 px down and 1 px left"
    )
    assert transform_words("rot(+0.0)+scale(1.00)+shift(+0,+0)") == "no transform (aligned as is)"
    assert transform_words("rot(+12.5)+scale(1.10)+shift(+0,+3)+gamma(0.55)").startswith(
        "rotated 12.5° counter-clockwise, enlarged to 1.10×, moved 3 px right, intensities"
    )


def test_cli_robust_needs_a_holdout(cohort, tmp_path):
    root = cohort["root"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "memscan",
            "scan",
            root / "brats" / "train",
            root / "syn",
            "--out",
            tmp_path / "r",
            "--robust",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--robust needs held-out real images (HOLDOUT)" in r.stderr
