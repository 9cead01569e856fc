"""The user's way through the new steps: ``memscan scan`` → ``memscan filter`` → ``memscan scan`` of the clean
set (its report says what was removed), and ``memscan scan --quality --encoder FILE`` (``quality.json`` inside
the run, of the same run, shown in the terminal and the HTML report; no table changes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from memscan.dataset.store import Dataset
from memscan.scanning.runfolder import QUALITY_FILE, RUN_TABLES, content_bytes, load_run


def memscan(*args):
    return subprocess.run(
        [sys.executable, "-m", "memscan", "-q", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, planted_cohort):
    root = tmp_path_factory.mktemp("integ")
    planted_cohort(
        root, subjects=5, shape=(48, 48, 20), size=48, n_copies=10, n_novel=4, seed=5, tree_seed=11
    )
    return root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A fixed random-weight conv net saved as TorchScript: a stand-in for a user's own network file."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    ).eval()
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(path))
    return path


def test_filter_then_rescan_says_what_was_removed(cohort, tmp_path):
    run, clean = tmp_path / "run", tmp_path / "clean"
    ds = cohort / "ds"
    r = memscan("scan", ds / "train", cohort / "syn", "--out", run, "--holdout", ds / "test", "--fdr", "0.2")
    assert r.returncode == 0, r.stderr
    flagged = load_run(run).synthetic
    assert flagged["flagged"].any() and not flagged["flagged"].all()

    r = memscan("filter", run, "--out", clean)
    assert r.returncode == 0, r.stderr
    n_removed = int(flagged["flagged"].sum())
    assert "kept" in r.stdout and "removed: flagged" in r.stdout
    kept = Dataset.open(clean)
    assert sorted(kept.ids) == sorted(flagged.loc[~flagged["flagged"], "synthetic_id"])
    removed = pd.read_parquet(tmp_path / "clean.removed.parquet")
    assert len(removed) == n_removed and set(removed["reason"]) == {"flagged"}

    # a second filter into the same folder: refused without --overwrite (exit 2, one line), allowed with it
    r = memscan("filter", run, "--out", clean)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--overwrite" in r.stderr
    assert memscan("filter", run, "--out", clean, "--overwrite").returncode == 0
    # --also-subjects: every sample matched to a leaked subject goes too; nothing left: exit 2, no writes
    subjects = load_run(run).subjects
    leaked = set(subjects.loc[subjects["leaked"], "subject"])
    r = memscan("filter", run, "--out", tmp_path / "c3", "--also-subjects")
    left = flagged[~flagged["flagged"] & ~flagged["nearest_subject"].isin(leaked)]
    if len(left):
        assert r.returncode == 0, r.stderr
        assert sorted(Dataset.open(tmp_path / "c3").ids) == sorted(left["synthetic_id"])
    else:
        assert r.returncode == 2 and "nothing to write" in r.stderr and not (tmp_path / "c3").exists()
    # not a run folder: exit 2
    r = memscan("filter", tmp_path / "nothing", "--out", tmp_path / "c2")
    assert r.returncode == 2 and "memscan: error:" in r.stderr

    # the clean set scanned again: nothing flagged, and the terminal and the report say it was filtered
    r = memscan(
        "scan", ds / "train", clean, "--out", tmp_path / "run2", "--holdout", ds / "test", "--fdr", "0.2"
    )
    assert r.returncode == 0, r.stderr
    res = load_run(tmp_path / "run2")
    assert not res.synthetic["flagged"].any()
    assert res.summary.filtered_from["n_removed"] == n_removed
    assert "memscan filter of run folder" in r.stdout and f"removed {n_removed}" in r.stdout
    assert memscan("report", tmp_path / "run2").returncode == 0
    html = (tmp_path / "run2" / "report.html").read_text()
    assert "Synthetic set filtered" in html and f"removed {n_removed} ({n_removed} flagged)" in html
    # a set that was not filtered says nothing of the kind
    assert load_run(run).summary.filtered_from is None


def test_scan_quality_writes_the_panel_of_the_run_and_changes_no_table(cohort, encoder_file, tmp_path):
    ds = cohort / "ds"
    common = [ds / "train", cohort / "syn", "--holdout", ds / "test", "--baseline-items", "20"]
    r = memscan("scan", *common, "--out", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    r = memscan("scan", *common, "--out", tmp_path / "q", "--quality", "--encoder", encoder_file)
    assert r.returncode == 0, r.stderr
    assert "authenticity" in r.stdout and "held-out" in r.stdout

    assert not (tmp_path / "plain" / QUALITY_FILE).exists()
    for name in RUN_TABLES:  # byte-identical tables with and without --quality
        a, b = tmp_path / "plain" / name, tmp_path / "q" / name
        assert a.exists() == b.exists()
        if a.exists():
            assert content_bytes(a) == content_bytes(b), name

    res = load_run(tmp_path / "q")
    panel = json.loads((tmp_path / "q" / QUALITY_FILE).read_text())
    assert panel["run_id"] == res.run_id and res.quality == panel
    for key in (
        "fd",
        "fd_relative",
        "precision",
        "recall",
        "authenticity",
        "ct_statistic",
        "ms_ssim_holdout",
    ):
        assert key in panel
    assert panel["encoder"]["file"] == "encoder.pt" and panel["holdout_reference"]["precision"] is not None
    assert panel["n_items"]["synthetic"] == res.summary.n_synthetic

    assert memscan("report", tmp_path / "q").returncode == 0
    html = (tmp_path / "q" / "report.html").read_text()
    assert "Fidelity and diversity" in html and "held-out real (reference)" in html and "encoder.pt" in html
    assert "Fidelity and diversity" not in (
        (tmp_path / "plain" / "report.html").read_text()
        if (tmp_path / "plain" / "report.html").exists()
        else ""
    )

    # a quality.json of another run is refused when the run is read
    other = dict(panel, run_id="0" * 32)
    (tmp_path / "q" / QUALITY_FILE).write_text(json.dumps(other))
    r = memscan("report", tmp_path / "q")
    assert r.returncode == 2 and "quality.json" in r.stderr and "mixes two runs" in r.stderr


def test_quality_bad_encoder_and_encoder_without_quality(cohort, tmp_path):
    ds = cohort / "ds"
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    r = memscan("scan", ds / "train", cohort / "syn", "--out", tmp_path / "r", "--quality", "--encoder", bad)
    assert r.returncode == 2 and "weights.pt" in r.stderr and "TorchScript" in r.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    r = memscan("scan", ds / "train", cohort / "syn", "--out", tmp_path / "r", "--encoder", bad)
    assert r.returncode == 2 and "--encoder is used by the quality panel only" in r.stderr


def test_the_run_folder_names_the_quality_panels_file():
    from memscan.quality.panel import QUALITY_FILE as PANEL_FILE

    assert QUALITY_FILE == PANEL_FILE
