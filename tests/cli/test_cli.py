from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memscan import __version__


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "memscan", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"memscan {__version__}"
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("prepare", "scan", "demo"):
        assert cmd in r.stdout
        sub = run(cmd, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout


def _pngs(folder, n=4, size=16, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_prepare_cli(tmp_path):
    _pngs(tmp_path / "src" / "s1")
    r = run("--quiet", "prepare", tmp_path / "src", "--out", tmp_path / "ds")
    assert r.returncode == 0, r.stderr
    assert "items" in r.stdout and (tmp_path / "ds" / "dataset.json").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "exists"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    src = tmp_path / "src"
    if case == "empty":
        src.mkdir()
    elif case == "corrupt":
        src.mkdir()
        (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif case == "exists":
        _pngs(src)
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "notes.txt").write_text("mine")
    r = run("prepare", src, "--out", tmp_path / "ds")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("memscan: error: "), r.stderr
    assert "Traceback" not in r.stderr
    if case == "corrupt":
        assert "broken.png" in lines[0]
    if case == "exists":
        assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_usage_error_exit_2(tmp_path):
    r = run("prepare", tmp_path)  # --out missing
    assert r.returncode == 2
    r = run("prepare", tmp_path, "--out", tmp_path / "x", "--layout", "bratz")
    assert r.returncode == 2 and "unknown layout" in r.stderr


@pytest.fixture(scope="module")
def planted(tmp_path_factory, planted_cohort):
    root = tmp_path_factory.mktemp("cli_scan")
    planted_cohort(root, subjects=4, shape=(32, 32, 16), size=32, n_copies=6, n_novel=3, seed=1, tree_seed=2)
    return root


def test_scan_cli_then_report(planted, tmp_path):
    r = run(
        "--quiet",
        "scan",
        planted / "ds" / "train",
        planted / "syn",
        "--out",
        tmp_path / "run",
        "--flips",
        "--holdout",
        planted / "ds" / "test",
        "--fdr",
        "0.3",
        "--baseline-items",
        "20",
    )
    assert r.returncode == 0, r.stderr
    assert "flagged" in r.stdout and "calibrated on" in r.stdout
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "synthetic.csv").exists()
    (tmp_path / "run" / "report.html").unlink()
    r = run("--quiet", "report", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "report.html").exists()
    r = run("report", tmp_path)
    assert r.returncode == 2 and "not a finished memscan run folder" in r.stderr


def test_scan_gate_exit_3(planted, tmp_path):
    r = run(
        "--quiet",
        "scan",
        planted / "ds" / "train",
        planted / "syn",
        "--out",
        tmp_path / "run",
        "--fail-above",
        "0.05",
        "--baseline-items",
        "0",
    )
    assert r.returncode == 3, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "release gate failed" in lines[0]
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / "report.html").exists()
    r = run(
        "--quiet",
        "scan",
        planted / "ds" / "train",
        planted / "syn",
        "--out",
        tmp_path / "run2",
        "--fail-on-leaked-subjects",
        "1",
        "--baseline-items",
        "0",
    )
    assert r.returncode == 3 and "subjects leaked" in r.stderr


def test_scan_cli_bad_input(planted, tmp_path):
    r = run("scan", planted / "ds" / "train", planted / "syn", "--out", tmp_path / "run", "--top-k", "0")
    assert r.returncode == 2 and "--top-k must be >= 1" in r.stderr and "Traceback" not in r.stderr
    r = run("scan", planted / "ds" / "train", planted / "raw", "--out", tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_demo_end_to_end_reduced(tmp_path):
    """The demo, smaller: phantom cohort → prepare → synthetic set → calibrated scan → report."""
    from memscan.demo import run_demo

    result = run_demo(
        tmp_path / "demo",
        n_subjects=5,
        n_holdout=2,
        n_fresh=1,
        n_patients=4,
        n_copies=10,
        n_novel=10,
        size=64,
    )
    s = result.summary
    assert s["threshold_source"] == "holdout" and s["n_synthetic"] == 20
    truth = pd.read_parquet(tmp_path / "demo" / "synthetic" / "manifest.parquet").set_index("id")
    syn = result.synthetic.set_index("synthetic_id")
    novel = truth.index[truth["planted_transform"] == "novel"]
    copies = truth.index[truth["planted_transform"].isin(["exact", "flip", "rescale"])]
    assert syn.loc[copies, "flagged"].all()  # report shows flagged items ...
    assert not syn.loc[novel, "flagged"].any()  # ... and clean ones
    assert (tmp_path / "demo" / "run" / "report.html").exists()
