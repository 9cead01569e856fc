from __future__ import annotations

import subprocess
import sys

import numpy as np
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
