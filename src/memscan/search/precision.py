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
    precision: str,
    device: str,
    dtype: np.dtype | None = None,
    d: int | None = None,
    train_dtype: np.dtype | None = None,
) -> str:
    """Resolve ``'auto'`` and validate the screen precision for a device (and the data's dtypes).

    Args:
        precision: 'auto' | 'int8' | 'int16' | 'bf16' | 'fp16' | 'tf32' | 'float32' | 'float64'.
        device: 'cpu' | 'cuda'.
        dtype: the query items' dtype, when known: integer items take the exact integer paths.
        d: values per item, when known (the 8-bit path needs d ≤ 2^24, the 16-bit path d ≤ 2^21).
        train_dtype: the train items' dtype, when known (else taken to be ``dtype``).

    Returns:
        'auto' → 'int8' when both sides are uint8 (d ≤ 2^24); 'int16' when both sides are 8- or 16-bit
        integers (uint8, int8, int16, uint16; d ≤ 2^21); else 'bf16' on CUDA; on the CPU 'bf16' if it has
        AMX-BF16 or AVX512-BF16, else 'float32'. Other values are returned unchanged ('tf32' is
        CUDA-only; 'int8' needs uint8 items, 'int16' 8- or 16-bit integer items).
    """
    if device not in ("cpu", "cuda"):
        raise InputError(_unknown("device", device, ("cpu", "cuda")))
    if precision not in limits.PRECISIONS:
        raise InputError(_unknown("precision", precision, limits.PRECISIONS))
    sides = [np.dtype(t) for t in (dtype, train_dtype if train_dtype is not None else dtype) if t is not None]
    known = len(sides) == 2
    int8_ok = known and all(t == np.uint8 for t in sides) and (d is None or d <= limits.INT8_MAX_D)
    int16_ok = (
        known and all(t in limits.INT16_DTYPES for t in sides) and (d is None or d <= limits.INT16_MAX_D)
    )
    if precision == "auto":
        if int8_ok:
            return "int8"
        if int16_ok:
            return "int16"
        if device == "cuda":
            return "bf16"
        return "bf16" if _cpu_has_bf16() else "float32"
    if precision == "int8" and known and not int8_ok:
        raise InputError(
            f"precision 'int8' is exact for uint8 items with d <= 2^24 only; these are "
            f"{' and '.join(sorted({str(t) for t in sides}))} with d={d} (use 'int16', 'bf16' or 'float64')"
        )
    if precision == "int16" and known and not int16_ok:
        raise InputError(
            f"precision 'int16' is exact for 8- or 16-bit integer items with d <= 2^21 only; these are "
            f"{' and '.join(sorted({str(t) for t in sides}))} with d={d} (use 'bf16' or 'float64')"
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
