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
from memscan.study.config import scan_options
from memscan.study.pipeline import load_config, preset_names, result_columns, run_study
from memscan.study.table import QUALITY_COLUMNS, fmt, markdown_table, quality_values

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


def test_quality_columns_come_from_each_cells_quality_json(tiny_study):
    cfg, out, result = tiny_study
    table = pd.read_csv(out / "results.csv")
    assert "intensity_gap" not in table.columns
    assert list(table.columns[-len(QUALITY_COLUMNS) - 1 : -1]) == list(QUALITY_COLUMNS)
    for _, row in table.iterrows():
        panel = json.loads((out / row["run"] / "quality.json").read_text())
        # the preset's encoder settings reached the encoder the scan trained on the cell's subset
        learned = panel["encoder"]["parts"][0]  # the embedding (beside the image statistics)
        assert learned["config"]["steps"] == cfg.scan.encoder_steps == 10
        assert learned["config"]["input_size"] == cfg.scan.encoder_size == 16
        assert learned["train_items"] == row["n_train_items"]
        for col in QUALITY_COLUMNS:
            if panel[col] is None:  # undefined (C_T: no cell holds tau = 20 of the 12 samples) -> n/a
                assert pd.isna(row[col]), col
            else:
                assert row[col] == pytest.approx(panel[col], rel=1e-12), col
        summary = json.loads((out / row["run"] / "summary.json").read_text())
        assert "--quality --encoder-steps 10 --encoder-size 16" in summary["command"]
    assert table["ct_statistic"].isna().all()  # 12 samples: below C_T's tau in every cell
    assert table[["fd_relative", "kid", "precision", "authenticity"]].notna().all().all()
    md = (out / "results.md").read_text()
    assert "| fd_relative |" in md and "| n/a |" in md and "fd_relative` = FD(synthetic, train)" in md
    html = (out / "report.html").read_text()
    assert "Memorisation against fidelity" in html and "memorisation_vs_fidelity" not in html  # embedded
    assert "as close to the training set as new" in html
    assert (out / "figures/memorisation_vs_fidelity.png").stat().st_size > 5000


def test_quality_values_and_their_formats():
    assert all(pd.isna(v) for v in quality_values(None).values())  # no quality.json: every column NaN
    got = quality_values({"fd_relative": 1.234, "kid": 1.5e-4, "ct_statistic": None, "precision": True})
    assert got["fd_relative"] == 1.234 and got["kid"] == 1.5e-4
    assert pd.isna(got["ct_statistic"]) and pd.isna(got["precision"]) and pd.isna(got["recall"])
    assert fmt(got["fd_relative"], "fd_relative") == "1.23" and fmt(got["kid"], "kid") == "0.00015"
    assert fmt(got["ct_statistic"], "ct_statistic") == "n/a" and fmt(0.1234, "precision") == "0.12"
    assert fmt(0.25, "flagged_fraction") == "25.0%"  # the other columns keep their formats
    row = {"model": "m", "family": "f", "run": "r", **got}
    assert "| m | 1.23 | 0.00015 |" in markdown_table(pd.DataFrame([row]))


def test_memorisation_vs_fidelity_figure(tmp_path):
    from memscan.study.report import memorisation_vs_fidelity

    rows = [
        {"model": m, "n_subjects": n, "flagged_fraction": f, "fd_relative": fd, "precision": p, "recall": r}
        for m, n, f, fd, p, r in (
            ("ddpm", 1, 0.9, 0.4, 0.95, 0.3),
            ("ddpm", 4, 0.2, 0.9, 0.9, 0.6),
            ("gan", 1, 0.0, 3.0, 0.5, 0.2),
            ("gan", 4, 0.0, float("nan"), float("nan"), float("nan")),  # a cell without the panel
        )
    ]
    path = memorisation_vs_fidelity(pd.DataFrame(rows), ["ddpm", "gan"], tmp_path / "t.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    empty = pd.DataFrame(rows).assign(fd_relative=float("nan"), precision=float("nan"), recall=float("nan"))
    assert memorisation_vs_fidelity(empty, ["ddpm", "gan"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_changed_scan_table_reruns_only_the_scans(tiny_study, tmp_path, monkeypatch):
    """The models of a study are reused when only [scan] changes (its quality settings included)."""
    import dataclasses
    import shutil

    from memscan.models import sample, train

    cfg, out, _ = tiny_study
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)

    def boom(*args, **kwargs):
        raise AssertionError("a model stage ran again")

    monkeypatch.setattr(train, "train_model", boom)
    monkeypatch.setattr(sample, "sample_model", boom)
    changed = dataclasses.replace(
        cfg, scan=dataclasses.replace(cfg.scan, quality=False, encoder_steps=None, encoder_size=None)
    )
    result = run_study(changed, copy, device="cpu", resume=True)
    assert sorted(result.ran) == sorted(f"scan {m}-s{n}" for m in ("ddpm", "stylegan2") for n in (1, 3))
    assert not list(copy.glob("cells/*/run/quality.json"))
    table = result.table
    assert table[list(QUALITY_COLUMNS)].isna().all().all()
    assert "No cell has a quality panel" in (copy / "report.html").read_text()


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


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("encoder_steps = 10", None),
        ("encoder_steps = 0", "encoder_steps must be an integer >= 1"),
        ("encoder_size = 16", None),
        ("encoder_size = 8", "encoder_size must be an integer >= 16"),
        ('quality = "yes"', "quality must be true or false"),
        ('encoder = "missing.pt"', "no such file"),
        ("encoder_step = 10", "did you mean 'encoder_steps'"),
    ],
)
def test_scan_quality_settings_are_validated(tmp_path, line, message):
    tiny = (REPO / "src/memscan/study/presets/tiny.toml").read_text()
    key = line.split(" =")[0]
    kept = [ln for ln in tiny.splitlines() if not ln.startswith(("encoder_steps", "encoder_size", key))]
    path = tmp_path / "s.toml"
    path.write_text("\n".join(kept).replace("[scan]", f"[scan]\n{line}") + "\n")
    if message is None:
        load_config(path)
    else:
        with pytest.raises(InputError, match=message) as err:
            load_config(path)
        assert "missing.pt" in str(err.value) if "encoder =" in line else str(path) in str(err.value)


