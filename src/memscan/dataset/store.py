"""The dataset folder: a Zarr array chunked along items, a Parquet manifest and ``dataset.json``.

Layout of a dataset folder (written by ``prepare`` and ``sample``)::

    DATASET/
      dataset.json        shape, channels, dtype, spatial_dims, recipe and its parameters, fingerprint
      manifest.parquet    one row per item: index, id, subject, source, slice_axis, slice_index, split, label
      images.zarr/        Zarr v3 array [N, C, H, W] or [N, C, X, Y, Z], chunked along items only

A dataset is written into a hidden temporary folder beside ``DATASET`` and renamed into place at the
end, so an interrupted write never leaves a folder that looks complete; an existing dataset is only
replaced after the new one is complete.

A split of a dataset can be addressed as a path: ``DATASET/train`` opens the items of ``DATASET``
whose manifest ``split`` is ``train`` (when no real folder of that name exists).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from memscan.core import atomic
from memscan.core.version import __version__
from memscan.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "memscan-dataset"
FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.parquet"
ARRAY_DIR = "images.zarr"
MANIFEST_COLUMNS = ("index", "id", "subject", "source", "slice_axis", "slice_index", "split", "label")
CHUNK_BYTES = 8 * 2**20  # target bytes per stored chunk


def is_dataset(path: str | Path) -> bool:
    """True when ``path`` is a dataset folder written by memscan."""
    info = Path(path) / INFO_FILE
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def default_chunk_items(item_shape: Sequence[int], dtype: np.dtype) -> int:
    """Items per chunk so that one chunk holds about ``CHUNK_BYTES``."""
    item_bytes = int(np.prod(item_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // max(1, item_bytes))


#: Chunks are compressed only when that saves at least this fraction of the bytes: reading an uncompressed
#: chunk is a plain file read, while decoding costs CPU time the scan's matrix products then lack (on 2
#: cores, zstd on incompressible 8-bit data read 2.5x slower than raw chunks: 0.77 s vs 0.31 s for 328 MB).
MIN_COMPRESSION_SAVING = 0.2


#: The Blosc settings of compressed chunks, shared by the codec stored and the trial that decides.
_BLOSC = {"cname": "lz4", "clevel": 5}


def _codec() -> Any:
    """Blosc with LZ4 (a standard Zarr v3 codec): it decodes about twice as fast as zarr's default zstd, for
    files 10% (2D brain slices) to 2x (smooth 8-bit volumes) larger. Measured through zarr on this project's
    2-core machine: 711 phantom slices 0.05 s vs 0.10 s; 200 float32 volumes of 128x128x96 0.69 s vs 1.10 s
    (docs/benchmarks.md). A scan reads every chunk once per query block, so decoding speed wins."""
    from zarr.codecs import BloscCodec

    return BloscCodec(**_BLOSC, shuffle="noshuffle")


def _compressors_for(block: np.ndarray) -> Any:
    """Blosc-LZ4 for data it shrinks (medical images: black background), none otherwise (noise)."""
    from numcodecs import Blosc

    sample = np.ascontiguousarray(block[: max(1, min(len(block), 64))])
    encoded = Blosc(**_BLOSC, shuffle=Blosc.NOSHUFFLE).encode(sample)
    saved = 1.0 - len(encoded) / max(1, sample.nbytes)
    return _codec() if saved >= MIN_COMPRESSION_SAVING else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_output_folder(out: Path, *, overwrite: bool, fingerprint: str | None = None) -> bool:
    """Validate an output folder before any work starts.

    Returns:
        True when ``out`` already holds a dataset with the same ``fingerprint`` (same inputs and options:
        nothing to do, even with ``overwrite``).

    Raises:
        InputError: ``out`` holds a different dataset (without ``overwrite``), or something else.
    """
    if not out.exists():
        if not out.parent.exists():
            raise InputError("parent folder does not exist", out.parent)
        return False
    if not out.is_dir():
        raise InputError("exists and is not a folder; refusing to overwrite it", out)
    if is_dataset(out):
        info = json.loads((out / INFO_FILE).read_text())
        if fingerprint is not None and info.get("fingerprint") == fingerprint:
            return True
        if not overwrite:
            raise InputError("already holds a different dataset; pass --overwrite to replace it", out)
        return False
    if any(out.iterdir()):
        raise InputError("exists, is not empty and is not a memscan dataset; refusing to overwrite it", out)
    return False


@dataclass
class DatasetWriter:
    """Write a dataset folder item block by item block, atomically.

    Use as a context manager: on an exception the temporary folder is removed and ``out`` is untouched.

    Args:
        out: the dataset folder to create.
        item_shape: shape of one item, ``[C, H, W]`` or ``[C, X, Y, Z]``.
        dtype: stored dtype (``uint8`` for 8-bit recipes, ``float32`` otherwise).
        channels: channel names, ``len == C``.
        recipe: the recipe's parameters (saved in ``dataset.json``).
        info: extra keys for ``dataset.json`` (layout, fingerprint, ...).
        overwrite: replace an existing dataset at ``out``.
    """

    out: Path
    item_shape: tuple[int, ...]
    dtype: str
    channels: tuple[str, ...]
    recipe: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    chunk_items: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.item_shape = tuple(int(s) for s in self.item_shape)
        if len(self.item_shape) not in (3, 4):
            raise InputError(f"items must be [C, H, W] or [C, X, Y, Z], got shape {self.item_shape}")
        if len(self.channels) != self.item_shape[0]:
            raise InputError(f"{len(self.channels)} channel names for {self.item_shape[0]} channels")
        self.chunk_items = self.chunk_items or default_chunk_items(self.item_shape, np.dtype(self.dtype))
        self._tmp = atomic.temporary_sibling(self.out)
        self._tmp.mkdir(parents=False)
        self._array: zarr.Array | None = None  # created at the first flush, when the codec is chosen
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._rows: list[dict[str, Any]] = []
        self._n_written = 0
        self.excluded: list[dict[str, str]] = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    @property
    def n_items(self) -> int:
        return len(self._rows)

    def add(self, item: np.ndarray, row: dict[str, Any], *, source_path: str | Path | None = None) -> None:
        """Append one item ``[C, *S]`` with its manifest row (``id``, ``subject``, ``source``, ...)."""
        if tuple(item.shape) != self.item_shape:
            where = source_path if source_path is not None else row.get("id")
            if item.shape[0] != self.item_shape[0]:
                raise InputError(
                    f"image has {item.shape[0]} channel(s) but the dataset's items have "
                    f"{self.item_shape[0]} (shape {tuple(item.shape)} vs {self.item_shape}): greyscale and "
                    "colour images cannot be mixed in one dataset; convert them to one kind",
                    where,
                )
            hint = (
                "; use --size to resize 2D images to one size"
                if len(item.shape) == 3 and self.recipe.get("size") is None
                else ""
            )
            raise InputError(
                f"image shape {tuple(item.shape)} differs from the dataset's {self.item_shape} "
                f"(mixed sizes{hint})",
                where,
            )
        full = {c: None for c in MANIFEST_COLUMNS}
        full.update(row)
        full["index"] = len(self._rows)
        self._rows.append(full)
        self._buffer.append(np.asarray(item, dtype=self.dtype))
        self._buffered += 1
        if self._buffered >= self.chunk_items:
            self._flush()

    def exclude(self, item_id: str, reason: str, *, logged: bool = False) -> None:
        """Record an item left out (e.g. a constant image) in ``dataset.json``; warn unless ``logged``."""
        if not logged:
            log.warning("excluded %s: %s", item_id, reason)
        self.excluded.append({"id": item_id, "reason": reason})

    def _flush(self) -> None:
        if not self._buffer:
            return
        block = np.stack(self._buffer)
        if self._array is None:
            self._array = zarr.create_array(
                store=str(self._tmp / ARRAY_DIR),
                shape=(0, *self.item_shape),
                chunks=(self.chunk_items, *self.item_shape),
                dtype=self.dtype,
                compressors=_compressors_for(block),
            )
        self._array.append(block, axis=0)
        self._n_written += len(block)
        self._buffer.clear()
        self._buffered = 0

    def abort(self) -> None:
        """Remove the temporary folder; ``out`` is left as it was."""
        _remove(self._tmp)

    def commit(self) -> Dataset:
        """Write manifest and ``dataset.json`` and move the folder into place."""
        self._flush()
        if not self._rows:
            self.abort()
            raise InputError("no items to write (every input was excluded or empty)", self.out)
        manifest = pd.DataFrame(self._rows, columns=list(MANIFEST_COLUMNS) + self._extra_columns())
        manifest["index"] = manifest["index"].astype("int64")
        manifest["slice_index"] = manifest["slice_index"].astype("Int64")
        for col in ("id", "subject", "source", "slice_axis", "split", "label"):
            manifest[col] = manifest[col].astype("string")
        if manifest["id"].duplicated().any():
            dup = manifest.loc[manifest["id"].duplicated(), "id"].iloc[0]
            self.abort()
            raise InputError(f"duplicate item id {dup!r}", self.out)
        manifest.to_parquet(self._tmp / MANIFEST_FILE, index=False)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_items": len(manifest),
            "item_shape": list(self.item_shape),
            "spatial_dims": len(self.item_shape) - 1,
            "channels": list(self.channels),
            "dtype": str(np.dtype(self.dtype)),
            "chunk_items": self.chunk_items,
            "recipe": self.recipe,
            "n_subjects": int(manifest["subject"].nunique()),
            "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
            "excluded": self.excluded,
            "memscan_version": __version__,
            **self.info,
        }
        (self._tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        atomic.swap_folder(self._tmp, self.out)
        return Dataset.open(self.out)

    def _extra_columns(self) -> list[str]:
        extra: list[str] = []
        for row in self._rows:
            for key in row:
                if key not in MANIFEST_COLUMNS and key not in extra:
                    extra.append(key)
        return extra


def _validate_manifest(manifest: pd.DataFrame, info: dict[str, Any], root: Path) -> None:
    """Refuse a manifest that cannot describe the stored array: missing columns, null or repeated ids, null
    subjects, or an ``index`` that is not a permutation of ``0 .. n_items - 1``."""
    missing = [c for c in ("index", "id", "subject") if c not in manifest.columns]
    if missing:
        raise InputError(f"the dataset's manifest lacks the column(s) {', '.join(missing)}", root)
    if manifest["id"].isna().any():
        raise InputError(
            f"the dataset's manifest has {int(manifest['id'].isna().sum())} item(s) without an id", root
        )
    dup = manifest["id"][manifest["id"].duplicated()]
    if len(dup):
        raise InputError(
            f"the dataset's manifest repeats item ids (e.g. {dup.iloc[0]!r}, {len(dup)} repeats)", root
        )
    if manifest["subject"].isna().any():
        n = int(manifest["subject"].isna().sum())
        raise InputError(f"the dataset's manifest has {n} item(s) without a subject", root)
    n_items = int(info.get("n_items", -1))
    index = pd.to_numeric(manifest["index"], errors="coerce")
    if (
        len(manifest) != n_items
        or index.isna().any()
        or sorted(index.astype("int64")) != list(range(n_items))
    ):
        raise InputError(
            f"the dataset's manifest index does not match its {n_items} stored items (rows {len(manifest)}, "
            "indices missing, repeated or out of range)",
            root,
        )


@dataclass
class Dataset:
    """A dataset folder opened for reading (or one split of it).

    Attributes:
        path: the folder (or ``folder/split`` for a split view).
        info: the parsed ``dataset.json``.
        manifest: one row per item of this view, ``index`` = position in the stored array.
    """

    path: Path
    info: dict[str, Any]
    manifest: pd.DataFrame
    root: Path

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """Open a dataset folder, or ``DATASET/SPLIT`` for the items of one split."""
        path = Path(path)
        split = None
        root = path
        if not path.exists() and is_dataset(path.parent):
            root, split = path.parent, path.name
        if not root.exists():
            raise InputError("does not exist", path)
        if not is_dataset(root):
            raise InputError(f"is not a memscan dataset folder (no valid {INFO_FILE})", path)
        try:
            info = json.loads((root / INFO_FILE).read_text())
            manifest = pd.read_parquet(root / MANIFEST_FILE)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the dataset's manifest: {exc}", root) from None
        _validate_manifest(manifest, info, root)
        if split is not None:
            splits = sorted(str(s) for s in manifest["split"].dropna().unique())
            if split not in splits:
                raise InputError(
                    f"no such split {split!r} in dataset {root} (splits: {', '.join(splits) or 'none'})", path
                )
            manifest = manifest[manifest["split"] == split].reset_index(drop=True)
        ds = cls(path=path, info=info, manifest=manifest, root=root)
        if ds.array.shape[0] != info["n_items"]:
            raise InputError(
                f"array holds {ds.array.shape[0]} items but dataset.json says {info['n_items']}", root
            )
        return ds

    @property
    def array(self) -> zarr.Array:
        if not hasattr(self, "_array"):
            try:
                self._array = zarr.open_array(str(self.root / ARRAY_DIR), mode="r")
            except Exception as exc:  # zarr raises several types for a damaged store
                raise InputError(f"cannot open the image array: {exc}", self.root / ARRAY_DIR) from None
        return self._array

    @property
    def n_items(self) -> int:
        return len(self.manifest)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.info["item_shape"])

    @property
    def spatial_dims(self) -> int:
        return int(self.info["spatial_dims"])

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.info["channels"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.info["dtype"])

    @property
    def ids(self) -> np.ndarray:
        return self.manifest["id"].to_numpy(dtype=object)

    @property
    def subjects(self) -> np.ndarray:
        return self.manifest["subject"].to_numpy(dtype=object)

    @property
    def item_nbytes(self) -> int:
        return int(np.prod(self.item_shape)) * self.dtype.itemsize

    def _stored(self, positions: np.ndarray) -> np.ndarray:
        return self.manifest["index"].to_numpy(dtype=np.int64)[positions]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Items ``start:stop`` of this view, ``[n, C, *S]`` in the stored dtype."""
        stored = self._stored(np.arange(start, min(stop, self.n_items)))
        return self._read_stored(stored)

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Items at the given positions of this view (any order), ``[n, C, *S]``."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return np.empty((0, *self.item_shape), dtype=self.dtype)
        stored = self._stored(positions)
        order = np.argsort(stored, kind="stable")
        out = self._read_stored(stored[order])
        result = np.empty_like(out)
        result[order] = out
        return result

    def _read_stored(self, stored: np.ndarray) -> np.ndarray:
        if stored.size == 0:
            return np.empty((0, *self.item_shape), dtype=self.dtype)
        lo, hi = int(stored[0]), int(stored[-1]) + 1
        try:
            if hi - lo == stored.size and np.all(np.diff(stored) == 1):
                return np.asarray(self.array[lo:hi])
            return np.asarray(self.array.oindex[stored])
        except Exception as exc:  # zarr/numcodecs raise many types for a truncated or corrupt chunk
            raise InputError(
                f"cannot read stored items {lo}..{hi - 1} (a damaged or truncated chunk?): "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                self.root / ARRAY_DIR,
            ) from None

    def iter_blocks(self, block_items: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, items [n, C, *S])`` for consecutive blocks of this view."""
        block_items = max(1, int(block_items))
        for lo in range(start, self.n_items, block_items):
            yield lo, self.read(lo, lo + block_items)
