"""The package layers of docs/architecture.md hold: no import cycles between packages, no upward imports.

Runs import-linter's contract from pyproject.toml (``[tool.importlinter]``); imports inside functions count.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_layers_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:  # the test extra installs it; a missing tool must not pass silently
        pytest.fail("import-linter (lint-imports) is not installed; install memscan with the [test] extra")
    proc = subprocess.run(
        [exe, "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": str(Path(sys.executable).parent)},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout
