"""A scan's inputs: the datasets (opened, or raw folders prepared on the fly), checked against each other,
and what is compared of each item (channel, shared mask)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memscan.core.validate import did_you_mean
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.preprocess.prepare import open_or_prepare
from memscan.scanning.options import ScanOptions
from memscan.search import variants


@dataclass
class Inputs:
    """The datasets of one scan (all items ``[n, C, *S]`` of the same shape)."""

    train: Dataset
    synthetic: Dataset
    holdout: Dataset | None


def open_inputs(
    train: str | Path,
    synthetic: str | Path,
    holdout: str | Path | None,
    opts: ScanOptions,
    cache: Path,
    subject_pattern: str | None = None,
) -> Inputs:
    """Open (or prepare into ``cache``) the datasets and check that they can be compared.

    Raises:
        InputError: empty datasets, different item shapes, held-out subjects in the training set, options
            the data cannot honour (``top_k`` above the training set size, shifts or orientations of
            items that do not allow them).
    """
    train_ds = open_or_prepare(train, cache, name="train", subject_pattern=subject_pattern)
    synth_ds = open_or_prepare(synthetic, cache, name="synthetic", subject_pattern=subject_pattern)
    hold_ds = (
        open_or_prepare(holdout, cache, name="holdout", subject_pattern=subject_pattern)
        if holdout is not None
        else None
    )
    for what, ds in (("training", train_ds), ("synthetic", synth_ds), ("held-out", hold_ds)):
        if ds is not None and ds.n_items == 0:
            raise InputError(f"the {what} dataset has no items", ds.path)
    if opts.resize:
        from memscan.dataset.resample import resized_dataset

        if synth_ds.item_shape != train_ds.item_shape:
            synth_ds = resized_dataset(synth_ds, train_ds, cache / "synthetic-resized")
        if hold_ds is not None and hold_ds.item_shape != train_ds.item_shape:
            hold_ds = resized_dataset(hold_ds, train_ds, cache / "holdout-resized")
    check_compatible(train_ds, synth_ds)
    if hold_ds is not None:
        check_compatible(train_ds, hold_ds, "HOLDOUT")
        overlap = set(hold_ds.subjects) & set(train_ds.subjects)
        if overlap:
            raise InputError(
                f"held-out subjects must not be in the training set; {len(overlap)} are, e.g. "
                f"{sorted(overlap)[0]!r}",
                hold_ds.path,
            )
    check_options_fit(opts, train_ds)
    return Inputs(train_ds, synth_ds, hold_ds)


def check_compatible(train: Dataset, synth: Dataset, name: str = "SYNTHETIC") -> None:
    """Refuse datasets whose items differ in shape."""
    if train.item_shape != synth.item_shape:
        raise InputError(
            f"item shapes differ: TRAIN {train.path} has {list(train.item_shape)}, {name} {synth.path} has "
            f"{list(synth.item_shape)} (prepare both with the same recipe and --size, or pass --resize)"
        )


def check_options_fit(opts: ScanOptions, train: Dataset) -> None:
    """Refuse options the training items cannot honour (in the library's parameter names)."""
    if opts.top_k > train.n_items:
        raise InputError(f"top_k {opts.top_k} is larger than the training set ({train.n_items} items)")
    if opts.max_shift and train.spatial_dims != 2:
        raise InputError("max_shift works on 2D images only; these items are 3D volumes")
    if opts.max_shift and opts.mask != "none":
        raise InputError("max_shift cannot be combined with mask (the overlap would leave the mask)")
    if opts.max_shift:
        variants.check_max_shift(opts.max_shift, tuple(train.item_shape[1:]))
    if opts.orientations:
        if train.spatial_dims != 2:
            raise InputError("orientations works on 2D images only; these items are 3D volumes (use flips)")
        h, w = train.item_shape[1:]
        if h != w:
            raise InputError(
                f"orientations needs square images (rotations and transposes keep the shape); these are "
                f"{h}x{w} pixels",
                train.path,
            )
        if opts.mask != "none":
            raise InputError("orientations cannot be combined with mask (a rotated item leaves the mask)")


def channel_indices(train: Dataset, channel: str | None) -> list[int] | None:
    """Positions of the compared channel (``[i]``), or None for all channels."""
    if channel is None:
        return None
    names = list(train.channels)
    if channel not in names:
        raise InputError(
            f"no channel {channel!r} (channels: {', '.join(names)}){did_you_mean(channel, names)}", train.path
        )
    return [names.index(channel)]


def load_mask(spec: str, train: Dataset, channels: list[int] | None, budget: int) -> np.ndarray | None:
    """The shared mask ``[C', *S]`` (bool) or None: ``none``, ``foreground`` or a .npy/.nii/.png file.

    Raises:
        InputError: a missing, unreadable or pickled file, a shape that does not fit, an empty mask.
    """
    if spec == "none":
        return None
    shape = train.item_shape if channels is None else (len(channels), *train.item_shape[1:])
    if spec == "foreground":
        total = np.zeros(shape, dtype=np.float64)
        block = max(1, budget // (8 * max(1, train.item_nbytes)))
        for _, items in train.iter_blocks(block):
            if channels is not None:
                items = items[:, channels]
            total += items.sum(axis=0, dtype=np.float64)
        mask = variants.foreground_mask(total / max(1, train.n_items))
    else:
        mask = _read_mask_file(Path(spec), shape)
    if mask.shape == tuple(shape[1:]):
        mask = np.broadcast_to(mask, shape)
    if not mask.any():
        raise InputError("the mask selects no pixel", spec)
    return np.ascontiguousarray(mask)


def _read_mask_file(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from memscan.io.readers import read_image

    if not path.exists():
        raise InputError("mask file does not exist (mask takes none, foreground or a file)", path)
    try:
        if path.suffix == ".npy":
            mask = np.load(path, allow_pickle=False)
        else:
            mask = read_image(path).array
            if mask.shape[0] == 1 and len(mask.shape) - 1 == len(shape) - 1:
                mask = mask[0]
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # truncated, pickled, not an array
        raise InputError(f"cannot read the mask ({type(exc).__name__}: {exc})", path) from None
    mask = np.asarray(mask) != 0
    if mask.shape not in (tuple(shape), tuple(shape[1:])):
        raise InputError(
            f"mask shape {list(mask.shape)} does not match the items' {list(shape)} "
            f"(or their spatial shape {list(shape[1:])})",
            path,
        )
    return mask
