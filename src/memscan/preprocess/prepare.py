"""Turn a folder of medical images into a dataset folder: discover → read → recipe → store.

Three layouts (``memscan.io.layouts``): a generic ``folder`` tree of 2D images and volumes, BraTS subject
folders (``brats``, the study's recipe by default) and the paediatric chest x-ray folders (``cxr``).

What is read and what is skipped (recorded in ``dataset.json``):

- volumes are read in memscan's anatomical frame (:mod:`memscan.io.orientation`; ``orientation`` in
  ``dataset.json``, the file's own axis codes in the manifest column ``source_frame``); slices cut along
  ``x``/``y``/``z`` are in the radiological display (:func:`memscan.preprocess.slicing.display_volume`);
- an array file (``.npy``/``.npz``) follows the array-file rule (:data:`memscan.io.readers.ARRAY_RULE`):
  a stack gives one item per entry, with id ``<relpath>[<i>]`` and manifest column ``stack_index``;
- files that hold no image (DICOMDIR, SR, RT plan, waveform, CIFTI-2), unsupported files and non-regular
  files are skipped, counted in one warning and listed under ``skipped``;
- NaN values stop the run unless ``nan='zero'``, which reads them as 0 (counted in one warning and in
  ``nan``); constant items are excluded (listed under ``excluded``).
- file and folder names that look like identifiers (dates, long digit runs, ``LAST_FIRST``;
  :func:`memscan.preprocess.pseudonyms.identifier_hints`) are counted in one warning; with
  ``pseudonymize`` every id, subject and source (in the manifest and in ``dataset.json``) is a keyed
  pseudonym and the map is written outside the dataset folder (:mod:`memscan.preprocess.pseudonyms`);
- one ``prepare`` writes a dataset at a time (``flock`` on ``.OUT.prepare-lock`` beside it, removed at the
  end); leftovers of
  killed runs (``.OUT.tmp-*`` holding only a dataset's own files) are removed by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memscan.core.fingerprint import fingerprint
from memscan.core.locks import lock_or_refuse
from memscan.core.progress import progress
from memscan.dataset.store import (
    ARRAY_DIR,
    INFO_FILE,
    MANIFEST_FILE,
    Dataset,
    DatasetWriter,
    check_output_folder,
)
from memscan.errors import InputError
from memscan.io import layouts, orientation
from memscan.io.readers import NAN_POLICIES, ImageData, NoImageData, read_image
from memscan.preprocess import pseudonyms, recipes
from memscan.preprocess.slicing import display_volume, slice_id

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "folder", "brats", "cxr")
DEFAULT_RECIPE = {"folder": "generic", "brats": "study", "cxr": "cxr"}


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a dataset's content (saved in ``dataset.json``).

    ``volumes``: keep 3D volumes whole (no slicing), and read 3D+ array files as volumes (the array-file
    rule). ``nan``: ``'error'`` (default) refuses NaN voxels; ``'zero'`` reads them as 0.
    """

    layout: str = "auto"
    recipe: str | None = None
    size: int | None = None
    subject_pattern: str | None = None
    test_subjects: int | None = None
    seed: int = 0
    modalities: tuple[str, ...] | None = None
    axis: str = "z"
    slice_range: tuple[int, int] | None = None
    volumes: bool = False
    nan: str = "error"
    pseudonymize: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.nan not in NAN_POLICIES:
            raise InputError(f"unknown --nan policy {self.nan!r}; expected one of {', '.join(NAN_POLICIES)}")
        if self.size is not None and self.size < 1:
            raise InputError(f"--size must be a positive number of pixels, got {self.size}")
        if self.test_subjects is not None and self.test_subjects < 0:
            raise InputError(f"--test-subjects must be >= 0, got {self.test_subjects}")


