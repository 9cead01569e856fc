"""One device resolver for the scan, training and sampling: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re

from memscan.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
_CUDA_N = re.compile(r"^cuda:(\d+)$")


def check_device(device: str, name: str = "device") -> str:
    """Validate a device name without touching torch (so option objects can be built anywhere)."""
    if device in DEVICES or (isinstance(device, str) and _CUDA_N.match(device)):
        return device
    from memscan.core.validate import did_you_mean

    hint = did_you_mean(device, DEVICES)
    raise InputError(f"{name} must be auto, cpu, cuda or cuda:N; got {device!r}{hint}")


def resolve_device(device: str, name: str = "device") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device that is absent is an error.

    Returns the device as a string torch accepts (``cpu``, ``cuda``, ``cuda:1``).
    """
    check_device(device, name)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"{name} {device} was asked for, but torch sees no CUDA GPU on this machine")
        m = _CUDA_N.match(device)
        if m and int(m.group(1)) >= torch.cuda.device_count():
            raise InputError(
                f"{name} {device} was asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
    return device
