"""The run folder contract: every file name, the typed summary, the loaded result, and how a run is committed.

A run folder (``memscan scan --out RUN``) holds::

    RUN/.memscan-run         the marker: format, format version, run id (only memscan writes it)
    RUN/summary.json         the :class:`Summary` (same keys as ever; see ``docs/architecture.md``)
    RUN/synthetic.parquet    one row per synthetic item        (contract columns: ``SYNTHETIC_COLUMNS``)
    RUN/matches.parquet      top-k per synthetic item           (``MATCH_COLUMNS``)
    RUN/subjects.parquet     one row per training subject       (``SUBJECT_COLUMNS``)
    RUN/train_items.parquet  one row per training item
    RUN/holdout.parquet      with a held-out set: its nearest training items
    RUN/baseline.parquet     train-vs-train baselines (unless ``baseline_items=0``)
    RUN/quality.json         with ``--quality``: the fidelity and diversity panel (``memscan.quality``),
                             with the run id under ``run_id``
    RUN/.encoders/           with ``--robust`` (or ``--quality`` without ``--encoder``): the encoder trained
                             on the training set and the robust held-out null, cached (kept for the next run)
    RUN/report.html, gallery-N.html, figures/, *.csv     the report (``memscan.report``)

Rules (see ``docs/reliability.md``):

* **One whole run.** A scan writes into a hidden work folder beside RUN (``.RUN.scan-work``, which also
  holds the resume state) and swaps it in with two renames (:func:`memscan.core.atomic.swap_folder`), so
  RUN is always one finished run or the previous one; tables of two runs can never mix.
* **Ours only.** An existing, non-empty folder is replaced only if it carries memscan's marker
  (:data:`MARKER_FILE`); anything else is refused, so a user's folder is never deleted.
* **One run id.** Every table carries the run id in its Parquet metadata (:data:`RUN_ID_KEY`) and the
  marker and summary carry it too; :func:`load_run` refuses a folder whose files disagree.
* **One writer.** The work folder is locked (``flock``) while a scan runs; a second scan into the same
  RUN refuses at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from memscan.core import atomic
from memscan.core.locks import lock_or_refuse
from memscan.errors import InputError

log = logging.getLogger(__name__)

#: memscan's own marker file; its presence (with the right ``format``) is what makes a folder a run folder.
MARKER_FILE = ".memscan-run"
RUN_FORMAT = "memscan-run"
#: Bumped when the run folder's layout changes incompatibly.
RUN_FORMAT_VERSION = 1
#: Parquet schema metadata key holding the run id in every table.
RUN_ID_KEY = b"memscan.run_id"
SUMMARY_FILE = "summary.json"
#: With ``--quality``: the panel of ``memscan.quality.panel`` (same name as its ``QUALITY_FILE``; a test keeps
#: them equal; not imported, so that reading a run does not load torch).
QUALITY_FILE = "quality.json"
STATE_DIR = ".scan-state"
PREPARED_DIR = ".prepared"
#: The self-supervised encoder trained on the training set (``--robust``, and ``--quality`` without
#: ``--encoder``), cached by its config and training-set hash (``memscan.embed``); like the prepared inputs it
#: is kept from one run into the same folder to the next (hard links), so a re-scan does not train again.
ENCODER_DIR = ".encoders"
#: Caches a new run takes over from the previous run in the same folder.
CACHE_DIRS = (PREPARED_DIR, ENCODER_DIR)
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
#: The tables a scan writes, by name (file ``NAME.parquet``); the first four are always written.
TABLE_NAMES = ("synthetic", "matches", "subjects", "train_items", "holdout", "baseline")
REQUIRED_TABLES = TABLE_NAMES[:4]
RUN_TABLES = tuple(f"{n}.parquet" for n in TABLE_NAMES)
SYNTHETIC_COLUMNS = (
    "synthetic_id",
    "max_correlation",
    "nearest_train_id",
    "nearest_subject",
    "transform",
    "p_value",
    "flagged",
    "unscored",
)
MATCH_COLUMNS = ("synthetic_id", "rank", "train_id", "train_subject", "correlation", "transform")
SUBJECT_COLUMNS = ("subject", "n_items", "n_synthetic_matched", "max_correlation", "leaked")


def table_path(run: Path, name: str) -> Path:
    """``RUN/NAME.parquet`` for a table name of :data:`TABLE_NAMES`."""
    return Path(run) / f"{name}.parquet"


# ----------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary(Mapping):
    """``summary.json``: a run's key numbers, resolved options and provenance (typed, read-only).

    It also reads as a mapping of its JSON keys (``summary["n_flagged"]``), so that scripts written
    against the JSON keep working. Keys written by another memscan version that this one does not know
    are kept in ``extra`` and written back unchanged.

    Attributes:
        n_train: training items compared.
        n_synthetic: synthetic items compared.
        n_holdout: held-out items (0 without ``--holdout``).
        top_k: matches kept per synthetic item.
        threshold: the correlation from which items are flagged *in this run*: the calibrated one with a
            held-out set (None when nothing is significant), else the fixed ``--threshold``.
        threshold_source: ``holdout`` (calibrated) or ``fixed``.
        n_flagged: synthetic items flagged.
        flagged_fraction: ``n_flagged / n_synthetic``.
        fixed_threshold: the ``--threshold`` option (used for flags only when ``threshold_source`` is fixed).
        n_above_fixed_threshold: synthetic items whose max correlation exceeds ``fixed_threshold``.
        calibration: the calibration's record (method, alpha, p threshold, null quantiles, note) or None.
        n_unmatched: synthetic items without any match (see ``n_unscored``).
        subjects_total: training subjects.
        subjects_leaked: training subjects with at least one flagged synthetic item.
        subjects_leaked_fraction: ``subjects_leaked / subjects_total``.
        holdout_max_correlation: statistics of the held-out items' max correlations, or None.
        baseline: statistics of the train-vs-train baselines, or None.
        device: the device the search ran on.
        executor: ``local`` or ``dask``.
        precision: the engine's screen precision (the last one used).
        screen_epsilon: the proven bound on the screen's error.
        n_rerank_pairs: (query, train) pairs evaluated exactly after the screen.
        n_fallback_blocks: sub-blocks evaluated exactly in full.
        item_shape: ``[C, *S]`` of the items.
        channels: channel names.
        feature_dim: length of a compared feature row.
        query_block: items per query block.
        train_block: items per training block.
        train: path of the training dataset compared.
        synthetic: path of the synthetic dataset compared.
        holdout: path of the held-out dataset, or None.
        options: the resolved ``ScanOptions``.
        command: the command line, or None.
        memscan_version: the version that wrote the run.
        run_id: this run's id (also in the marker and in every table).
        n_unscored: synthetic items that could not be scored (constant or non-finite after conversion):
            never counted as "not a copy".
        seconds: wall time from the start of the scan to the tables written.
        robust: with ``--robust``: the robust stage's record (encoder, held-out null, seconds, the
            combination rule, items flagged by the pixel test alone and only by the robust one), else None.
        filtered_from: when the synthetic set was written by ``memscan filter``: its ``dataset.json``
            record (the run it was filtered from, items kept and removed by reason), else None.
        extra: keys of another version, kept as they were.
    """

    n_train: int
    n_synthetic: int
    n_holdout: int
    top_k: int
    threshold: float | None
    threshold_source: str
    n_flagged: int
    flagged_fraction: float
    fixed_threshold: float | None = None
    n_above_fixed_threshold: int | None = None
    calibration: dict[str, Any] | None = None
    n_unmatched: int = 0
    subjects_total: int = 0
    subjects_leaked: int = 0
    subjects_leaked_fraction: float = 0.0
    holdout_max_correlation: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    device: str | None = None
    executor: str | None = None
    precision: str | None = None
    screen_epsilon: float | None = None
    n_rerank_pairs: int | None = None
    n_fallback_blocks: int | None = None
    item_shape: list[int] | None = None
    channels: list[str] | None = None
    feature_dim: int | None = None
    query_block: int | None = None
    train_block: int | None = None
    train: str | None = None
    synthetic: str | None = None
    holdout: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    memscan_version: str | None = None
    run_id: str | None = None
    n_unscored: int = 0
    seconds: float | None = None
    filtered_from: dict[str, Any] | None = None
    robust: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def keys_written(cls) -> tuple[str, ...]:
        """The JSON keys, in the order they are written."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``summary.json`` (keys in :meth:`keys_written` order, then ``extra``)."""
        out = {k: getattr(self, k) for k in self.keys_written()}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """Read a parsed ``summary.json``; raises ``InputError`` if a required key is missing."""
        known = set(cls.keys_written())
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise InputError(f"summary.json lacks {', '.join(missing)}")
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    # Mapping view of the JSON keys
    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key == "extra" or not hasattr(self, key):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    __hash__ = None  # type: ignore[assignment]  # holds dicts


