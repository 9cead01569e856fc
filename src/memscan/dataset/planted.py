"""A synthetic set with known answers: copies of training items planted among novel images.

Used by the demo and the tests: each planted item is a training item after a known transform (exact
copy, added noise, left-right flip, small shift, intensity rescale); novel items come from subjects
never used for training. The manifest records the truth (``planted_train_id``, ``planted_transform``)
so a scan's answer can be checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memscan.dataset.store import Dataset, DatasetWriter, check_output_folder
from memscan.errors import InputError

TRANSFORMS = ("exact", "noisy", "flip", "shift", "rescale")


def _shift(item: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate the last two axes by (dy, dx) pixels with zero fill. ``[C, H, W]`` → same shape."""
    out = np.zeros_like(item)
    h, w = item.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = item[..., ys, xs]
    return out


def transform_item(item: np.ndarray, name: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Apply one planted transform to ``item [C, H, W]``; returns the new item and its label.

    The label uses the scan's transform vocabulary where the scan can recover it (``flip``,
    ``shift(+dy,+dx)``); noise and intensity rescaling leave the transform ``none`` (Pearson
    correlation is invariant to rescaling, and noise only lowers it).
    """
    info = np.iinfo(item.dtype) if np.issubdtype(item.dtype, np.integer) else None
    x = item.astype(np.float64)
    label = "none"
    if name == "exact":
        pass
    elif name == "noisy":
        x = x + rng.normal(0.0, 0.03 * (x.max() - x.min() + 1e-9), size=x.shape)
    elif name == "flip":
        x = x[..., ::-1]
        label = "flip"
    elif name == "shift":
        dy, dx = (int(v) for v in rng.choice([-3, -2, 2, 3], size=2))
        x = _shift(x, dy, dx)
        label = f"shift({dy:+d},{dx:+d})"
    elif name == "rescale":
        x = 0.7 * x + 0.05 * (x.max() - x.min())
    else:
        raise InputError(f"unknown planted transform {name!r}; expected one of {', '.join(TRANSFORMS)}")
    if info is not None:
        x = np.clip(np.rint(x), info.min, info.max)
    return x.astype(item.dtype), label


def plant_copies(
    train: Dataset,
    novel: Dataset | None,
    out: str | Path,
    *,
    n_copies: int,
    n_novel: int = 0,
    seed: int = 0,
    transforms: tuple[str, ...] = TRANSFORMS,
    overwrite: bool = False,
) -> Dataset:
    """Write a "synthetic" dataset of planted copies of ``train`` items and novel items of ``novel``.

    Args:
        train: dataset whose items are copied (2D items ``[C, H, W]``).
        novel: dataset of unseen subjects (same item shape), or None.
        out: dataset folder to write.
        n_copies: number of planted copies, transforms cycled in order.
        n_novel: number of novel items taken from ``novel``.
        seed: seed of the choice of items, noise and shifts.
        transforms: which transforms to cycle through.
        overwrite: replace a dataset already at ``out``.
    """
    out = Path(out)
    if train.spatial_dims != 2:
        raise InputError("planted copies are made of 2D items", train.path)
    check_output_folder(out, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(train.n_items, size=min(n_copies, train.n_items), replace=False))
    originals = train.take(picks)
    items, rows = [], []
    for j, (pos, item) in enumerate(zip(picks, originals, strict=True)):
        name = transforms[j % len(transforms)]
        new, label = transform_item(item, name, rng)
        items.append(new)
        rows.append(
            {
                "planted_train_id": str(train.ids[pos]),
                "planted_subject": str(train.subjects[pos]),
                "planted_transform": name,
                "expected_transform": label,
            }
        )
    if novel is not None and n_novel:
        if novel.item_shape != train.item_shape:
            raise InputError(
                f"novel items {list(novel.item_shape)} differ from training items {list(train.item_shape)}",
                novel.path,
            )
        take = np.sort(rng.choice(novel.n_items, size=min(n_novel, novel.n_items), replace=False))
        for item in novel.take(take):
            items.append(item)
            rows.append(
                {
                    "planted_train_id": None,
                    "planted_subject": None,
                    "planted_transform": "novel",
                    "expected_transform": None,
                }
            )
    order = rng.permutation(len(items))
    with DatasetWriter(
        out,
        item_shape=train.item_shape,
        dtype=str(train.dtype),
        channels=train.channels,
        recipe={"name": "planted", "seed": seed, "transforms": list(transforms), "source": str(train.path)},
        overwrite=overwrite,
    ) as writer:
        for new_pos, old_pos in enumerate(order):
            row = {"id": f"sample_{new_pos:06d}", "subject": "planted", "source": "planted", **rows[old_pos]}
            writer.add(items[old_pos], row)
        return writer.commit()