def test_encoder_settings_need_the_trained_encoder(tmp_path):
    tiny = (REPO / "src/memscan/study/presets/tiny.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(tiny.replace("quality = true", "quality = false"))
    with pytest.raises(InputError, match="encoder_steps sets the training") as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: [scan] encoder_steps")
    (tmp_path / "enc.pt").write_bytes(b"not read at load time")
    path.write_text(tiny.replace("[scan]", '[scan]\nencoder = "enc.pt"'))  # relative to the TOML file
    with pytest.raises(InputError, match="neither is on"):
        load_config(path)
    kept = [ln for ln in tiny.splitlines() if not ln.startswith(("encoder_steps", "encoder_size"))]
    path.write_text("\n".join(kept).replace("[scan]", '[scan]\nencoder = "enc.pt"') + "\n")
    assert load_config(path).scan.encoder == str(tmp_path / "enc.pt")


def test_bad_preset_and_missing_source():
    with pytest.raises(InputError, match="did you mean 'quick'"):
        load_config("quik")
    with pytest.raises(InputError, match="source"):
        load_config("study-brats")
    cfg = load_config("study-brats", source="/nonexistent")
    assert cfg.data.source == Path("/nonexistent") and cfg.data.phantom is None
    assert load_config("quick").sizes == (1, 4, 16)


@pytest.mark.parametrize("name", ["tiny", "cpu", "quick", "study-brats", "study-cxr"])
def test_shipped_presets_load_and_their_model_overrides_validate(name):
    from memscan.models.registry import check_config

    assert name in preset_names()
    cfg = load_config(name, source="/data" if name.startswith("study-") else None)
    for m in cfg.models:
        check_config(m.family, m.config, m.preset)  # raises InputError on a bad key or value
        if m.family == "ddpm":
            assert (m.sampler or "ddpm") == "ddpm"  # ancestral: see docs/study/cpu/README.md
    opts = scan_options(cfg.scan, "cpu")
    assert opts.quality and opts.trains_encoder  # every cell's fidelity panel, on its own encoder
    if cfg.data.size is not None and cfg.data.size <= 48:  # no upsampling: the data's own size is cheaper
        assert cfg.scan.encoder_size == cfg.data.size


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


def test_the_cells_scan_command_says_the_quality_settings(tmp_path):
    import dataclasses

    from memscan.study.grid import scan_command

    cfg = load_config("tiny")
    p = Path("p")
    cmd = scan_command(p / "s1", p / "samples", p / "run", p / "test", cfg)
    assert cmd == (
        "memscan scan p/s1 p/samples --out p/run --holdout p/test"
        " --quality --encoder-steps 10 --encoder-size 16"
    )
    own = dataclasses.replace(
        cfg, scan=dataclasses.replace(cfg.scan, encoder="/nets/enc.pt", encoder_steps=None, encoder_size=None)
    )
    assert scan_command(p / "s1", p / "samples", p / "run", p / "test", own).endswith(
        "--quality --encoder /nets/enc.pt"
    )
    off = dataclasses.replace(cfg, scan=dataclasses.replace(cfg.scan, quality=False))
    assert "--quality" not in scan_command(p / "s1", p / "samples", p / "run", p / "test", off)
