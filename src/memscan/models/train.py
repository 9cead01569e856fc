"""The shared training loop: data on the device, seeded batches, checkpoints, exact resume, logs, grids.

A model folder (written by :func:`train_model`, read by ``memscan.models.sample``)::

    MODEL/
      config.json                         family, preset, resolved config, data info (shape, channels,
                                          dtype, intensity scaling), training options, memscan version
      checkpoints/step_000123.safetensors model + EMA weights, optimizer state and RNG states as tensors;
                                          everything else (param groups, step, RNG scalars) as JSON in the
                                          safetensors metadata; never pickle. Written atomically.
      latest                              name of the newest complete checkpoint (written atomically)
      log.jsonl                           one line per log interval: step, losses, images/s, elapsed, aug p
      samples/step_000123.png             sample grids (first channel; 3D: the middle slice of the last axis)

Exact resume: a checkpoint holds the model, EMA, optimizer, the model's extra state, the torch (CPU and
CUDA), NumPy and Python RNG states and the state of the generator that draws the batches, so a run resumed
from step s computes exactly the same step s + 1 as an uninterrupted run (bitwise on the CPU; on CUDA up
to non-deterministic kernels).

Speed (a plain MONAI loop on a GPU is launch-bound): the whole training set is kept on the device in its
stored dtype (uint8 stays uint8: 4x less memory) and batches are gathered and scaled there; losses stay on
the device between log intervals (no synchronisation per step); bf16 autocast, fused AdamW and
channels-last on CUDA, and optional ``torch.compile`` (the model's ``configure`` hook). When the data do not
fit the device's memory next to the model, they stay in host memory (pinned on CUDA) and each batch is
copied over; when they do not fit the host's memory either, training stops with an InputError.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memscan.core.progress import progress
from memscan.core.version import __version__
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.models.base import DataInfo, GenerativeModel
from memscan.models.registry import build_model, check_preset, family_module

log = logging.getLogger(__name__)

MODEL_FORMAT = "memscan-model"
CONFIG_FILE = "config.json"
LATEST_FILE = "latest"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
KEEP_CHECKPOINTS = 3
GRID_ITEMS = 16


# --- devices and memory ------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an InputError."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


def speed_settings(device: torch.device) -> dict[str, Any]:
    """The options the training and sampling loops give a model's ``configure`` hook on ``device``.

    On CUDA: bf16 autocast and channels-last (tensor cores). On the CPU: neither (float32, the default
    layout). The tests run the CUDA settings on the CPU by replacing this function.
    """
    cuda = device.type == "cuda"
    return {"amp": torch.bfloat16 if cuda else None, "channels_last": cuda}


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (host RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is usually there
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# --- intensity scaling ---------------------------------------------------------------------------------
def data_scaling(ds: Dataset) -> dict[str, float]:
    """``{"lo", "hi"}`` mapped to -1 and 1: ``[0, 255]`` for uint8, else the data's own min and max."""
    if ds.dtype == np.uint8:
        return {"lo": 0.0, "hi": 255.0}
    lo, hi = math.inf, -math.inf
    for _, block in ds.iter_blocks(max(1, 2**26 // max(1, ds.item_nbytes))):
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if not hi > lo:
        raise InputError(f"every pixel of the dataset has the value {lo}: nothing to learn", ds.path)
    return {"lo": lo, "hi": hi}


def to_model_range(x: torch.Tensor, scaling: dict[str, float]) -> torch.Tensor:
    """Stored values ``[n, C, *S]`` → float32 in ``[-1, 1]``."""
    lo, hi = scaling["lo"], scaling["hi"]
    return (x.float() - lo) * (2.0 / (hi - lo)) - 1.0


def from_model_range(x: torch.Tensor, scaling: dict[str, float], dtype: str | np.dtype) -> np.ndarray:
    """Float ``[-1, 1]`` ``[n, C, *S]`` → the stored dtype (uint8: ``round(clip((x + 1) · 127.5))``)."""
    dtype = np.dtype(dtype)
    lo, hi = scaling["lo"], scaling["hi"]
    y = (x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * ((hi - lo) / 2.0) + lo
    arr = y.numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    return arr.astype(dtype)


# --- data on the device --------------------------------------------------------------------------------
class DeviceData:
    """The training set held in memory (on the device when it fits) and a seeded batch sampler.

    Batches are drawn uniformly with replacement by a ``torch.Generator`` on the data's device, seeded from
    the run's seed; its state is checkpointed.

    Args:
        ds: the dataset (or split) to train on.
        scaling: ``{"lo", "hi"}`` mapped to ``[-1, 1]``.
        device: where the batches are needed.
        keep_on: where the stored items live (``device`` or the CPU).
        seed: seed of the batch generator.
    """

    def __init__(
        self, ds: Dataset, scaling: dict[str, float], device: torch.device, keep_on: torch.device, seed: int
    ) -> None:
        self.scaling = scaling
        self.device = device
        self.keep_on = keep_on
        blocks = [torch.from_numpy(np.ascontiguousarray(b)) for _, b in ds.iter_blocks(4096)]
        items = torch.cat(blocks)  # [N, C, *S] in the stored dtype
        if items.dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
            items = items.float()
        if keep_on.type == "cpu" and device.type == "cuda":
            items = items.pin_memory()
        self.items = items.to(keep_on)
        self.n = int(self.items.shape[0])
        self.generator = torch.Generator(device=keep_on).manual_seed(int(seed))

    def batch(self, size: int) -> torch.Tensor:
        """``[size, C, *S]`` float32 in ``[-1, 1]`` on the device."""
        idx = torch.randint(0, self.n, (size,), generator=self.generator, device=self.keep_on)
        x = self.items.index_select(0, idx)
        if self.keep_on != self.device:
            x = x.to(self.device, non_blocking=True)
        return to_model_range(x, self.scaling)


# --- checkpoints -----------------------------------------------------------------------------------------
def _rng_state(data: DeviceData | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {"rng/torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": _jsonable(random.getstate()),
    }
    if data is not None:
        tensors["rng/data"] = data.generator.get_state()
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], data: DeviceData | None) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in sorted(cuda, key=lambda k: int(k.rsplit("/", 1)[1]))]
        torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
    random.setstate(_tuplify(meta["python"]))
    if data is not None and "rng/data" in tensors:
        data.generator.set_state(tensors["rng/data"])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return [_jsonable(o) for o in obj]
    return obj


def _tuplify(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuplify(o) for o in obj)
    return obj


def _plain(value: Any) -> Any:
    """Optimizer param-group / state values as JSON (tensors become lists: only small scalars here)."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if isinstance(value, dict):
        return {k: _unplain(v) for k, v in value.items()}
    return value


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}.safetensors"


def save_checkpoint(
    model_dir: Path,
    step: int,
    model: GenerativeModel,
    data: DeviceData | None,
    *,
    elapsed: float,
    keep: int = KEEP_CHECKPOINTS,
) -> Path:
    """Write ``checkpoints/step_XXXXXX.safetensors`` atomically, point ``latest`` at it, prune old ones."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.modules().items():
        for key, value in module.state_dict().items():
            tensors[f"module/{name}/{key}"] = value
    optim_meta: dict[str, Any] = {}
    for name, opt in model.optimizers().items():
        sd = opt.state_dict()
        nontensor: dict[str, Any] = {}
        for pid, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{pid}/{key}"] = value
                else:
                    nontensor.setdefault(str(pid), {})[key] = _plain(value)
        optim_meta[name] = {"param_groups": _plain(sd["param_groups"]), "state": nontensor}
    rng_tensors, rng_meta = _rng_state(data)
    tensors.update(rng_tensors)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {
        "step": step,
        "elapsed_s": elapsed,
        "extra_state": model.extra_state(),
        "optimizers": optim_meta,
        "rng": rng_meta,
        "memscan_version": __version__,
    }
    folder = model_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    save_file(tensors, str(tmp), metadata={"memscan": json.dumps(meta)})
    os.replace(tmp, path)
    _write_atomic(model_dir / LATEST_FILE, path.name + "\n")
    old = sorted(folder.glob("step_*.safetensors"))[:-keep] if keep > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(model_dir: Path) -> Path | None:
    """The checkpoint ``latest`` points at (None when there is none yet)."""
    pointer = model_dir / LATEST_FILE
    if not pointer.is_file():
        return None
    path = model_dir / CHECKPOINT_DIR / pointer.read_text().strip()
    if not path.is_file():
        raise InputError(f"'latest' points at {path.name}, which does not exist", model_dir)
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["memscan"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # damaged or foreign file
        raise InputError(f"cannot read the checkpoint: {exc}", path) from None
    return tensors, meta


def load_modules(model: GenerativeModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load every module's weights from checkpoint tensors (strict)."""
    for name, module in model.modules().items():
        prefix = f"module/{name}/"
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise InputError(f"checkpoint does not fit the model's {name!r} network: {first}", path) from None


def load_checkpoint(path: Path, model: GenerativeModel, data: DeviceData | None) -> tuple[int, float]:
    """Restore model, optimizers, extra state and RNG states; returns ``(step, elapsed seconds)``."""
    tensors, meta = read_checkpoint(path)
    load_modules(model, tensors, path)
    for name, opt in model.optimizers().items():
        om = meta["optimizers"].get(name)
        if om is None:
            raise InputError(f"checkpoint has no state for optimizer {name!r}", path)
        prefix = f"optim/{name}/"
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, field = key[len(prefix) :].split("/", 1)
                state.setdefault(int(pid), {})[field] = value
        for pid, fields in om["state"].items():
            state.setdefault(int(pid), {}).update(_unplain(fields))
        opt.load_state_dict({"state": state, "param_groups": _unplain(om["param_groups"])})
    model.load_extra_state(meta.get("extra_state", {}))
    _restore_rng(tensors, meta["rng"], data)
    return int(meta["step"]), float(meta.get("elapsed_s", 0.0))


# --- sample grids ----------------------------------------------------------------------------------------
def write_grid(images: torch.Tensor, path: str | Path) -> Path:
    """Save ``[n, C, *S]`` images in ``[-1, 1]`` as one PNG grid (first channel; 3D: middle of last axis)."""
    from PIL import Image

    path = Path(path)
    x = images.detach().float().cpu()[:, 0]
    while x.ndim > 3:
        x = x[..., x.shape[-1] // 2]
    n, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2), dtype=np.uint8)
    tiles = np.clip(np.rint((x.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = tiles[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}.png"
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
    return path


@contextmanager
def _rng_fork(device: torch.device) -> Iterator[None]:
    """Sampling a grid must not change the training's random numbers."""
    devices = [device.index or 0] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


# --- configuration -----------------------------------------------------------------------------------------
def read_config_file(path: Path) -> tuple[dict[str, Any], str | None, str | None]:
    """A JSON config file → ``(overrides, preset or None, family or None)``.

    Accepts a flat dict of config keys (optionally with ``"preset"``) or a model folder's ``config.json``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("config file does not exist", path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the config as JSON: {exc}", path) from None
    if not isinstance(obj, dict):
        raise InputError("config must be a JSON object of option names and values", path)
    if obj.get("format") == MODEL_FORMAT:
        return dict(obj["config"]), obj.get("preset"), obj.get("family")
    obj = dict(obj)
    preset = obj.pop("preset", None)
    family = obj.pop("family", None)
    return obj, preset, family


def _positive(name: str, value: int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < (0 if allow_zero else 1) or isinstance(value, bool):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value}")


def _data_info(ds: Dataset) -> DataInfo:
    return DataInfo(channels=tuple(ds.channels), spatial_shape=tuple(ds.item_shape[1:]), dtype=str(ds.dtype))


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


# --- the loop ---------------------------------------------------------------------------------------------
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
        device: ``auto``, ``cpu`` or ``cuda``.
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
    _positive("--steps", steps)
    _positive("--batch", batch)
    _positive("log_every", log_every)
    _positive("checkpoint_every", checkpoint_every, allow_zero=True)
    _positive("sample_every", sample_every, allow_zero=True)
    _positive("keep_checkpoints", keep_checkpoints)
    dev = resolve_device(device)
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
    info = _data_info(ds)

    overrides: dict[str, Any] = {}
    file_preset = file_family = None
    if isinstance(config, dict):
        overrides = dict(config)
    elif config is not None:
        overrides, file_preset, file_family = read_config_file(Path(config))
        if file_family is not None and file_family != family:
            raise InputError(f"the config is for family {file_family!r}, not {family!r}", config)
    stored: dict[str, Any] | None = None
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise InputError("--resume: no model folder here (config.json missing)", out)
        stored = json.loads((out / CONFIG_FILE).read_text())
        if stored.get("family") != family:
            raise InputError(
                f"--resume: the folder holds a {stored.get('family')!r} model, not {family!r}", out
            )
        if config is not None and overrides and {**stored["config"], **overrides} != stored["config"]:
            raise InputError("--resume: --config differs from the stored config; start a new folder", config)
        if preset is not None and preset != stored.get("preset"):
            raise InputError(f"--resume: the run used preset {stored.get('preset')!r}, not {preset!r}", out)
        if list(stored["data"]["channels"]) != list(info.channels) or list(
            stored["data"]["spatial_shape"]
        ) != list(info.spatial_shape):
            raise InputError("--resume: the dataset's channels or image shape differ from the run's", data)
        preset, overrides = stored["preset"], dict(stored["config"])
        if batch is not None and batch != stored["train"]["batch"]:
            raise InputError(
                f"--resume: the run used --batch {stored['train']['batch']}; a different batch cannot resume "
                "exactly",
                out,
            )
        batch = int(stored["train"]["batch"])
        seed = int(stored["train"]["seed"])
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError("exists and is not empty; pass --resume to continue a run there", out)
        if not out.parent.exists():
            raise InputError("parent folder does not exist", out.parent)
    preset = preset or file_preset or "quick"
    check_preset(family, preset)

    _seed_everything(seed)
    model = build_model(family, overrides, info, preset=preset)
    batch = batch or _default_batch(model)
    total = steps or int(model.config_dict().get("steps", 0)) or None
    if total is None:
        raise InputError("--steps is needed (the config has no default number of steps)")

    speed = speed_settings(dev)
    amp = speed["amp"]
    configure = getattr(model, "configure", None)
    if callable(configure):
        configure(dev, compile=compile, **speed)
    else:
        for m in model.modules().values():
            m.to(dev)

    need = _memory_estimate(model, batch, info)
    free = available_memory(dev)
    if need > 0.9 * free:
        raise InputError(
            f"training needs about {_gib(need)} on {dev.type} with --batch {batch} but only {_gib(free)} is "
            "free; lower --batch or use a smaller preset"
        )
    data_bytes = ds.n_items * ds.item_nbytes
    keep_on = dev
    if data_bytes + need > 0.9 * free:
        keep_on = torch.device("cpu")
        host_free = available_memory(keep_on)
        if data_bytes > 0.8 * host_free:
            raise InputError(
                f"the dataset needs {_gib(data_bytes)} in memory but only {_gib(host_free)} is free; train "
                "on a subset (DATASET/SPLIT) or a smaller --size"
            )
        log.warning(
            "the dataset (%s) stays in host memory; each batch is copied to %s", _gib(data_bytes), dev
        )
    scaling = data_scaling(ds)

    # --- all checks passed: work starts here ---
    out.mkdir(exist_ok=True)
    feed = DeviceData(ds, scaling, dev, keep_on, seed)
    start, elapsed = 0, 0.0
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            start, elapsed = load_checkpoint(ckpt, model, feed)
            log.info("resumed from %s (step %d)", ckpt.name, start)
        _truncate_log(out / LOG_FILE, start)
        if stored is not None and stored["train"].get("steps") != total:
            stored["train"]["steps"] = total
            _write_atomic(out / CONFIG_FILE, json.dumps(stored, indent=2, default=str) + "\n")
    else:
        _write_atomic(
            out / CONFIG_FILE,
            json.dumps(
                {
                    "format": MODEL_FORMAT,
                    "family": family,
                    "preset": preset,
                    "config": model.config_dict(),
                    "data": {
                        **info.to_dict(),
                        "scaling": scaling,
                        "path": str(data.resolve()),
                        "n_items": ds.n_items,
                        "fingerprint": ds.info.get("fingerprint"),
                    },
                    "train": {"batch": batch, "seed": seed, "steps": total, "device": dev.type},
                    "memscan_version": __version__,
                },
                indent=2,
                default=str,
            )
            + "\n",
        )
    if start >= total:
        log.info("%s already has %d steps (asked for %d): nothing to do", out, start, total)
        return out

    autocast_here = (not callable(configure)) and amp is not None
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    n_in_interval, t_interval = 0, time.perf_counter()
    t_start = time.perf_counter() - elapsed
    with progress(total - start, f"train {family}") as advance, open(out / LOG_FILE, "a") as logf:
        for step in range(start + 1, total + 1):
            x = feed.batch(batch)
            if autocast_here:
                with torch.autocast(dev.type, dtype=amp):
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
            if step % log_every == 0 or last:
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
            if (sample_every and step % sample_every == 0) or last:
                with _rng_fork(dev):
                    imgs = model.sample(GRID_ITEMS, torch.Generator().manual_seed(seed))
                write_grid(imgs, out / SAMPLES_DIR / f"step_{step:06d}.png")
            if (checkpoint_every and step % checkpoint_every == 0) or last:
                save_checkpoint(
                    out, step, model, feed, elapsed=time.perf_counter() - t_start, keep=keep_checkpoints
                )
    return out


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (a killed run may have logged beyond its last checkpoint)."""
    if not path.is_file():
        return
    keep = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    _write_atomic(path, "".join(line + "\n" for line in keep))


def read_log(model_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``MODEL/log.jsonl``."""
    path = Path(model_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
