"""Turn a folder of medical images into a dataset folder: discover → read → recipe → store.

Three layouts (``memscan.io.layouts``): a generic ``folder`` tree of 2D images and volumes, BraTS subject
folders (``brats``, the study's recipe by default) and the paediatric chest x-ray folders (``cxr``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memscan.core.progress import progress
from memscan.dataset.store import Dataset, DatasetWriter, check_output_folder
from memscan.errors import InputError
from memscan.io import layouts
from memscan.io.readers import read_image
from memscan.preprocess import recipes
from memscan.preprocess.slicing import slice_id

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "folder", "brats", "cxr")
DEFAULT_RECIPE = {"folder": "generic", "brats": "study", "cxr": "cxr"}


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a dataset's content (saved in ``dataset.json``)."""

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

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.size is not None and self.size < 1:
            raise InputError(f"--size must be a positive number of pixels, got {self.size}")
        if self.test_subjects is not None and self.test_subjects < 0:
            raise InputError(f"--test-subjects must be >= 0, got {self.test_subjects}")


def _fingerprint(src: Path, layout: str, recipe: Any, opts: PrepareOptions) -> str:
    """Hash of the inputs (file names, sizes, times) and every option: same hash = same dataset."""
    h = hashlib.sha256()
    h.update(json.dumps([str(src.resolve()), layout, recipe.to_dict(), repr(opts)], default=str).encode())
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(src) if p != src else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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
    """Creates the DatasetWriter when the first item fixes the shape and dtype."""

    def __init__(self, out: Path, channels_for, recipe, info: dict[str, Any], overwrite: bool) -> None:
        self.out, self.channels_for, self.recipe, self.info, self.overwrite = (
            out,
            channels_for,
            recipe,
            info,
            overwrite,
        )
        self.writer: DatasetWriter | None = None
        self.pending_excluded: list[tuple[str, str]] = []

    def add(self, item: np.ndarray, row: dict[str, Any], source_path: Path) -> None:
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
                self.writer.exclude(item_id, reason)
        elif not np.can_cast(item.dtype, self.writer.dtype, casting="safe"):  # never a lossy cast
            raise InputError(
                f"holds {item.dtype} values but this dataset stores {self.writer.dtype} (its first item's); "
                "prepare images of one bit depth together",
                source_path,
            )
        self.writer.add(item, row, source_path=source_path)

    def exclude(self, item_id: str, reason: str) -> None:
        if self.writer is None:
            log.warning("excluded %s: %s", item_id, reason)
            self.pending_excluded.append((item_id, reason))
        else:
            self.writer.exclude(item_id, reason)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def commit(self) -> Dataset:
        if self.writer is None:
            raise InputError("no usable images (all were excluded, see the warnings above)", self.out)
        return self.writer.commit()


def _is_constant(item: np.ndarray) -> bool:
    flat = item.reshape(-1)
    return bool(flat.size == 0 or np.all(flat == flat[0]))


