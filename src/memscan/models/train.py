"""The shared training loop of every model family: options checked first, then seeded steps, logs,
sample grids and checkpoints with exact resume.

A family (``memscan.models.registry``) owns its networks, losses and sampling; this loop owns the data
(``memscan.models.data``), devices and mixed precision (``memscan.models.device``), checkpoints
(``memscan.models.checkpoint``), the model folder (``memscan.models.folder``) and grids
(``memscan.models.grids``). As in stylegan2-ada-pytorch's ``training/``, every option is validated by
:func:`train_model` into a :class:`TrainPlan` before any file is written; :func:`run_training` then only
runs.

Losses stay on the device between log intervals (no synchronisation per step); bf16 autocast, fused AdamW
and channels-last on CUDA, and optional ``torch.compile`` (the model's ``configure`` hook). When the data do
not fit the device's memory next to the model, they stay in host memory (pinned on CUDA) and each batch is
copied over; when they do not fit the host's memory either, training stops with an InputError.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memscan.core.progress import progress
from memscan.core.validate import check_int
from memscan.core.version import __version__
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.models.base import DataInfo, GenerativeModel
from memscan.models.checkpoint import KEEP_CHECKPOINTS, latest_checkpoint, load_checkpoint, save_checkpoint
from memscan.models.data import DeviceData, data_info
from memscan.models.device import available_memory, gib, speed_settings, torch_device
from memscan.models.folder import (
    CONFIG_FILE,
    LOG_FILE,
    MODEL_FORMAT,
    grid_path,
    read_config_file,
    read_log,
    truncate_log,
    write_config,
)
from memscan.models.grids import GRID_ITEMS, write_grid
from memscan.models.registry import build_model, check_preset, family_module
from memscan.models.rng import fork_rng, seed_everything
from memscan.models.scaling import data_scaling

__all__ = ["TrainPlan", "read_log", "run_training", "train_model"]

log = logging.getLogger(__name__)


@dataclass
class TrainPlan:
    """A training run whose every option has been checked (built by :func:`train_model`).

    Attributes:
        data, out: the dataset and the model folder.
        family, preset: the model family and its preset.
        model: the built and configured model (weights seeded by ``seed``).
        ds, info, scaling: the dataset, its shape and its intensity scaling.
        device, keep_on: where the model runs and where the stored items live.
        total, batch, seed: steps to reach, images per step, the run's seed.
        resume, stored: continue the folder's run; its stored ``config.json`` (None for a new run).
        log_every, checkpoint_every, sample_every, keep_checkpoints: the loop's intervals.
        autocast: the dtype the loop autocasts to itself (a model without a ``configure`` hook), or None.
    """

    data: Path
    out: Path
    family: str
    preset: str
    model: GenerativeModel
    ds: Dataset
    info: DataInfo
    scaling: dict[str, float]
    device: torch.device
    keep_on: torch.device
    total: int
    batch: int
    seed: int
    resume: bool
    stored: dict[str, Any] | None
    log_every: int
    checkpoint_every: int
    sample_every: int
    keep_checkpoints: int
    autocast: torch.dtype | None


def train_model(
    data: str | Path,
    out: str | Path,
    family: str,
    *,
    config: str | Path | dict[str, Any] | None = None,
    preset: str | None = None,
    steps: int | None = None,
    batch: int | None = None,
    device: str = "auto",
    resume: bool = False,
    seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 1000,
    sample_every: int = 1000,
    compile: bool = False,
    keep_checkpoints: int = KEEP_CHECKPOINTS,
) -> Path:
    """Train a generative model of ``family`` on a dataset folder and write a model folder.

    Every option is validated before any work starts.

    Args:
        data: dataset folder or ``DATASET/SPLIT`` (items ``[N, C, *S]``).
        out: model folder to create (or to continue with ``resume``).
        family: ``ddpm`` or ``stylegan2``.
        config: config overrides: a dict, or a JSON file of them (or a model folder's ``config.json``).
        preset: the family's preset (default: the config file's, else ``quick``).
        steps: total optimisation steps (default: the config's ``steps``); a resumed run continues to it.
        batch: images per step (default: the config's ``batch_size``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue from ``out``'s latest checkpoint, exactly.
        seed: seeds the weights' initialisation, the model's noise and the batch sampler.
        log_every: steps per ``log.jsonl`` line.
        checkpoint_every: steps per checkpoint (0: only at the end).
        sample_every: steps per sample grid (0: only at the end).
        compile: ``torch.compile`` the network (off by default; mainly useful on CUDA).
        keep_checkpoints: newest checkpoints kept.

    Returns:
        The model folder.

    Raises:
        InputError: bad option, dataset, config, folder, or too little memory (exit 2).
    """
    data, out = Path(data), Path(out)
    family_module(family)  # unknown / unavailable family first
    if steps is not None:
        check_int(steps, "steps", minimum=1)
    if batch is not None:
        check_int(batch, "batch", minimum=1)
    check_int(log_every, "log_every", minimum=1)
    check_int(checkpoint_every, "checkpoint_every", minimum=0)
    check_int(sample_every, "sample_every", minimum=0)
    check_int(keep_checkpoints, "keep_checkpoints", minimum=1)
    dev = torch_device(device)
    ds, info = _open_data(data)
    overrides, file_preset = _read_overrides(config, family)
    stored: dict[str, Any] | None = None
    if resume:
        stored = _stored_run(out, data, family, config, overrides, preset, batch, info)
        preset, overrides = stored["preset"], dict(stored["config"])
        batch, seed = int(stored["train"]["batch"]), int(stored["train"]["seed"])
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError("exists and is not empty; pass resume to continue a run there", out)
        if not out.parent.exists():
            raise InputError("parent folder does not exist", out.parent)
    preset = preset or file_preset or "quick"
    check_preset(family, preset)

    seed_everything(seed)  # before the build: the weights' initialisation is seeded
    model = build_model(family, overrides, info, preset=preset)
    batch = batch or _default_batch(model)
    total = steps or int(model.config_dict().get("steps", 0)) or None
    if total is None:
        raise InputError("steps is needed (the config has no default number of steps)")
    speed = speed_settings(dev)
    configure = getattr(model, "configure", None)
    if callable(configure):
        configure(dev, compile=compile, **speed)
    else:
        for m in model.modules().values():
            m.to(dev)
    plan = TrainPlan(
        data=data,
        out=out,
        family=family,
        preset=preset,
        model=model,
        ds=ds,
        info=info,
        scaling=data_scaling(ds),
        device=dev,
        keep_on=_data_placement(model, batch, info, ds, dev),
        total=total,
        batch=batch,
        seed=seed,
        resume=resume,
        stored=stored,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        keep_checkpoints=keep_checkpoints,
        autocast=None if callable(configure) else speed["amp"],
    )
    # --- every option checked: work starts here ---
    return run_training(plan)


def _open_data(data: Path) -> tuple[Dataset, DataInfo]:
    """The training dataset and its shape; 2D or 3D items, at least one."""
    ds = Dataset.open(data)
    if ds.n_items < 1:
        raise InputError("the dataset has no items", data)
    if ds.spatial_dims not in (2, 3):
        raise InputError(f"items must be 2D or 3D images, got item shape {ds.item_shape}", data)
    splits = sorted(str(s) for s in ds.manifest["split"].dropna().unique())
    if len(splits) > 1:
        log.warning(
            "training on all %d items of %s, which has the splits %s; pass %s/<split> to train on one",
            ds.n_items,
            data,
            ", ".join(splits),
            data,
        )
    return ds, data_info(ds)


def _read_overrides(
    config: str | Path | dict[str, Any] | None, family: str
) -> tuple[dict[str, Any], str | None]:
    """``(config overrides, the config file's preset or None)`` from a dict or a JSON file."""
    if isinstance(config, dict):
        return dict(config), None
    if config is None:
        return {}, None
    overrides, file_preset, file_family = read_config_file(Path(config))
    if file_family is not None and file_family != family:
        raise InputError(f"the config is for family {file_family!r}, not {family!r}", config)
    return overrides, file_preset


def _stored_run(
    out: Path,
    data: Path,
    family: str,
    config: Any,
    overrides: dict[str, Any],
    preset: str | None,
    batch: int | None,
    info: DataInfo,
) -> dict[str, Any]:
    """The ``config.json`` of the run to resume, checked against the options given now.

    An exact resume needs the same family, config, preset, data shape and batch as the stored run.
    """
    if not (out / CONFIG_FILE).is_file():
        raise InputError("resume: no model folder here (config.json missing)", out)
    stored = json.loads((out / CONFIG_FILE).read_text())
    if stored.get("family") != family:
        raise InputError(f"resume: the folder holds a {stored.get('family')!r} model, not {family!r}", out)
    if config is not None and overrides and {**stored["config"], **overrides} != stored["config"]:
        raise InputError("resume: config differs from the stored config; start a new folder", config)
    if preset is not None and preset != stored.get("preset"):
        raise InputError(f"resume: the run used preset {stored.get('preset')!r}, not {preset!r}", out)
    if list(stored["data"]["channels"]) != list(info.channels) or list(
        stored["data"]["spatial_shape"]
    ) != list(info.spatial_shape):
        raise InputError("resume: the dataset's channels or image shape differ from the run's", data)
    if batch is not None and batch != stored["train"]["batch"]:
        raise InputError(
            f"resume: the run used batch {stored['train']['batch']}; a different batch cannot resume exactly",
            out,
        )
    return stored


def _data_placement(
    model: GenerativeModel, batch: int, info: DataInfo, ds: Dataset, dev: torch.device
) -> torch.device:
    """Where the stored items live: on ``dev`` when they fit beside the model, else in host memory.

    Raises:
        InputError: the model's step does not fit ``dev``, or the data do not fit the host.
    """
    need = _memory_estimate(model, batch, info)
    free = available_memory(dev)
    if need > 0.9 * free:
        raise InputError(
            f"training needs about {gib(need)} on {dev.type} with batch {batch} but only {gib(free)} is "
            "free; lower the batch or use a smaller preset"
        )
    data_bytes = ds.n_items * ds.item_nbytes
    if data_bytes + need <= 0.9 * free:
        return dev
    host_free = available_memory(torch.device("cpu"))
    if data_bytes > 0.8 * host_free:
        raise InputError(
            f"the dataset needs {gib(data_bytes)} in memory but only {gib(host_free)} is free; train "
            "on a subset (DATASET/SPLIT) or a smaller --size"
        )
    log.warning("the dataset (%s) stays in host memory; each batch is copied to %s", gib(data_bytes), dev)
    return torch.device("cpu")


def run_training(plan: TrainPlan) -> Path:
    """Run a checked plan: write or continue the model folder, then step to ``plan.total``."""
    out, model = plan.out, plan.model
    out.mkdir(exist_ok=True)
    feed = DeviceData(plan.ds, plan.scaling, plan.device, plan.keep_on, plan.seed)
    start, elapsed = 0, 0.0
    if plan.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            start, elapsed = load_checkpoint(ckpt, model, feed)
            log.info("resumed from %s (step %d)", ckpt.name, start)
        truncate_log(out / LOG_FILE, start)
        stored = plan.stored
        if stored is not None and stored["train"].get("steps") != plan.total:
            stored["train"]["steps"] = plan.total
            write_config(out, stored)
    else:
        write_config(out, _stored_config(plan))
    if start >= plan.total:
        log.info("%s already has %d steps (asked for %d): nothing to do", out, start, plan.total)
        return out
    _loop(plan, feed, start, elapsed)
    return out


def _stored_config(plan: TrainPlan) -> dict[str, Any]:
    """The new folder's ``config.json``."""
    return {
        "format": MODEL_FORMAT,
        "family": plan.family,
        "preset": plan.preset,
        "config": plan.model.config_dict(),
        "data": {
            **plan.info.to_dict(),
            "scaling": plan.scaling,
            "path": str(plan.data.resolve()),
            "n_items": plan.ds.n_items,
            "fingerprint": plan.ds.info.get("fingerprint"),
        },
        "train": {"batch": plan.batch, "seed": plan.seed, "steps": plan.total, "device": plan.device.type},
        "memscan_version": __version__,
    }


def _loop(plan: TrainPlan, feed: DeviceData, start: int, elapsed: float) -> None:
    """Steps ``start + 1 .. plan.total``; log line, grid and checkpoint at their intervals and at the end."""
    model, batch, total, out = plan.model, plan.batch, plan.total, plan.out
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    n_in_interval, t_interval = 0, time.perf_counter()
    t_start = time.perf_counter() - elapsed
    with progress(total - start, f"train {plan.family}") as advance, open(out / LOG_FILE, "a") as logf:
        for step in range(start + 1, total + 1):
            x = feed.batch(batch)
            if plan.autocast is not None:
                with torch.autocast(plan.device.type, dtype=plan.autocast):
                    losses = model.train_step(x, step)
            else:
                losses = model.train_step(x, step)
            for k, v in losses.items():  # losses stay on the device until the log line
                v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums[k] + v if k in sums else v
                counts[k] = counts.get(k, 0) + 1
            n_in_interval += 1
            advance(1)
            last = step == total
            if step % plan.log_every == 0 or last:
                record = {"step": step}
                record.update({k: float(v) / counts[k] for k, v in sums.items()})  # syncs here only
                now = time.perf_counter()
                record["images_per_s"] = batch * n_in_interval / max(now - t_interval, 1e-9)
                record["elapsed_s"] = now - t_start
                record.update({k: v for k, v in model.extra_state().items() if isinstance(v, float | int)})
                logf.write(json.dumps(record) + "\n")
                logf.flush()
                log.info("step %d %s", step, {k: round(v, 5) for k, v in record.items() if k != "step"})
                sums, counts, n_in_interval, t_interval = {}, {}, 0, time.perf_counter()
            if (plan.sample_every and step % plan.sample_every == 0) or last:
                with fork_rng(plan.device):  # a grid must not change the training's random numbers
                    imgs = model.sample(GRID_ITEMS, torch.Generator().manual_seed(plan.seed))
                write_grid(imgs, grid_path(out, step))
            if (plan.checkpoint_every and step % plan.checkpoint_every == 0) or last:
                save_checkpoint(
                    out, step, model, feed, elapsed=time.perf_counter() - t_start, keep=plan.keep_checkpoints
                )


def _default_batch(model: GenerativeModel) -> int:
    cfg = model.config_dict()
    return int(cfg.get("batch_size", cfg.get("batch", 32)))


def _memory_estimate(model: GenerativeModel, batch: int, data: DataInfo) -> int:
    estimate = getattr(model, "memory_estimate", None)
    if callable(estimate):
        return int(estimate(batch))
    n_params = sum(p.numel() for m in model.modules().values() for p in m.parameters())
    item = data.n_channels * math.prod(data.spatial_shape)
    return int(n_params * 4 * 5 + batch * item * 4 * 400)  # a generous guess for an unknown family
