"""Exceptions and their exit codes (contract: 0 done, 2 bad input, 3 release gate failed, 1 bug)."""

from __future__ import annotations

from pathlib import Path


class MemscanError(Exception):
    """Base class of every error memscan raises on purpose."""

    exit_code = 1


class InputError(MemscanError):
    """Bad input or usage: the CLI prints one line (``path: problem``) and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class GateFailed(MemscanError):
    """The release gate (``--fail-above``) was exceeded; outputs are written, exit code 3."""

    exit_code = 3