# ----------------------------------------------------------------------------------------------- result


@dataclass
class ScanResult:
    """A finished run: its tables and summary, and whether a release gate failed.

    Attributes:
        run: the run folder.
        synthetic, matches, subjects, train_items: the contract tables.
        summary: the :class:`Summary`.
        holdout, baseline: the optional tables (None when not written).
        quality: the ``quality.json`` panel with ``--quality`` (None when not written).
        gate_failed: the release gate's message when a gate was exceeded (the CLI exits with 3), else None.
    """

    run: Path
    synthetic: pd.DataFrame
    matches: pd.DataFrame
    subjects: pd.DataFrame
    train_items: pd.DataFrame
    summary: Summary
    holdout: pd.DataFrame | None = None
    baseline: pd.DataFrame | None = None
    gate_failed: str | None = None
    quality: dict[str, Any] | None = None

    @property
    def run_id(self) -> str | None:
        return self.summary.run_id


# ----------------------------------------------------------------------------------------------- reading


def read_marker(run: Path) -> dict[str, Any] | None:
    """The parsed marker of ``run``, or None when ``run`` is not (recognisably) a memscan run folder."""
    try:
        data = json.loads((Path(run) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        return None
    return data


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` carries memscan's run marker."""
    return read_marker(Path(path)) is not None


def _read_table(path: Path) -> tuple[pd.DataFrame, str | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"cannot read this table ({type(exc).__name__}: {exc})", path) from None
    meta = table.schema.metadata or {}
    run_id = meta.get(RUN_ID_KEY)
    return table.to_pandas(), run_id.decode() if run_id is not None else None


def read_summary(run: Path) -> Summary:
    """``RUN/summary.json`` as a :class:`Summary`; a missing or damaged file is an ``InputError``."""
    path = Path(run) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("is not a finished memscan run folder (no summary.json)", run) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read summary.json ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict):
        raise InputError("summary.json does not hold a JSON object", path)
    try:
        return Summary.from_dict(data)
    except InputError as exc:
        raise InputError(exc.problem, path) from None
    except TypeError as exc:
        raise InputError(f"summary.json does not have the run folder's keys ({exc})", path) from None


def content_bytes(path: str | Path) -> bytes:
    """A table's Parquet bytes as written without its run id: equal for equal content in two runs.

    Two runs of the same inputs write byte-identical tables but for the run id in the metadata; tests and
    audits compare this.
    """
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != RUN_ID_KEY}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    return buf.getvalue()


def load_run(run: str | Path) -> ScanResult:
    """Read a finished run folder back, checking that every file belongs to one run.

    Raises:
        InputError: not a finished run, a damaged table or summary, or files of different runs.
    """
    run = Path(run)
    if not run.is_dir():
        raise InputError("is not a finished memscan run folder (no such folder)", run)
    summary = read_summary(run)
    marker = read_marker(run)
    run_id = summary.run_id
    if marker is not None and marker.get("run_id") != run_id:
        raise InputError(
            f"{MARKER_FILE} names run {marker.get('run_id')} but summary.json run {run_id}: the folder mixes "
            "two runs; scan again",
            run,
        )
    tables: dict[str, pd.DataFrame | None] = {}
    for name in TABLE_NAMES:
        path = table_path(run, name)
        if not path.is_file():
            if name in REQUIRED_TABLES:
                raise InputError(f"is not a finished memscan run folder (no {path.name})", run)
            tables[name] = None
            continue
        df, table_run = _read_table(path)
        if run_id is not None and table_run != run_id:
            raise InputError(
                f"belongs to run {table_run or 'unknown'}, not to this folder's run {run_id}: the folder "
                "mixes two runs; scan again",
                path,
            )
        tables[name] = df
    return ScanResult(
        run,
        tables["synthetic"],
        tables["matches"],
        tables["subjects"],
        tables["train_items"],
        summary,
        tables["holdout"],
        tables["baseline"],
        quality=read_quality(run, run_id),
    )


def read_quality(run: Path, run_id: str | None) -> dict[str, Any] | None:
    """``RUN/quality.json`` (None when the run has none); it must name the run's id like every table."""
    path = Path(run) / QUALITY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read quality.json ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(data, dict):
        raise InputError("quality.json does not hold a JSON object", path)
    if run_id is not None and data.get("run_id") != run_id:
        raise InputError(
            f"belongs to run {data.get('run_id') or 'unknown'}, not to this folder's run {run_id}: the "
            "folder mixes two runs; scan again",
            path,
        )
    return data


# ----------------------------------------------------------------------------------------------- writing


def new_run_id() -> str:
    """A fresh run id (32 hex digits)."""
    return uuid.uuid4().hex


def write_table(df: pd.DataFrame, path: Path, run_id: str | None) -> None:
    """Write one table atomically as Parquet, with ``run_id`` in its schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        if run_id is not None:
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), RUN_ID_KEY: run_id.encode()}
            )
        pq.write_table(table, tmp)

    atomic.write_with(path, write)


def write_summary(summary: Summary, run: Path) -> None:
    atomic.write_json(Path(run) / SUMMARY_FILE, summary.to_dict())


def write_marker(run: Path, run_id: str, memscan_version: str) -> None:
    atomic.write_json(
        Path(run) / MARKER_FILE,
        {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "run_id": run_id,
            "memscan_version": memscan_version,
        },
    )


# ----------------------------------------------------------------------------------------------- committing


def work_folder(out: Path) -> Path:
    """The hidden work folder of run folder ``out``: ``.OUT.scan-work`` beside it (holds the resume state)."""
    return out.with_name(f".{out.name}.scan-work")


def check_output(out: Path) -> None:
    """Refuse an output that is not a folder, not ours, or without a parent folder (touches nothing)."""
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    if out.is_dir():
        try:
            entries = list(out.iterdir())
        except OSError as exc:
            raise InputError(f"cannot list the folder ({exc.strerror})", out) from None
        if entries and not is_run_folder(out):
            legacy = (out / SUMMARY_FILE).is_file()
            raise InputError(
                f"exists, is not empty and is not a memscan run folder (no {MARKER_FILE}); refusing to "
                "replace it: choose a new or empty folder"
                + ("; if it is a run of an older memscan (no marker), delete it yourself" if legacy else ""),
                out,
            )
    if not out.parent.is_dir():
        raise InputError("parent folder does not exist", out.parent)


@dataclass
class RunWriter:
    """Owns one scan's work folder: the lock, stale-temporary cleanup, and the final swap into ``out``.

    Use as a context manager; :meth:`commit` swaps the finished work folder in. Without a commit (an
    error, a kill) the work folder stays for the next run to resume from.
    """

    out: Path
    work: Path = field(init=False)
    _lock_fd: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.work = work_folder(self.out)

    def __enter__(self) -> RunWriter:
        check_output(self.out)
        try:
            self.work.mkdir(exist_ok=True)
            fd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise InputError(f"cannot create the run's work folder ({exc.strerror})", self.work) from None
        lock_or_refuse(
            fd,
            "another memscan scan is writing this run folder now; wait for it or choose another out",
            self.out,
        )
        self._lock_fd = fd
        self._clean_stale()
        self._reuse_prepared()
        return self

    def _reuse_prepared(self) -> None:
        """Give the new run the previous run's caches (:data:`CACHE_DIRS`: prepared raw inputs, trained
        encoders) as hard links: no copy, the old run intact."""
        for name in CACHE_DIRS:
            self._reuse(name)

    def _reuse(self, name: str) -> None:
        old, new = self.out / name, self.work / name
        if not old.is_dir() or new.exists() or not is_run_folder(self.out):
            return

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        try:
            shutil.copytree(old, new, copy_function=link, symlinks=True)
        except OSError as exc:  # only a cache: prepare again
            log.info("cannot reuse the prepared inputs of %s (%s): preparing again", old, exc)
            shutil.rmtree(new, ignore_errors=True)

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        if exc_type is not None and self._lock_fd is not None and self.work.is_dir():
            if not any((self.work / STATE_DIR).glob("*.npz")):  # nothing to resume from: leave nothing
                shutil.rmtree(self.work, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_stale(self) -> None:
        """Remove our own leftovers of killed runs: ``.NAME.tmp-*`` files here, ``.OUT.old-*`` beside."""
        n = 0
        for folder in (self.work, self.work / STATE_DIR):
            if folder.is_dir():
                for p in folder.glob(f".*{atomic.TMP_MARK}*"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    n += 1
        n += atomic.remove_stale_temporaries(self.out.parent, self.out.name)
        for p in self.out.parent.glob(f".{self.out.name}.old-*"):
            if is_run_folder(p):  # a run folder renamed aside by a swap that was killed half-way
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        if n:
            log.info("removed %d leftover temporary file(s) of interrupted runs", n)

    def clear_results(self) -> None:
        """Remove everything in the work folder but the resume state and the prepared-input cache."""
        for p in self.work.iterdir():
            if p.name in (STATE_DIR, *CACHE_DIRS):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()

    def final_path(self, path: Path) -> Path:
        """Where ``path`` (inside the work folder) will be once committed."""
        try:
            return self.out / Path(path).relative_to(self.work)
        except ValueError:
            return Path(path)

    def commit(self) -> None:
        """Swap the finished work folder in as ``out`` (two renames; the old run is deleted after)."""
        shutil.rmtree(self.work / STATE_DIR, ignore_errors=True)
        if self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()  # an empty folder the user made for the run
        atomic.swap_folder(self.work, self.out)
