"""The checkpoint format: one safetensors file per saved step, never pickle.

``checkpoints/step_000123.safetensors`` holds the model and EMA weights (``module/NAME/KEY``), the
optimizers' tensor state (``optim/NAME/PARAM/FIELD``) and the RNG states as tensors (``rng/...``);
everything else (optimizer param groups and scalars, the step, elapsed time, the model's extra state, NumPy's
and Python's RNG scalars) is JSON in the safetensors metadata under ``"memscan"``. A checkpoint is written
atomically and then named in ``latest`` (also atomic), so ``latest`` always names a complete file.

Exact resume: the torch (CPU and CUDA), NumPy and Python RNG states and the batch sampler's generator state
are all saved, so a run resumed from step s computes exactly the same step s + 1 as an uninterrupted run
(bitwise on the CPU; on CUDA up to non-deterministic kernels).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memscan.core.atomic import atomic_path, write_text
from memscan.core.version import __version__
from memscan.errors import InputError
from memscan.models.base import GenerativeModel
from memscan.models.data import DeviceData

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
KEEP_CHECKPOINTS = 3


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"memscan": json.dumps(meta)})
    write_text(model_dir / LATEST_FILE, path.name + "\n")
    old = sorted(folder.glob("step_*.safetensors"))[:-keep] if keep > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
    return path


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