def prepare_dataset(
    src: str | Path, out: str | Path, options: PrepareOptions | None = None, *, overwrite: bool = False
) -> Dataset:
    """Prepare ``src`` (folder or file) into the dataset folder ``out``.

    Args:
        src: a folder of images/volumes in one of the layouts, or one file.
        out: the dataset folder to write (created atomically).
        options: layout, recipe and its parameters.
        overwrite: replace a different dataset already at ``out``.

    Returns:
        The written dataset, opened for reading.
    """
    options = options or PrepareOptions()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise InputError("does not exist", src)
    if src.is_dir() and not any(src.iterdir()):
        raise InputError("folder is empty", src)
    layout = options.layout
    if layout == "auto":
        layout = layouts.detect_layout(src) if src.is_dir() else "folder"
        log.info("layout detected: %s", layout)
    recipe = _make_recipe(layout, options)
    fingerprint = _fingerprint(src, layout, recipe, options)
    if check_output_folder(out, overwrite=overwrite, fingerprint=fingerprint):
        log.info("%s is up to date (same inputs and options)", out)
        return Dataset.open(out)
    info = {
        "layout": layout,
        "fingerprint": fingerprint,
        "source_name": src.name,
        "options": {k: v for k, v in options.__dict__.items()},
    }
    if layout == "brats":
        return _prepare_brats(src, out, recipe, options, info, overwrite)
    if layout == "cxr":
        return _prepare_cxr(src, out, recipe, info, overwrite)
    return _prepare_folder(src, out, recipe, options, info, overwrite)


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
    out: Path,
    recipe,
    info: dict,
    overwrite: bool,
    channels_for,
    units: list,
    label: str,
    items_of: Callable[[Any], Iterator[tuple[np.ndarray, dict[str, Any], Path]]],
) -> Dataset:
    """Write every item of every unit (a subject, an image file) atomically, with a progress bar.

    Args:
        units: what is read one at a time (BraTS subjects, image files).
        items_of: a unit → its ``(item [C, *S], manifest row, source path)``.
    """
    writer = _LazyWriter(out, channels_for, recipe, info, overwrite)
    try:
        with progress(len(units), label) as advance:
            for unit in units:
                for item, row, path in items_of(unit):
                    writer.add(item, row, path)
                advance(1)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _prepare_brats(
    src: Path, out: Path, recipe, opts: PrepareOptions, info: dict, overwrite: bool
) -> Dataset:
    needed = tuple(dict.fromkeys((*recipe.modalities, "t1") if not recipe.volumes else recipe.modalities))
    subjects = layouts.discover_brats(src, modalities=needed)
    split = (
        recipes.split_subjects([s.subject for s in subjects], opts.test_subjects, opts.seed)
        if opts.test_subjects is not None
        else {}
    )
    info["split_seed"] = opts.seed

    def items_of(subj):
        volumes = {mod: read_image(subj.files[mod], spatial_dims=3).array[0] for mod in needed}
        base = subj.files[recipe.modalities[0]].relative_to(src).as_posix()
        for index, item in recipes.brats_subject_items(volumes, recipe, subject=subj.subject):
            row = _slice_row(base, recipe.axis, index, subject=subj.subject, split=split.get(subj.subject))
            yield item, row, subj.folder

    return _write_units(
        out,
        recipe,
        info,
        overwrite,
        lambda c: tuple(recipe.modalities),
        subjects,
        "prepare BraTS subjects",
        items_of,
    )


def _prepare_cxr(src: Path, out: Path, recipe, info: dict, overwrite: bool) -> Dataset:
    def items_of(it):
        item = recipes.cxr_item(read_image(it.path, spatial_dims=2).array, recipe)
        yield (
            item,
            _slice_row(it.relpath, "", None, subject=it.subject, split=it.split, label=it.label),
            it.path,
        )

    return _write_units(
        out,
        recipe,
        info,
        overwrite,
        lambda c: ("xray",),
        layouts.discover_cxr(src),
        "prepare chest x-rays",
        items_of,
    )


def _channel_names(c: int) -> tuple[str, ...]:
    return ("gray",) if c == 1 else ("red", "green", "blue") if c == 3 else tuple(f"c{i}" for i in range(c))


def _prepare_folder(
    src: Path, out: Path, recipe, opts: PrepareOptions, info: dict, overwrite: bool
) -> Dataset:
    def items_of(it):
        image = read_image(it.path)
        for index, item in recipes.generic_items(image.array, image.spatial_dims, recipe):
            row = _slice_row(
                it.relpath, recipe.axis, index, subject=it.subject, split=it.split, label=it.label
            )
            yield item, row, it.path

    return _write_units(
        out,
        recipe,
        info,
        overwrite,
        _channel_names,
        layouts.discover_folder(src, subject_pattern=opts.subject_pattern),
        "prepare images",
        items_of,
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
