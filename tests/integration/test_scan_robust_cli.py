"""``scan --robust`` through the scanner and the CLI on tiny phantom data: a rotated copy of a training slice
that the pixel test misses is flagged by the combined verdict, attributed to its subject, shown in the report;
without ``--robust`` nothing changes."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from memscan.dataset.store import Dataset
from memscan.demo import ROBUST_COPY_ID as ROTATED
from memscan.demo import ROBUST_SOURCE as SOURCE
from memscan.demo import robust_demo
from memscan.report.html import write_report
from memscan.scanning.robust_stage import ROBUST_COLUMNS, transform_words
from memscan.scanning.runfolder import ENCODER_DIR, content_bytes, load_run

#: The demo's robust part: a slice whose copy, rotated 10° and enlarged 1.15× (a crop + resize), has a pixel
#: correlation inside the held-out null (0.89 against a held-out median of 0.89), so the pixel test cannot
#: see it. Its encoder training is shortened (40 steps); the method's accuracy is measured in docs/robust.md.
#: The fixture trains the encoder and registers the held-out null (~45-60 s on the shared 2-core CPU).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """``memscan demo``'s robust part: the same data scanned without and with ``--robust`` (and --quality)."""
    root = tmp_path_factory.mktemp("robust")
    plain, robust = robust_demo(root)
    train = Dataset.open(root / "brats" / "train")
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
    assert (cohort["root"] / "run-robust" / ENCODER_DIR).is_dir()
    # read back the same
    again = load_run(cohort["root"] / "run-robust")
    pd.testing.assert_frame_equal(again.synthetic, robust.synthetic.reset_index(drop=True))


def test_without_robust_every_table_is_unchanged_and_the_pixel_columns_agree(cohort):
    root = cohort["root"]
    for name in ("matches", "train_items", "holdout", "baseline"):
        assert content_bytes(root / "run-plain" / f"{name}.parquet") == content_bytes(
            root / "run-robust" / f"{name}.parquet"
        )
    p, r = cohort["plain"].synthetic, cohort["robust"].synthetic
    assert not set(ROBUST_COLUMNS) & set(p.columns)
    cols = ["synthetic_id", "max_correlation", "nearest_train_id", "transform", "p_value"]
    pd.testing.assert_frame_equal(p[cols], r[cols])
    # flagged = Benjamini-Hochberg at alpha over min(1, 2 min(p_pixel, p_robust)), by a naive loop
    alpha = cohort["robust"].summary.options["alpha"]
    pc = [min(1.0, 2 * min(a, b)) for a, b in zip(r["p_value"], r["robust_p_value"], strict=True)]
    m = len(pc)
    k = max([j for j in range(1, m + 1) if sorted(pc)[j - 1] <= j / m * alpha], default=0)
    cut = sorted(pc)[k - 1] if k else -1.0
    assert r["flagged"].tolist() == [v <= cut for v in pc]


def test_report_shows_the_registered_pair_and_the_transform_in_words(cohort):
    run = cohort["root"] / "run-robust"
    html = write_report(run).read_text()
    row = cohort["robust"].synthetic.set_index("synthetic_id").loc[ROTATED]
    assert "Robust matches" in html and transform_words(row["robust_transform"]) in html
    assert (run / "figures" / "robust" / "robust-001.png").is_file()
    assert "Robust matches" not in write_report(cohort["root"] / "run-plain").read_text()


def test_quality_without_an_encoder_file_uses_the_encoder_trained_for_robust(cohort):
    panel = cohort["robust"].quality
    learned, stats = panel["encoder"]["parts"]  # the embedding beside the image statistics
    assert learned["kind"].startswith("memscan.embed") and stats["kind"] == "image statistics"
    assert learned["key"] == cohort["robust"].summary.robust["encoder"]["key"]  # one encoder, trained once
    assert panel["run_id"] == cohort["robust"].run_id and panel["fd"] is not None


def test_transform_words():
    assert transform_words("rot(-8.0)+scale(0.91)+shift(+2,-1)") == (
        "rotated 8.0° clockwise, shrunk to 0.91×, moved 2 px down and 1 px left"
    )
    assert transform_words("rot(+0.0)+scale(1.00)+shift(+0,+0)") == "no transform (aligned as is)"
    assert transform_words("rot(+12.5)+scale(1.10)+shift(+0,+3)+gamma(0.55)").startswith(
        "rotated 12.5° counter-clockwise, enlarged to 1.10×, moved 3 px right, intensities"
    )
    assert transform_words("rot(-3.0)+scale(1.00)+shift(+0,+0)+warp(2.4px)+blur(1.5)") == (
        "rotated 3.0° clockwise, locally warped (up to 2.4 px), blurred (σ 1.5 px)"
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
            root / "synthetic",
            "--out",
            tmp_path / "r",
            "--robust",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--robust needs held-out real images (HOLDOUT)" in r.stderr