def _fingerprint(src: Path, layout: str, recipe: Any, opts: PrepareOptions, key_id: str | None = None) -> str:
    """Hash of the inputs (file names, sizes, times), every option and the pseudonym key's id: same hash =
    same dataset."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    stats = []
    for p in files:
        st = p.stat()
        stats.append((str(p.relative_to(src)) if p != src else p.name, st.st_size, st.st_mtime_ns))
    return fingerprint(str(src.resolve()), layout, recipe.to_dict(), repr(opts), key_id, stats, length=64)


def _make_recipe(layout: str, opts: PrepareOptions):
    name = opts.recipe or DEFAULT_RECIPE[layout]
    params: dict[str, Any] = {}
    if name == "study":
        if opts.modalities:
            params["modalities"] = tuple(opts.modalities)
        params.update(axis=opts.axis, slice_range=opts.slice_range, volumes=opts.volumes)
        if opts.size:
            params["size"] = opts.size
    elif name == "cxr":
        if opts.size:
            params["size"] = opts.size
    else:
        params.update(size=opts.size, axis=opts.axis, slice_range=opts.slice_range, volumes=opts.volumes)
    return recipes.get_recipe(name, **params)


class _LazyWriter:
    """Creates the DatasetWriter when the first item fixes the shape and dtype.

    With a :class:`~memscan.preprocess.pseudonyms.Pseudonymizer`, every row's ``id``, ``subject`` and
    ``source`` are replaced before anything is recorded; the original names are only looked at for the
    identifier hints.
    """

    def __init__(
        self,
        out: Path,
        channels_for,
        recipe,
        info: dict[str, Any],
        overwrite: bool,
        pseudo: pseudonyms.Pseudonymizer | None = None,
        map_file: Path | None = None,
    ) -> None:
        self.out, self.channels_for, self.recipe, self.info, self.overwrite = (
            out,
            channels_for,
            recipe,
            info,
            overwrite,
        )
        self.pseudo, self.map_file = pseudo, map_file
        self.names: set[str] = set()
        self.writer: DatasetWriter | None = None
        self.pending_excluded: list[tuple[str, str]] = []
        self.n_excluded = 0
        self.first_excluded: str | None = None

    def add(self, item: np.ndarray, row: dict[str, Any], source_path: Path) -> None:
        for name in (row.get("source"), row.get("subject")):
            if name is not None:
                self.names.update(str(name).split("/"))
        if self.pseudo is not None:
            row = self.pseudo.row(row)
        if _is_constant(item):
            self.exclude(row["id"], "constant image (zero variance): correlation is undefined")
            return
        if self.writer is None:
            self.writer = DatasetWriter(
                self.out,
                item_shape=item.shape,
                dtype=str(item.dtype),
                channels=self.channels_for(item.shape[0]),
                recipe=self.recipe.to_dict(),
                info=self.info,
                overwrite=self.overwrite,
            )
            for item_id, reason in self.pending_excluded:
                self.writer.exclude(item_id, reason, logged=True)  # reported by warn_excluded
        elif not np.can_cast(item.dtype, self.writer.dtype, casting="safe"):  # never a lossy cast
            raise InputError(
                f"holds {item.dtype} values but this dataset stores {self.writer.dtype} (its first item's); "
                "prepare images of one bit depth together",
                source_path,
            )
        self.writer.add(item, row, source_path=source_path)

    def exclude(self, item_id: str, reason: str) -> None:
        """Record an excluded item; :meth:`warn_excluded` reports them all in one warning."""
        self.n_excluded += 1
        self.first_excluded = self.first_excluded or item_id
        if self.writer is None:
            self.pending_excluded.append((item_id, reason))
        else:
            self.writer.exclude(item_id, reason, logged=True)

    def warn_identifiers(self) -> None:
        """One warning when file/folder names look like identifiers (count and pattern, never a value)."""
        hits = pseudonyms.identifier_hints(sorted(self.names))
        if not hits:
            return
        if self.pseudo is None:
            log.warning(
                "%s file/folder name part(s) look like identifiers: %s; they become ids and subjects in "
                "every table and report: consider memscan prepare --pseudonymize",
                pseudonyms.count_flagged(self.names),
                pseudonyms.describe_hints(hits),
            )
        else:
            log.info(
                "names that look like identifiers were pseudonymised: %s", pseudonyms.describe_hints(hits)
            )

    def warn_excluded(self) -> None:
        if self.n_excluded:
            log.warning(
                "excluded %d constant item(s) (zero variance: correlation is undefined), e.g. %s; listed in "
                "dataset.json",
                self.n_excluded,
                self.first_excluded,
            )

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def commit(self) -> Dataset:
        if self.writer is None:
            raise InputError("no usable images (all were excluded, see the warnings above)", self.out)
        return self.writer.commit()


class _ReadLog:
    """What the readers reported while preparing: skipped files, NaN replaced, frames seen.

    Everything ends in ``dataset.json`` and in at most one warning per kind (never one line per file).
    """

    def __init__(self, nan: str) -> None:
        self.nan = nan
        self.skipped: list[tuple[str, str]] = []
        self.nan_values = 0
        self.nan_files = 0
        self.frames: dict[str, int] = {}
        self.as_stored = 0

    def hide_names(self, pseudo: pseudonyms.Pseudonymizer) -> None:
        """Replace the recorded source paths by their pseudonyms (for ``dataset.json``)."""
        self.skipped = [(pseudo.source(rel) or rel, why) for rel, why in self.skipped]

    def read(self, path: Path, relpath: str, **kwargs: Any) -> ImageData | None:
        """``read_image`` with the policy; None (and a record) for a file that holds no image."""
        try:
            data = read_image(path, nan=self.nan, **kwargs)
        except NoImageData as exc:
            self.skipped.append((relpath, exc.problem))
            return None
        if data.n_nan:
            self.nan_values += data.n_nan
            self.nan_files += 1
        if data.spatial_dims == 3 and not data.stack:
            if data.frame is not None:
                key = data.source_frame or "?"
                self.frames[key] = self.frames.get(key, 0) + 1
            else:
                self.as_stored += 1
        return data

    def finish(self, info: dict[str, Any], root: Path) -> None:
        """Warn once per kind and record everything under ``info``."""
        if self.skipped:
            log.warning(
                "%s (under %s; listed in dataset.json)", layouts.summarize_skipped(self.skipped), root
            )
        if self.nan_values:
            log.warning(
                "read %d NaN value(s) as 0 in %d file(s) (--nan zero)", self.nan_values, self.nan_files
            )
        info["skipped"] = [{"source": rel, "reason": why} for rel, why in self.skipped]
        info["nan"] = {"policy": self.nan, "values_zeroed": self.nan_values, "files": self.nan_files}
        info["orientation"] = {
            "frame": orientation.CANONICAL_NAME,
            "rule": orientation.FRAME_DESCRIPTION,
            "volumes_reoriented_from": dict(sorted(self.frames.items())),
            "volumes_as_stored": self.as_stored,
        }


def _is_constant(item: np.ndarray) -> bool:
    flat = item.reshape(-1)
    return bool(flat.size == 0 or np.all(flat == flat[0]))


def default_key_path(out: str | Path) -> Path:
    """Where a new pseudonym key goes when none is given: ``OUT.pseudonym-key`` beside the dataset."""
    out = Path(out)
    return out.parent / f"{out.name}.pseudonym-key"


def default_map_path(out: str | Path) -> Path:
    """Where the pseudonym map goes when none is given: ``OUT.pseudonym-map.json`` beside the dataset."""
    out = Path(out)
    return out.parent / f"{out.name}.pseudonym-map.json"


def _pseudonymizer(
    out: Path, key_path: str | Path | None, map_path: str | Path | None
) -> tuple[pseudonyms.Pseudonymizer, Path]:
    key_file = Path(key_path) if key_path is not None else default_key_path(out)
    map_file = Path(map_path) if map_path is not None else default_map_path(out)
    pseudonyms.check_outside(key_file, out, "pseudonym key")
    pseudonyms.check_outside(map_file, out, "pseudonym map")
    key, created = pseudonyms.load_or_create_key(key_file)
    if created:
        log.warning(
            "wrote a new pseudonym key to %s: keep it apart from the data, and pass --pseudonym-key %s when "
            "preparing the held-out and synthetic sets so their subjects line up",
            key_file,
            key_file,
        )
    return pseudonyms.Pseudonymizer(key), map_file


_OUR_FILES = {ARRAY_DIR, MANIFEST_FILE, INFO_FILE}


@contextlib.contextmanager
def _one_writer(out: Path) -> Iterator[None]:
    """Hold ``.OUT.prepare-lock`` (``flock``) beside ``out`` while preparing; remove stale leftovers.

    A second ``prepare`` into the same ``out`` refuses at once (it would race for the final rename).
    Holding the lock, any ``.OUT.tmp-*`` / ``.OUT.old-*`` folder beside ``out`` is a leftover of a killed
    run; it is removed only if it holds nothing but a dataset's own files, so a user's folder that
    happens to match the pattern is never touched.
    """
    lock = out.parent / f".{out.name}.prepare-lock"
    fd = _take_lock(lock, out)
    try:
        n = 0
        for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
            for p in out.parent.glob(pattern):
                if p.is_dir() and not p.is_symlink() and {c.name for c in p.iterdir()} <= _OUR_FILES:
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        if n:
            log.info("removed %d leftover temporary folder(s) of interrupted runs beside %s", n, out)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: a process that opened it before sees a stale inode (below)
        os.close(fd)  # releases the lock


def _take_lock(lock: Path, out: Path) -> int:
    """An fd holding ``flock`` on ``lock`` (created if missing); InputError if another process holds it.

    The lock file is removed when the holder finishes, so after locking, the fd must still be the file
    at ``lock`` (else another process removed it in between and a third may lock a new one): retry then.
    """
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write beside the dataset folder ({exc.strerror})", out.parent) from None
        lock_or_refuse(
            fd, "another memscan prepare is writing this dataset now; wait for it or choose another out", out
        )
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise InputError("cannot take the dataset's lock (it keeps changing)", lock)


def prepare_dataset(
    src: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    *,
    overwrite: bool = False,
    pseudonym_key: str | Path | None = None,
    pseudonym_map: str | Path | None = None,
) -> Dataset:
    """Prepare ``src`` (folder or file) into the dataset folder ``out``.

    Args:
        src: a folder of images/volumes in one of the layouts, or one file.
        out: the dataset folder to write (created atomically).
        options: layout, recipe and its parameters (``pseudonymize`` replaces every name by a keyed
            pseudonym).
        overwrite: replace a different dataset already at ``out``.
        pseudonym_key: with ``options.pseudonymize``: the key file (64 hex digits); created if missing;
            default ``OUT.pseudonym-key`` beside ``out``. Never inside ``out``.
        pseudonym_map: with ``options.pseudonymize``: where the map name → pseudonym is written (JSON);
            default ``OUT.pseudonym-map.json`` beside ``out``. Never inside ``out``.

    Returns:
        The written dataset, opened for reading.
    """
    options = options or PrepareOptions()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise InputError("does not exist", src)
    if not out.parent.is_dir():
        raise InputError("the folder to write the dataset into does not exist", out.parent)
    with _one_writer(out):
        return _prepare_locked(src, out, options, overwrite, pseudonym_key, pseudonym_map)


def _prepare_locked(
    src: Path,
    out: Path,
    options: PrepareOptions,
    overwrite: bool,
    pseudonym_key: str | Path | None,
    pseudonym_map: str | Path | None,
) -> Dataset:
    if src.is_dir() and not any(src.iterdir()):
        raise InputError("folder is empty", src)
    if (pseudonym_key is not None or pseudonym_map is not None) and not options.pseudonymize:
        raise InputError("--pseudonym-key and --pseudonym-map need --pseudonymize")
    pseudo, map_file = (
        _pseudonymizer(out, pseudonym_key, pseudonym_map) if options.pseudonymize else (None, None)
    )
    layout = options.layout
    if layout == "auto":
        layout = layouts.detect_layout(src) if src.is_dir() else "folder"
        log.info("layout detected: %s", layout)
    recipe = _make_recipe(layout, options)
    fingerprint = _fingerprint(src, layout, recipe, options, pseudo.key_id if pseudo else None)
    if check_output_folder(out, overwrite=overwrite, fingerprint=fingerprint):
        log.info("%s is up to date (same inputs and options)", out)
        return Dataset.open(out)
    info: dict[str, Any] = {
        "layout": layout,
        "fingerprint": fingerprint,
        "source_name": src.name if pseudo is None else pseudo.source(src.name),
        "options": {k: v for k, v in options.__dict__.items()},
    }
    if pseudo is not None:
        info["pseudonyms"] = {"scheme": "HMAC-SHA256, 64 bits", "key_id": pseudo.key_id}
    writer = _LazyWriter(out, None, recipe, info, overwrite, pseudo, map_file)
    if layout == "brats":
        return _prepare_brats(src, out, recipe, options, info, writer)
    if layout == "cxr":
        return _prepare_cxr(src, out, recipe, options, info, writer)
    return _prepare_folder(src, out, recipe, options, info, writer)


def _slice_row(relpath: str, axis: str, index: int | None, **extra: Any) -> dict[str, Any]:
    """Manifest row of an item cut from ``relpath`` (a whole image or volume when ``index`` is None)."""
    return {
        "id": relpath if index is None else slice_id(relpath, axis, index),
        "source": relpath,
        "slice_axis": None if index is None else axis,
        "slice_index": index,
        **extra,
    }


def _write_units(
    writer: _LazyWriter,
    channels_for,
    units: list,
    label: str,
    items_of: Callable[[Any], Iterator[tuple[np.ndarray, dict[str, Any], Path]]],
    reads: _ReadLog,
    src: Path,
) -> Dataset:
    """Write every item of every unit (a subject, an image file) atomically, with a progress bar.

    Args:
        units: what is read one at a time (BraTS subjects, image files).
        items_of: a unit → its ``(item [C, *S], manifest row, source path)``.
        reads: the read log, summarised into ``info`` before the commit.
    """
    writer.channels_for = channels_for
    try:
        with progress(len(units), label) as advance:
            for unit in units:
                for item, row, path in items_of(unit):
                    writer.add(item, row, path)
                advance(1)
        if writer.pseudo is not None:
            reads.hide_names(writer.pseudo)
        reads.finish(writer.info, src)
        writer.warn_identifiers()
        writer.warn_excluded()
        if writer.pseudo is not None and writer.map_file is not None:
            writer.pseudo.write_map(writer.map_file, dataset=writer.out.name)
            log.info("pseudonym map written to %s (keep it apart from the dataset)", writer.map_file)
        return writer.commit()
    except OSError as exc:
        writer.abort()
        if exc.filename is not None:
            raise  # names its own path (the CLI boundary says it in one line)
        raise InputError(f"cannot write the dataset ({exc.strerror or exc})", writer.out) from exc
    except BaseException:
        writer.abort()
        raise


def _prepare_brats(
    src: Path, out: Path, recipe, opts: PrepareOptions, info: dict, writer: _LazyWriter
) -> Dataset:
    needed = tuple(dict.fromkeys((*recipe.modalities, "t1") if not recipe.volumes else recipe.modalities))
    subjects = layouts.discover_brats(src, modalities=needed)
    split = (
        recipes.split_subjects([s.subject for s in subjects], opts.test_subjects, opts.seed)
        if opts.test_subjects is not None
        else {}
    )
    info["split_seed"] = opts.seed

    reads = _ReadLog(opts.nan)

    def items_of(subj):
        volumes: dict[str, np.ndarray] = {}
        frames: set[str | None] = set()
        source_frames: set[str | None] = set()
        for mod in needed:
            rel = subj.files[mod].relative_to(src).as_posix()
            data = reads.read(subj.files[mod], rel, spatial_dims=3)
            if data is None:
                raise InputError("holds no image (needed as a BraTS modality)", subj.files[mod])
            frames.add(data.frame)
            source_frames.add(data.source_frame)
            volumes[mod] = _for_slicing(data, recipe)[0]
        if len(frames) > 1 or len(source_frames) > 1:
            raise InputError(
                f"the modality files of subject {subj.subject!r} are stored in different orientations "
                f"({', '.join(sorted(str(f) for f in source_frames))}); they must share one frame",
                subj.folder,
            )
        base = subj.files[recipe.modalities[0]].relative_to(src).as_posix()
        source_frame = next(iter(source_frames))
        for index, item in recipes.brats_subject_items(volumes, recipe, subject=subj.subject):
            row = _slice_row(
                base,
                recipe.axis,
                index,
                subject=subj.subject,
                split=split.get(subj.subject),
                source_frame=source_frame,
            )
            yield item, row, subj.folder

    return _write_units(
        writer,
        lambda c: tuple(recipe.modalities),
        subjects,
        "prepare BraTS subjects",
        items_of,
        reads,
        src,
    )


def _prepare_cxr(
    src: Path, out: Path, recipe, opts: PrepareOptions, info: dict, writer: _LazyWriter
) -> Dataset:
    reads = _ReadLog(opts.nan)
    units = layouts.discover_cxr(src, skipped=reads.skipped)

    def items_of(it):
        data = reads.read(it.path, it.relpath, spatial_dims=2)
        if data is None:
            return
        item = recipes.cxr_item(data.array, recipe)
        yield (
            item,
            _slice_row(it.relpath, "", None, subject=it.subject, split=it.split, label=it.label),
            it.path,
        )

    return _write_units(
        writer,
        lambda c: ("xray",),
        units,
        "prepare chest x-rays",
        items_of,
        reads,
        src,
    )


def _channel_names(c: int) -> tuple[str, ...]:
    return ("gray",) if c == 1 else ("red", "green", "blue") if c == 3 else tuple(f"c{i}" for i in range(c))


def _for_slicing(data: ImageData, recipe: Any) -> np.ndarray:
    """The volume as the recipe should see it: oriented volumes in display order for slicing along the
    recipe's axis (:func:`display_volume`); whole volumes and unoriented data as read."""
    if data.spatial_dims == 3 and data.frame is not None and not getattr(recipe, "volumes", False):
        return display_volume(data.array, recipe.axis)
    return data.array


