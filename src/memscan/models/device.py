"""Where and how the networks run: the torch device, the speed settings per device, free memory, autocast."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from memscan.core.devices import resolve_device


def torch_device(device: str, name: str = "device") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` → a ``torch.device`` (an absent GPU is an InputError)."""
    return torch.device(resolve_device(device, name))


def speed_settings(device: torch.device) -> dict[str, Any]:
    """The options the training and sampling loops give a model's ``configure`` hook on ``device``.

    On CUDA: bf16 autocast and channels-last (tensor cores). On the CPU: neither (float32, the default
    layout). The tests run the CUDA settings on the CPU by replacing this function where it is used.
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


def gib(n: float) -> str:
    """Bytes as ``"1.23 GiB"``."""
    return f"{n / 2**30:.2f} GiB"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure(model: Any, device: torch.device, **options: Any) -> None:
    """Call the model's ``configure(device, **options)`` hook, or just move its networks to ``device``."""
    hook = getattr(model, "configure", None)
    if callable(hook):
        hook(device, **options)
    else:
        for m in model.modules().values():
            m.to(device)
