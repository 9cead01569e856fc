"""``memscan study``: the tiny preset end to end on the CPU, resume, config validation, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from memscan.errors import InputError
from memscan.study.pipeline import load_config, preset_names, result_columns, run_study

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("study") / "tiny"
        cfg = load_config("tiny")
        result = run_study(cfg, out, device="cpu")
        yield cfg, out, result
    finally:
        torch.set_num_threads(threads)


def test_tiny_grid_writes_every_output(tiny_study):
    cfg, out, result = tiny_study
    for name in (
        "results.csv",
        "results.md",
        "report.html",
        "figures/flagged_vs_size.png",
        "figures/samples_ddpm-s1.png",
    ):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == result_columns(cfg)
    assert {"frac_above_0.90", "frac_above_0.95", "frac_above_0.99", "flagged_fraction"} <= set(table.columns)
    assert len(table) == len(cfg.models) * len(cfg.sizes)
    assert sorted(table["n_subjects"].unique()) == [1, 3]
    small, big = (table[table["model"] == "ddpm"].sort_values("n_subjects")["n_train_items"]).tolist()
    assert 0 < small < big
    assert (table["n_synthetic"] == cfg.samples).all()
    assert table["max_corr_median"].between(-1, 1).all()
    for run in table["run"]:
        assert (out / run / "summary.json").is_file()  # each cell works with `memscan report`
        assert (out / run / "report.html").is_file()
    md = (out / "results.md").read_text()
    assert "| model |" in md and "stylegan2" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "stylegan2-s1" in html
    assert "Samples and their nearest training images" in html
    assert len(result.ran) == 2 + 2 + 3 * 4  # phantoms, prepare, 2 subsets, 4 cells x (train, sample, scan)
    stored = json.loads((out / "cells/ddpm-s1/model/config.json").read_text())
    assert stored["config"]["ema_decay"] == 0.8  # tiny.toml's override reached the model
    assert stored["config"]["lr"] == 2e-3  # the rest is the preset's


def test_bad_model_override_fails_before_any_work(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        (REPO / "src/memscan/study/presets/tiny.toml")
        .read_text()
        .replace("config = { ema_decay = 0.8 }", "config = { ema_decy = 0.8 }")
    )
    cfg = load_config(path)
    with pytest.raises(InputError, match="'ema_decy'.*did you mean 'ema_decay'"):
        run_study(cfg, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    path.write_text(path.read_text().replace("config = { ema_decy = 0.8 }", 'config = "fast"'))
    with pytest.raises(InputError, match="config must be a table"):
        load_config(path)


def test_second_run_skips_every_stage(tiny_study, monkeypatch):
    cfg, out, _ = tiny_study
    from memscan.models import sample, train

    def boom(*args, **kwargs):
        raise AssertionError("a stage ran again")

    monkeypatch.setattr(train, "train_model", boom)
    monkeypatch.setattr(sample, "sample_model", boom)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/stage.json")}
    result = run_study(cfg, out, device="cpu", resume=True, report=False)
    assert result.ran == []
    assert len(result.skipped) == 16
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/stage.json")}


def test_not_empty_without_resume(tiny_study):
    cfg, out, _ = tiny_study
    with pytest.raises(InputError, match="--resume"):
        run_study(cfg, out, device="cpu")


def test_bad_key_suggests_nearest(tmp_path):
    text = (
        (REPO / "src/memscan/study/presets/tiny.toml")
        .read_text()
        .replace("holdout_subjects", "holdout_subject")
    )
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match="'holdout_subject'.*did you mean 'holdout_subjects'"):
        load_config(path)
    good = (REPO / "src/memscan/study/presets/tiny.toml").read_text()
    path.write_text(good.replace("[scan]\n", "[scan]\nflip = true\n"))
    with pytest.raises(InputError, match="did you mean 'flips'"):
        load_config(path)


def test_bad_preset_and_missing_source():
    with pytest.raises(InputError, match="did you mean 'quick'"):
        load_config("quik")
    with pytest.raises(InputError, match="source"):
        load_config("study-brats")
    cfg = load_config("study-brats", source="/nonexistent")
    assert cfg.data.source == Path("/nonexistent") and cfg.data.phantom is None
    assert load_config("quick").sizes == (1, 4, 16)


@pytest.mark.parametrize("name", ["tiny", "cpu", "quick"])
def test_shipped_presets_load_and_their_model_overrides_validate(name):
    from memscan.models.registry import check_config

    assert name in preset_names()
    cfg = load_config(name)
    for m in cfg.models:
        check_config(m.family, m.config, m.preset)  # raises InputError on a bad key or value
        if m.family == "ddpm":
            assert (m.sampler or "ddpm") == "ddpm"  # ancestral: see docs/study/cpu/README.md


def test_cli_bad_config_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memscan",
            "study",
            str(tmp_path / "missing.toml"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memscan: error:"), proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_study_script_quick(tmp_path):
    env = {**os.environ, "QUICK": "1", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_study.sh")], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file())
    assert "results.md" in files and "figures.tar.gz" in files
    assert len(files) <= 8
    with tarfile.open(tmp_path / "out" / "figures.tar.gz") as tar:
        names = tar.getnames()
    assert "figures/flagged_vs_size.png" in names and "figures/samples_ddpm-s1.png" in names
