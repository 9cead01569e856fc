"""Which screen precision: resolving ``auto`` for a device and the data, and the CUDA matmul flags."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch

from memscan.core.validate import did_you_mean
from memscan.errors import InputError
from memscan.search import limits

logger = logging.getLogger(__name__)


def _unknown(what: str, value: object, valid: tuple[str, ...]) -> str:
    return f"unknown {what} {value!r}; expected one of {', '.join(valid)}{did_you_mean(value, valid)}"


@lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    """True if the CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16)."""
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        cap = ""
    if "AMX" in cap or "BF16" in cap:
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(
    precision: str, device: str, dtype: np.dtype | None = None, d: int | None = None
) -> str:
    """Resolve ``'auto'`` and validate the screen precision for a device (and the data's dtype).

    Args:
        precision: 'auto' | 'int8' | 'bf16' | 'fp16' | 'tf32' | 'float32' | 'float64'.
        device: 'cpu' | 'cuda'.
        dtype: the items' dtype, when known: 8-bit unsigned data takes the exact integer path.
        d: values per item, when known (the integer path needs d ≤ 2^24).

    Returns:
        'auto' → 'int8' for uint8 items (d ≤ 2^24); else 'bf16' on CUDA; on the CPU 'bf16' if it has
        AMX-BF16 or AVX512-BF16, else 'float32'. Other values are returned unchanged ('tf32' is
        CUDA-only; 'int8' needs uint8 items).
    """
    if device not in ("cpu", "cuda"):
        raise InputError(_unknown("device", device, ("cpu", "cuda")))
    if precision not in limits.PRECISIONS:
        raise InputError(_unknown("precision", precision, limits.PRECISIONS))
    int8_ok = dtype is not None and np.dtype(dtype) == np.uint8 and (d is None or d <= limits.INT8_MAX_D)
    if precision == "auto":
        if int8_ok:
            return "int8"
        if device == "cuda":
            return "bf16"
        return "bf16" if _cpu_has_bf16() else "float32"
    if precision == "int8" and dtype is not None and not int8_ok:
        raise InputError(
            f"precision 'int8' is exact for uint8 items with d <= 2^24 only; these are "
            f"{np.dtype(dtype)} with d={d} (use 'bf16' or 'float64')"
        )
    if precision == "tf32" and device != "cuda":
        raise InputError("precision 'tf32' needs device 'cuda'; on the CPU use 'bf16' or 'float32'")
    return precision


@lru_cache(maxsize=8)
def _cuda_float32_out(dtype: torch.dtype) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` works for ``dtype`` on CUDA."""
    try:
        a = torch.ones(16, 16, dtype=dtype, device="cuda")
        r = torch.mm(a, a, out_dtype=torch.float32)
        return r.dtype == torch.float32
    except Exception:  # noqa: BLE001 - any failure means "not supported"
        return False


@contextlib.contextmanager
def _cuda_matmul_flags(precision: str) -> Iterator[None]:
    """Full float32 reductions for bf16/fp16; TF32 only for 'tf32' (restores the flags after)."""
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction)
    try:
        m.allow_tf32 = precision == "tf32"
        m.allow_bf16_reduced_precision_reduction = False
        m.allow_fp16_reduced_precision_reduction = False
        yield
    finally:
        (m.allow_tf32, m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction) = (
            saved
        )
