"""Seeded sampling from a trained model folder into a dataset folder that ``memscan scan`` reads directly.

Reproducibility: item ``i`` of a run is generated from random numbers seeded by ``(seed, i)`` only, for
families that take one generator per item (``per_item_generators``: DDPM and StyleGAN2), so the result does
not depend on ``batch`` (up to floating-point rounding of batched convolutions, ~1e-6 before conversion to
the stored dtype; a uint8 pixel exactly on a rounding boundary may then differ by one level). A family
without per-item generators gets one generator per batch, seeded by ``(seed, batch index)``: the same seed
and batch size give the same images, a different batch size gives different (equally valid) images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from memscan.core.progress import progress
from memscan.core.validate import check_choice, check_int
from memscan.dataset.store import Dataset, DatasetWriter, check_output_folder
from memscan.errors import InputError
from memscan.models.ddpm.config import SAMPLERS
from memscan.models.folder import load_model
from memscan.models.rng import batch_generator, item_generators
from memscan.models.scaling import from_model_range

__all__ = ["load_model", "sample_model"]

log = logging.getLogger(__name__)


def sample_model(
    model_dir: str | Path,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    batch: int | None = None,
    sampler: str | None = None,
    sampling_steps: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> Dataset:
    """Generate ``n`` images from the latest checkpoint (EMA weights) into the dataset folder ``out``.

    Items get ids ``sample_000000 …``, subject = the model folder's name, and the training data's channels,
    item shape and dtype (uint8: ``round(clip((x + 1) · 127.5))``), so ``memscan scan TRAIN out`` works.

    Args:
        model_dir: model folder written by ``memscan train``.
        n: number of images.
        out: dataset folder to write (atomically).
        seed: item ``i`` depends on ``(seed, i)`` (see the module docstring).
        batch: images generated at once (default: 4x the training batch on CUDA, 16 on the CPU).
        sampler: DDPM only: ``ddpm`` or ``ddim`` (default: the config's).
        sampling_steps: DDPM only: number of steps (default: the config's); with ``ddpm``, fewer than the
            model's T steps sample the strided ancestral chain.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace a dataset already at ``out``.

    Returns:
        The written dataset.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_int(n, "n", minimum=1)
    if batch is not None:
        check_int(batch, "batch", minimum=1)
    if sampling_steps is not None:
        check_int(sampling_steps, "sampling_steps", minimum=1)
    if sampler is not None:
        check_choice(sampler, SAMPLERS, "sampler")
    check_output_folder(out, overwrite=overwrite)
    model, stored, step, dev = load_model(model_dir, device)
    family = stored["family"]
    options: dict[str, Any] = {}
    if sampler is not None or sampling_steps is not None:
        if family != "ddpm":
            raise InputError(f"sampler and sampling_steps apply to ddpm models, not {family}")
        if sampler is not None:
            options["sampler"] = sampler
        if sampling_steps is not None:
            steps_max = int(stored["config"].get("num_train_timesteps", sampling_steps))
            if sampling_steps > steps_max:
                raise InputError(
                    f"sampling_steps must be <= num_train_timesteps={steps_max}, got {sampling_steps}"
                )
            options["sampling_steps"] = sampling_steps
    train_batch = int(stored["train"]["batch"])
    batch = batch or (4 * train_batch if dev.type == "cuda" else 16)
    d = stored["data"]
    item_shape = (len(d["channels"]), *d["spatial_shape"])
    per_item = bool(getattr(model, "per_item_generators", False))
    used_sampler = options.get("sampler", stored["config"].get("sampler")) if family == "ddpm" else None
    recipe = {
        "name": "sampled",
        "family": family,
        "model": model_dir.name,
        "checkpoint_step": step,
        "seed": seed,
        "sampler": used_sampler,
        "sampling_steps": options.get("sampling_steps", stored["config"].get("sampling_steps"))
        if used_sampler is not None
        else None,
        "generators": "per item" if per_item else f"per batch of {batch}",
    }
    writer = DatasetWriter(
        out,
        item_shape=item_shape,
        dtype=d["dtype"],
        channels=tuple(d["channels"]),
        recipe=recipe,
        info={"model_dir": str(model_dir.resolve()), "source_name": model_dir.name},
        overwrite=overwrite,
    )
    t0 = time.perf_counter()
    with writer, progress(n, f"sample {family}") as advance:
        for b, lo in enumerate(range(0, n, batch)):
            size = min(batch, n - lo)
            if per_item:
                gen: Any = item_generators(seed, lo, size)
            else:
                gen = batch_generator(seed, b)
            with torch.no_grad():
                images = model.sample(size, gen, **options)  # [size, C, *S] in [-1, 1]
            arr = from_model_range(images, d["scaling"], d["dtype"])
            for j in range(size):
                i = lo + j
                writer.add(
                    arr[j],
                    {
                        "id": f"sample_{i:06d}",
                        "subject": model_dir.name,
                        "source": f"{model_dir.name}@{step}",
                    },
                )
            advance(size)
        ds = writer.commit()
    seconds = time.perf_counter() - t0
    log.info("sampled %d images in %.1f s (%.1f images/s) into %s", n, seconds, n / max(seconds, 1e-9), out)
    return ds
