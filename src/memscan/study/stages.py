"""The study's resumable stages: each stage is one output folder, skipped when it is up to date.

Every stage folder holds ``stage.json`` with the fingerprint (:func:`memscan.core.fingerprint.fingerprint`)
of everything it depends on (its own settings and its inputs' fingerprints); a stage whose folder has the
same fingerprint is skipped, a stale one is recomputed. A stage that started writes a marker beside its
folder, so that an interrupted training can continue from its checkpoints.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memscan.core.atomic import write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class Stage:
    """One resumable step whose output is the folder ``path``.

    Attributes:
        name: e.g. ``train ddpm-s8``.
        path: the stage's output folder; ``path/stage.json`` records ``hash`` when the stage is done.
        hash: fingerprint of the stage's settings and its inputs' fingerprints.
    """

    name: str
    path: Path
    hash: str

    def record(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / STAGE_FILE).read_text())
        except (OSError, ValueError):
            return None

    def is_done(self) -> bool:
        rec = self.record()
        return bool(rec and rec.get("hash") == self.hash and rec.get("done"))

    @property
    def pending_file(self) -> Path:
        """Marker beside the folder of a stage that started (the folder itself may need to be empty)."""
        return self.path.parent / f".{self.path.name}.pending.json"

    def is_interrupted(self) -> bool:
        """Started with the same hash but not finished (training can continue from its checkpoint)."""
        try:
            rec = json.loads(self.pending_file.read_text())
        except (OSError, ValueError):
            return False
        return rec.get("hash") == self.hash

    def mark(self, done: bool, **extra: Any) -> None:
        """Record the stage as started (``done=False``) or finished, with ``extra`` values."""
        rec = {"stage": self.name, "hash": self.hash, "done": done, "time": time.time(), **extra}
        target = self.path / STAGE_FILE if done else self.pending_file
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, rec, indent=2)
        if done:
            self.pending_file.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove a stale output folder."""
        if self.path.exists():
            log.info("%s: stale output, recomputing %s", self.name, self.path)
            shutil.rmtree(self.path)


class Runner:
    """Runs stages in order and records which ran and which were up to date."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run(self, stage: Stage, compute: Callable[[bool], Any]) -> dict[str, Any]:
        """Run ``compute(interrupted)`` unless ``stage`` is up to date; return the stage's record.

        A dict returned by ``compute`` is saved in the record.
        """
        if stage.is_done():
            log.info("%s: up to date, skipped", stage.name)
            self.skipped.append(stage.name)
            return stage.record() or {}
        interrupted = stage.is_interrupted()
        if not interrupted:
            stage.clear()
        log.info("%s: running", stage.name)
        t0 = time.perf_counter()
        extra = compute(interrupted)
        extra = extra if isinstance(extra, dict) else {}
        stage.mark(True, seconds=round(time.perf_counter() - t0, 3), **extra)
        self.ran.append(stage.name)
        return stage.record() or {}
