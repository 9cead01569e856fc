"""Keyed pseudonyms for item ids, subjects and source paths, and the identifier-name heuristics.

``memscan prepare --pseudonymize`` replaces every name taken from the input files (item id, subject,
source path) with ``HMAC-SHA256(key, kind + ":" + name)`` (RFC 2104; Python's :mod:`hmac`), cut to 16 hex
digits (64 bits). Rules and reasons:

- **Keyed, not a plain hash**: file names are guessable (``DOE_JOHN``), so an unkeyed hash could be
  reversed by trying names; without the key an HMAC cannot be.
- **Stable**: the same key and name give the same pseudonym in every dataset, so a training set, its
  held-out set and a synthetic set prepared with one key still line up by subject.
- **Readable provenance**: a slice keeps its suffix (``#z078``) and a stack entry its ``[i]``; the base is
  the pseudonym of the source file, so slices of one volume share it (the report's neighbouring-slice
  view keeps working).
- **The key and the map live apart from the dataset**: the key is a file of 64 hex digits (32 random
  bytes, :func:`secrets.token_bytes`) and the map ``name → pseudonym`` a JSON file; both are written
  atomically, outside the dataset folder, readable by the owner only.

The identifier heuristics (:func:`identifier_hints`) flag name parts that often are personal data:

- ``date``: ``YYYY-MM-DD``/``YYYYMMDD``/``DD.MM.YYYY`` and similar with years 1900–2099 (dates of birth,
  study dates);
- ``digit run``: 6 or more consecutive digits (medical record numbers, accession numbers, phone numbers);
- ``name``: two capitalised words of letters joined by ``_``, ``^``, ``,`` or ``-`` (``DOE_JOHN``,
  ``Doe^John``), DICOM's PN form.

They are hints: a warning gives the count and an example *pattern* (letters → ``A``/``a``, digits →
``9``), never a value.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from hashlib import sha256
from pathlib import Path

from memscan.core import atomic
from memscan.errors import InputError

KEY_BYTES = 32
DIGITS = 16
MAP_FORMAT = "memscan-pseudonym-map"

_SUFFIX = re.compile(r"(#[xyz]\d{3,}|\[\d+\])$")

IDENTIFIER_PATTERNS: dict[str, re.Pattern[str]] = {
    "date": re.compile(
        r"(?<!\d)(?:(?:19|20)\d{2}[-_.]?(?:0[1-9]|1[0-2])[-_.]?(?:0[1-9]|[12]\d|3[01])"
        r"|(?:0[1-9]|[12]\d|3[01])[-_.](?:0[1-9]|1[0-2])[-_.](?:19|20)\d{2})(?!\d)"
    ),
    "digit run": re.compile(r"\d{6,}"),
    "name": re.compile(r"(?<![A-Za-z])[A-Z][A-Za-z']+[_^,-][A-Z][A-Za-z']+(?![A-Za-z0-9])"),
}


def shape_of(text: str) -> str:
    """The pattern of ``text`` for messages: letters → ``A``/``a``, digits → ``9``, the rest kept."""
    return "".join("9" if c.isdigit() else ("A" if c.isupper() else "a") if c.isalpha() else c for c in text)


def identifier_hints(names: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Which heuristics fire on the path parts of ``names``: kind → (names hit, example pattern)."""
    hits: dict[str, tuple[int, str]] = {}
    for name in names:
        for kind, pattern in IDENTIFIER_PATTERNS.items():
            m = pattern.search(name)
            if m:
                n, example = hits.get(kind, (0, shape_of(m.group(0))))
                hits[kind] = (n + 1, example)
    return hits


def count_flagged(names: Iterable[str]) -> int:
    """How many of ``names`` any identifier heuristic fires on."""
    return sum(1 for name in names if any(p.search(name) for p in IDENTIFIER_PATTERNS.values()))


def describe_hints(hits: dict[str, tuple[int, str]]) -> str:
    """``'3 look like a date (e.g. 9999-99-99), 2 like a name (e.g. AAA_AAAA)'``."""
    return ", ".join(f"{n} like a {kind} (e.g. {example})" for kind, (n, example) in hits.items())


def load_or_create_key(path: str | Path) -> tuple[bytes, bool]:
    """The key in ``path`` (64 hex digits), or a new random key written there (mode 0600).

    Returns:
        ``(key, created)``.

    Raises:
        InputError: the file exists but is not a key.
    """
    path = Path(path)
    if path.exists():
        try:
            text = path.read_text().strip()
            key = bytes.fromhex(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"not a pseudonym key file (64 hex digits expected): {exc}", path) from exc
        if len(key) != KEY_BYTES:
            raise InputError(f"not a pseudonym key file: {len(key)} bytes, expected {KEY_BYTES}", path)
        return key, False
    key = secrets.token_bytes(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex() + "\n")

    atomic.write_with(path, write)
    return key, True


class Pseudonymizer:
    """Keyed pseudonyms of subjects, sources and item ids, remembering each for the map."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.seen: dict[str, dict[str, str]] = {"subjects": {}, "sources": {}, "ids": {}}
        self._back: dict[str, str] = {}

    @property
    def key_id(self) -> str:
        """A fingerprint of the key (not the key): maps made with the same key share it."""
        return hmac.new(self._key, b"memscan-key-id", sha256).hexdigest()[:DIGITS]

    def _make(self, kind: str, prefix: str, name: str) -> str:
        table = self.seen[kind]
        if name not in table:
            digest = hmac.new(self._key, f"{kind}:{name}".encode(), sha256).hexdigest()[:DIGITS]
            pseudonym = f"{prefix}{digest}"
            other = self._back.setdefault(pseudonym, name)
            if other != name:  # 2^-64 per pair: refuse rather than merge two names
                raise InputError(f"pseudonym collision between two {kind}; use another key")
            table[name] = pseudonym
        return table[name]

    def subject(self, name: str | None) -> str | None:
        return None if name is None else self._make("subjects", "S-", str(name))

    def source(self, relpath: str | None) -> str | None:
        return None if relpath is None else self._make("sources", "F-", str(relpath))

    def item(self, item_id: str, source: str | None = None) -> str:
        """An item id's pseudonym: its source's pseudonym plus its slice/stack suffix, if any."""
        m = _SUFFIX.search(item_id)
        suffix = m.group(0) if m else ""
        base = item_id[: len(item_id) - len(suffix)]
        pseudonym = f"{self.source(source if source is not None else base)}{suffix}"
        self.seen["ids"][item_id] = pseudonym
        return pseudonym

    def row(self, row: dict) -> dict:
        """A manifest row with ``id``, ``subject`` and ``source`` replaced."""
        out = dict(row)
        out["id"] = self.item(str(row["id"]), row.get("source"))
        out["subject"] = self.subject(row.get("subject"))
        out["source"] = self.source(row.get("source"))
        return out

    def write_map(self, path: str | Path, dataset: str) -> Path:
        """Write the map ``name → pseudonym`` (JSON, owner-only) atomically; returns the path."""
        path = Path(path)
        doc = {
            "format": MAP_FORMAT,
            "format_version": 1,
            "key_id": self.key_id,
            "dataset": dataset,
            **self.seen,
        }

        def write(tmp: Path) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1, sort_keys=False)
                fh.write("\n")

        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_with(path, write)


def check_outside(path: Path, folder: Path, what: str) -> None:
    """Refuse ``path`` inside ``folder`` (the key and the map must not travel with the dataset)."""
    p, f = path.resolve(), folder.resolve()
    if p == f or f in p.parents:
        raise InputError(f"the {what} must be kept apart from the dataset, not inside {folder}", path)
