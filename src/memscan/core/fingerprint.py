"""One fingerprint scheme: a SHA-256 over canonical JSON of the things that define a result.

Caches and resume state are keyed on *content* (option values, dataset fingerprints, file digests), never
on paths alone, so that a changed input can never be mixed with state computed from the old one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def fingerprint(*parts: Any, length: int = 16) -> str:
    """Hex digest of ``parts`` as canonical JSON (sorted keys; non-JSON values via ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
