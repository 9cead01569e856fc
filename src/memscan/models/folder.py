"""The model folder: what ``memscan train`` writes and ``memscan sample`` reads, and :func:`load_model`.

Like diffusers' ``from_pretrained(folder)``: the config beside the weights is enough to rebuild the model::

    MODEL/
      config.json                         format, family, preset, resolved config, data info (shape,
                                          channels, dtype, intensity scaling), training options, version
      checkpoints/step_000123.safetensors weights, optimizer and RNG states (memscan.models.checkpoint)
      latest                              name of the newest complete checkpoint (written atomically)
      log.jsonl                           one line per log interval: step, losses, images/s, elapsed, aug p
      samples/step_000123.png             sample grids (first channel; 3D: the middle slice of the last axis)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from memscan.core.atomic import write_json, write_text
from memscan.errors import InputError
from memscan.models.base import DataInfo, GenerativeModel
from memscan.models.checkpoint import latest_checkpoint, load_modules, read_checkpoint
from memscan.models.device import configure, speed_settings, torch_device
from memscan.models.registry import build_model

MODEL_FORMAT = "memscan-model"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"


def grid_path(model_dir: Path, step: int) -> Path:
    """Where the sample grid of ``step`` goes."""
    return model_dir / SAMPLES_DIR / f"step_{step:06d}.png"


def write_config(model_dir: Path, stored: dict[str, Any]) -> None:
    """Write ``config.json`` (atomically)."""
    write_json(model_dir / CONFIG_FILE, stored, indent=2)


def read_stored_config(model_dir: Path) -> dict[str, Any]:
    """The folder's ``config.json``.

    Raises:
        InputError: not a memscan model folder.
    """
    try:
        stored = json.loads((model_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise InputError("is not a memscan model folder (no readable config.json)", model_dir) from None
    if stored.get("format") != MODEL_FORMAT:
        raise InputError("is not a memscan model folder (config.json has another format)", model_dir)
    return stored


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


def read_log(model_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``MODEL/log.jsonl``."""
    path = Path(model_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (a killed run may have logged beyond its last checkpoint)."""
    if not path.is_file():
        return
    keep = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text(path, "".join(line + "\n" for line in keep))


def load_model(
    model_dir: str | Path, device: str = "auto"
) -> tuple[GenerativeModel, dict[str, Any], int, torch.device]:
    """Build a model folder's model on ``device`` with the weights of its latest checkpoint.

    Args:
        model_dir: a folder written by ``memscan train``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``(model, config.json contents, checkpoint step, device)``.

    Raises:
        InputError: not a model folder, no checkpoint yet, or a checkpoint that does not fit the config.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("does not exist or is not a folder", model_dir)
    stored = read_stored_config(model_dir)
    ckpt = latest_checkpoint(model_dir)
    if ckpt is None:
        raise InputError("has no checkpoint yet (train it first)", model_dir)
    dev = torch_device(device)
    d = stored["data"]
    info = DataInfo(tuple(d["channels"]), tuple(d["spatial_shape"]), d.get("dtype", "uint8"))
    model = build_model(stored["family"], stored["config"], info, preset=stored["preset"])
    configure(model, dev, **speed_settings(dev))
    tensors, meta = read_checkpoint(ckpt)
    load_modules(model, {k: v for k, v in tensors.items() if k.startswith("module/")}, ckpt)
    model.load_extra_state(meta.get("extra_state", {}))
    return model, stored, int(meta["step"]), dev
