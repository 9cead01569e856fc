"""The exit-code contract at the CLI boundary, class by class: bad input and unreadable/damaged run files → 2,
disk and permission errors → 2 naming the path, a failed gate → 3, a bug → 1 with a hint; one line each, no
traceback; library messages said in flags; choices listed from the registries."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from typer.testing import CliRunner

from memscan.cli.app import app, to_flags
from memscan.dataset.store import DatasetWriter

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, ["--quiet", *map(str, args)])
    return result.exit_code, result.stderr, result.stdout


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("memscan: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    for name, items in (("train", train), ("syn", np.concatenate([train[:2], train[5:7] // 2]))):
        with DatasetWriter(root / name, (1, 8, 8), "uint8", ("g",), recipe={"name": "t"}) as w:
            for i, item in enumerate(items):
                w.add(item, {"id": f"{name}{i}", "subject": f"s{i % 3}"})
            w.commit()
    code, err, _ = invoke(
        "scan", root / "train", root / "syn", "--out", root / "run", "--baseline-items", "0"
    )
    assert code == 0, err
    return root


def _copy_run(data, tmp_path):
    import shutil

    shutil.copytree(data / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("victim", ["synthetic.parquet", "summary.json", "matches.parquet"])
def test_report_on_damaged_run_files_exits_2(data, tmp_path, victim):
    run = _copy_run(data, tmp_path)
    (run / victim).write_bytes((run / victim).read_bytes()[:30])
    code, err, _ = invoke("report", run)
    assert code == 2 and victim in _one_line(err)


def test_disk_and_permission_errors_exit_2_naming_the_path(data, tmp_path, monkeypatch):
    from memscan.core import atomic

    def refuse(path, write):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_with", refuse)
    code, err, _ = invoke("report", _copy_run(data, tmp_path))
    line = _one_line(err)
    assert code == 2 and "Permission denied" in line and str(tmp_path / "run") in line

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_with", full)
    code, err, _ = invoke(
        "scan", data / "train", data / "syn", "--out", tmp_path / "r2", "--baseline-items", "0"
    )
    assert code == 2 and "No space left" in _one_line(err)


def test_a_bug_exits_1_with_a_hint_and_no_traceback(data, tmp_path, monkeypatch):
    from memscan import api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(api, "scan", broken)
    code, err, _ = invoke("scan", data / "train", data / "syn", "--out", tmp_path / "r")
    line = _one_line(err)
    assert code == 1 and "internal error" in line and "--verbose" in line and "ZeroDivisionError" in line


def test_gate_exit_3_and_messages_in_flags(data, tmp_path):
    code, err, out = invoke(
        "scan",
        data / "train",
        data / "syn",
        "--out",
        tmp_path / "g",
        "--fail-above",
        "0.1",
        "--baseline-items",
        "0",
    )
    assert code == 3 and "--fail-above" in _one_line(err) and "flagged" in out
    code, err, _ = invoke("scan", data / "train", data / "syn", "--out", tmp_path / "x", "--fdr", "2")
    assert code == 2 and "--fdr must be" in _one_line(err)
    code, err, _ = invoke("scan", data / "train", data / "syn", "--out", tmp_path / "x", "--max-shift", "7")
    assert code == 2 and "--max-shift" in _one_line(err)


def test_encoder_settings_are_validated_in_flags(data, tmp_path):
    base = ("scan", data / "train", data / "syn", "--out", tmp_path / "x")
    code, err, _ = invoke(*base, "--quality", "--encoder-steps", "0")
    assert code == 2 and "--encoder-steps must be >= 1" in _one_line(err)
    code, err, _ = invoke(*base, "--quality", "--encoder-size", "8")
    assert code == 2 and "--encoder-size must be >= 16" in _one_line(err)
    code, err, _ = invoke(*base, "--encoder-steps", "50")  # no encoder is trained: refused, not ignored
    line = _one_line(err)
    assert code == 2 and "--encoder-steps sets the training" in line and "neither is on" in line
    assert not (tmp_path / "x").exists()


def test_encoder_steps_help_states_the_encoders_default():
    import typer

    from memscan.embed import EncoderConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["scan"].params}
    assert f"Default {EncoderConfig().steps}." in params["encoder_steps"].help
    assert f"Default {EncoderConfig().input_size};" in params["encoder_size"].help


def test_to_flags_maps_parameters_not_prose():
    assert to_flags("top_k must be >= 1; got 0") == "--top-k must be >= 1; got 0"
    assert to_flags("precision must be one of auto") == "--precision must be one of auto"
    assert to_flags("release gate failed (> fail_above 10%)") == "release gate failed (> --fail-above 10%)"
    assert to_flags("the threshold is fixed") == "the threshold is fixed"


def test_choices_come_from_the_registries():
    from memscan.models import registry
    from memscan.scanning.options import PRECISIONS
    from memscan.search import engine
    from memscan.study.pipeline import preset_names

    assert PRECISIONS == (*engine.PRECISIONS, "exact")
    _, _, out = invoke("scan", "--help")
    assert "int8" in out and "--orientations" in out
    _, _, out = invoke("study", "--help")
    assert all(name in out for name in preset_names()) and "cpu" in out
    _, _, out = invoke("train", "--help")
    for family in registry.FAMILIES:
        assert family in out
        assert all(name in out for name in registry.presets(family))
