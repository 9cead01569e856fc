"""Resume state of an interrupted scan: finished query blocks saved as ``.npz`` under ``.scan-state/``.

Rule: state is keyed on **content** — every input dataset's fingerprint (:func:`dataset_fingerprint`), the
mask's content, the options that change results, and the query block size — through the one fingerprint
scheme (:mod:`memscan.core.fingerprint`). Any change starts over, so results of two inputs never mix.
Every file is written atomically (:mod:`memscan.core.atomic`); an unreadable ``state.json`` or checkpoint
(torn by a crash, zero bytes) is discarded with a warning and recomputed, never an obstacle to resume.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from memscan.core import atomic
from memscan.core.fingerprint import fingerprint
from memscan.dataset.store import ARRAY_DIR, Dataset

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def dataset_fingerprint(ds: Dataset) -> str:
    """A fingerprint of a dataset's content: ``dataset.json``, ids, subjects, and its stored array's files.

    The array's files enter by name, size and modification time (hashing every byte of a large store would
    cost a full read): a store rewritten in place changes their times, so state computed from its old
    pixels is never reused.
    """
    array = ds.root / ARRAY_DIR
    files = []
    if array.is_dir():
        for p in sorted(array.rglob("*")):
            if p.is_file():
                st = p.stat()
                files.append((p.relative_to(array).as_posix(), st.st_size, st.st_mtime_ns))
    return fingerprint(ds.info, ds.ids.tolist(), ds.subjects.tolist(), str(ds.path), files, length=32)


class Checkpoints:
    """Finished query blocks of one scan, in ``folder`` (``WORK/.scan-state``)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.dir = Path(folder)
        old = self._read_key()
        if self.dir.exists() and old != key:
            if old is not None:
                log.info("options or inputs changed since the interrupted scan: starting over")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.dir / STATE_FILE, {"key": key})

    def _read_key(self) -> str | None:
        state = self.dir / STATE_FILE
        if not state.exists():
            return None
        try:
            key = json.loads(state.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("discarding unreadable resume state %s (%s): starting over", state, exc)
            return None
        return key if isinstance(key, str) else None

    def path(self, name: str, start: int, stop: int) -> Path:
        return self.dir / f"{name}-{start:09d}-{stop:09d}.npz"

    def load(self, name: str, start: int, stop: int) -> dict[str, np.ndarray] | None:
        """The arrays saved for block ``[start, stop)`` of query set ``name``, or None (not saved/damaged)."""
        p = self.path(name, start, stop)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("discarding unreadable checkpoint %s (%s): recomputing the block", p.name, exc)
            p.unlink(missing_ok=True)
            return None

    def save(self, name: str, start: int, stop: int, **arrays: np.ndarray) -> None:
        """Save one finished block atomically."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic.write_with(self.path(name, start, stop), write)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
