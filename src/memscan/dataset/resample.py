"""Resample a dataset to another item size (``memscan scan --resize``).

A generator trained at 64×64 on slices prepared at 128×128 (or a StyleGAN2 that only makes powers of
two) gives synthetic items of another size than the training set. ``scan --resize`` brings SYNTHETIC
(and HOLDOUT) to TRAIN's spatial size before the search, as a dataset folder in the run's
``.prepared/`` cache, so the search, the tables and the report all see items of one shape (the report's
gallery then shows the resampled synthetic item, which is what was compared).

Interpolation: torch's (bi/tri)linear ``interpolate`` with ``align_corners=False`` (pixel centres
aligned, the usual image-resize convention), with anti-aliasing when a 2D image shrinks (a box-like
prefilter, so a 256→64 reduction averages rather than samples). 8-bit datasets stay 8-bit (rounded
and clipped), so the exact integer path still applies; others are stored as float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memscan.core.fingerprint import fingerprint
from memscan.dataset.store import MANIFEST_COLUMNS, Dataset, DatasetWriter, check_output_folder
from memscan.errors import InputError

__all__ = ["resize_items", "resized_dataset"]


def resize_items(items: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """``[n, C, *S]`` → ``[n, C, *spatial]`` in the input's dtype (uint8: rounded and clipped)."""
    if items.shape[2:] == tuple(spatial):
        return items
    x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    dims = len(spatial)
    shrink = any(t < s for t, s in zip(spatial, items.shape[2:], strict=True))
    y = torch.nn.functional.interpolate(
        x,
        size=tuple(spatial),
        mode="bilinear" if dims == 2 else "trilinear",
        align_corners=False,
        antialias=dims == 2 and shrink,
    ).numpy()
    if items.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(items.dtype if np.issubdtype(items.dtype, np.floating) else np.float32)


def resized_dataset(ds: Dataset, like: Dataset, out: Path, *, block_items: int = 256) -> Dataset:
    """``ds`` resampled to the spatial size of ``like``, written to ``out`` (reused while unchanged).

    Raises:
        InputError: the channel counts or the number of spatial dimensions differ (no resize can fix
            those).
    """
    src, dst = tuple(ds.item_shape), tuple(like.item_shape)
    if src[0] != dst[0]:
        raise InputError(
            f"--resize changes the size, not the channels: {ds.path} has {src[0]} channel(s), "
            f"{like.path} has {dst[0]}"
        )
    if len(src) != len(dst):
        raise InputError(f"--resize cannot turn {len(src) - 1}D items ({ds.path}) into {len(dst) - 1}D ones")
    key = fingerprint(ds.info.get("fingerprint"), str(ds.path), ds.n_items, list(dst), length=64)
    out.parent.mkdir(parents=True, exist_ok=True)
    if check_output_folder(out, overwrite=True, fingerprint=key):
        return Dataset.open(out)
    dtype = "uint8" if ds.dtype == np.uint8 else "float32"
    manifest = ds.manifest
    extra = [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
    with DatasetWriter(
        out,
        item_shape=dst,
        dtype=dtype,
        channels=tuple(ds.channels),
        recipe={"name": "resize", "from": list(src), "to": list(dst), "source": str(ds.path)},
        info={"fingerprint": key},
        overwrite=True,
    ) as writer:
        for start, items in ds.iter_blocks(block_items):
            resized = resize_items(items, dst[1:])
            rows = manifest.iloc[start : start + len(items)][[*MANIFEST_COLUMNS[1:], *extra]]
            for item, row in zip(resized, rows.to_dict("records"), strict=True):
                writer.add(item, row)
        return writer.commit()