def _prepare_folder(
    src: Path, out: Path, recipe, opts: PrepareOptions, info: dict, writer: _LazyWriter
) -> Dataset:
    reads = _ReadLog(opts.nan)
    units = layouts.discover_folder(src, subject_pattern=opts.subject_pattern, skipped=reads.skipped)

    def items_of(it):
        data = reads.read(it.path, it.relpath, volumes=opts.volumes)
        if data is None:
            return
        extra = {"subject": it.subject, "split": it.split, "label": it.label}
        if data.stack:
            log.info("%s: read as a stack of %d items %s", it.relpath, len(data.array), data.array.shape[1:])
            for i, entry in enumerate(data.array):
                for _, item in recipes.generic_items(entry, data.spatial_dims, recipe):
                    row = {
                        "id": f"{it.relpath}[{i}]",
                        "source": it.relpath,
                        "slice_axis": None,
                        "slice_index": None,
                        "stack_index": i,
                        **extra,
                    }
                    yield item, row, it.path
            return
        for index, item in recipes.generic_items(_for_slicing(data, recipe), data.spatial_dims, recipe):
            row = _slice_row(it.relpath, recipe.axis, index, source_frame=data.source_frame, **extra)
            yield item, row, it.path

    return _write_units(
        writer,
        _channel_names,
        units,
        "prepare images",
        items_of,
        reads,
        src,
    )


def open_or_prepare(
    path: str | Path,
    cache_dir: Path,
    *,
    name: str,
    subject_pattern: str | None = None,
    size: int | None = None,
) -> Dataset:
    """A dataset folder (or ``DATASET/SPLIT``) as is; a raw folder/file prepared with the generic recipe.

    Raw inputs are prepared into ``cache_dir/name`` (reused while the inputs are unchanged).
    """
    path = Path(path)
    from memscan.dataset.store import is_dataset

    if is_dataset(path) or (not path.exists() and is_dataset(path.parent)):
        return Dataset.open(path)
    if not path.exists():
        raise InputError("does not exist", path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    opts = PrepareOptions(layout="folder", recipe="generic", subject_pattern=subject_pattern, size=size)
    return prepare_dataset(path, cache_dir / name, opts, overwrite=True)


def parse_slice_range(text: str | None) -> tuple[int, int] | None:
    """``"40:120"`` → ``(40, 120)``; None stays None."""
    if text is None:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"--slice-range must look like START:STOP, got {text!r}") from None
    return start, stop


def parse_modalities(text: str | None) -> Sequence[str] | None:
    return None if not text else tuple(m.strip() for m in text.split(",") if m.strip())
