"""Atomic writes: a file or folder is either its old whole self or its new whole self, never half-written.

Rule: write into a hidden temporary sibling (same filesystem, so ``os.replace`` is atomic on POSIX), flush
it, then rename it over the target. A crash leaves at most a ``.NAME.tmp-XXXXXX`` sibling, which
:func:`remove_stale_temporaries` cleans up on a later run.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for a temporary file or folder."""
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename, else it is removed.

    Example::

        with atomic_path(out / "synthetic.parquet") as tmp:
            table.to_parquet(tmp)
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` and rename the result over ``path``; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (keys in insertion order, non-JSON values via ``str``)."""
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def swap_folder(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final`` (replacing any old one) with as few steps as POSIX allows.

    ``final`` is first renamed aside, then ``new`` renamed into place, then the old one deleted: at every
    moment either the old or the new whole folder exists (or, between the two renames, only the
    renamed-aside old one, which :func:`remove_stale_temporaries` does not delete).
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: Path, name: str) -> int:
    """Delete ``.NAME.tmp-*`` leftovers of interrupted writes of ``folder/NAME``; returns the count."""
    n = 0
    if not folder.is_dir():
        return 0
    for p in folder.glob(f".{name}{TMP_MARK}*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
