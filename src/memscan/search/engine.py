"""Exact blockwise top-k Pearson correlation: a low-precision screen plus an exact float64 re-rank.

Why by hand and not faiss: faiss ``IndexFlatIP`` is exact only in float32 (its scores carry float32
rounding, so near-ties can come out in the wrong order), it has no low-precision screen followed by an
exact re-rank with a *proven* margin, and no float64-exact Pearson top-k that streams the training
set from disk block by block. This module does all three:

1. **Normalise** every item once (per block): subtract its mean, divide by ``||x - mean||`` (both in
   float64, :func:`item_stats`). Constant items (norm 0, or not finite) are invalid: never matched;
   a constant query gets ``-1`` / ``NaN``. The correlation is then the dot product of normalised items.
2. **Screen**: ``S = Zq @ Ztᵀ`` with ``torch.mm`` in the screen precision (bf16 on AMX / GPUs), with the
   reduction split into chunks of at most ``chunk`` terms; :func:`screen_epsilon` proves
   ``|S - exact| <= ε`` for *every* pair, whatever the data.
3. **Candidates** (per block, no buffering across blocks): with ``s_k`` the query's k-th largest
   screened value inside the block and ``v_k`` its running exact k-th value (``-inf`` while fewer than
   k are known), every item that can still enter the final top-k satisfies
   ``S_j >= max(v_k - ε, s_k - 2ε)`` (proof in :func:`_thresholds`). If a query has more than
   ``candidate_cap`` candidates in a block it is evaluated exactly against the whole block instead
   (counted in ``n_fallback``).
4. **Re-rank** candidates exactly on the CPU with ONE routine (:func:`exact_correlation`) used for
   every pair on every path, so results do not depend on block size, device, thread count or on which
   path found the pair: ``sum((x_q - μ_q) * (x_t - μ_t)) / (norm_q * norm_t)`` as a float64 elementwise
   product summed along contiguous rows (NumPy pairwise summation, never BLAS, whose rounding can
   depend on the thread count).
5. **Merge** the running top-k with ``np.lexsort``: by value (descending), ties to the LOWER train index.

So ``precision='bf16'`` and ``precision='float64'`` return bitwise identical results; the screen
precision only changes how many candidates are re-ranked.

**Exact integer path** (``precision='int8'``, the default for 8-bit data such as the study's PNG-like
slices): Pearson correlation is invariant to shifts, so with ``x' = x - 128`` (int8, exact) it is
``(d Σx'y' - Σx' Σy') / sqrt((d Σx'² - (Σx')²) (d Σy'² - (Σy')²))``. ``Σx'y'`` comes from the int8
matrix unit (``torch._int_mm``: AMX/VNNI on CPUs, int8 tensor cores on GPUs) with int32 accumulation,
which is *exact* as long as a chunk has fewer than 2^31 / 2^14 = 131,072 terms; chunk sums add up in
int64, and the numerator and variances are exact int64 for d ≤ 2^24. The block's products are then
*ranked* in float32 (one scaled copy per block, no float64 pass over all pairs) with a proven
per-query bound (:meth:`_IntScreen.epsilon`), the same candidate line as step 3 selects the pairs
that can still enter the top-k, and only those are evaluated exactly from their integer products
(:meth:`_IntScreen.exact`). The only rounding in a value is the final float64 product of the
variances, square root and division (a few ulp), performed in the same order for every pair, so
values are bitwise reproducible across block sizes, devices and thread counts. ``epsilon`` is
reported as 0: no value carries screen error. Values agree with the float64 routine to ~1e-15 (not
bitwise: a different, equally exact formula).

The error bound follows the standard rounding-error model and the inner-product bound
``|fl(xᵀy) - xᵀy| <= γ_m Σ|x_i y_i|``, ``γ_m = m u / (1 - m u)``, valid for any summation order
(N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002, §2.2, Lemma 3.1,
§3.1 (3.4)-(3.5)). See :func:`screen_epsilon` for the derivation.

What torch does on the CPU (torch 2.13): ``torch.mm(a, b, out_dtype=torch.float32)`` is *not*
implemented for the CPU backend (``aten::mm.dtype`` raises ``NotImplementedError``), and
``out=float32`` is rejected for bf16 inputs; the bf16 product (oneDNN/AMX) accumulates in float32 and
rounds the *output* to bf16. That final rounding is therefore part of ε on the CPU (the term
``u_out (1 + γ_m) P`` below, ≈ 3.9e-3 for bf16). On CUDA the engine uses ``out_dtype=float32`` when
the build supports it (and disables cuBLAS reduced-precision reductions), which removes that term.

Shapes: queries ``[nq, d]``, train blocks ``[n_b, d]`` (items flattened; any real dtype, raw values).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from memscan.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "SCREEN_CHUNK",
    "SearchResult",
    "exact_correlation",
    "item_stats",
    "resolve_precision",
    "screen_epsilon",
    "search_topk",
]

#: Accepted values of ``precision`` ('tf32' only on CUDA).
PRECISIONS = ("auto", "int8", "bf16", "fp16", "tf32", "float32", "float64")
#: Reduction length of one screened product used by :func:`search_topk` (≤ 65,536). Smaller chunks
#: shrink γ_m and cost nothing in the output-rounding term (the chunks' |partial sums| add up to ≤ ~1).
SCREEN_CHUNK = 16384
#: Reduction length of one int8 product: |Σ x'y'| <= m 2^14 < 2^31 needs m < 131,072 (multiple of 8).
INT8_CHUNK = 131064
#: Largest d for the exact integer path: |d Σx'y' - Σx'Σy'| <= 2 d² 2^14 < 2^63.
INT8_MAX_D = 2**24

_U32 = 2.0**-24
_U64 = 2.0**-53
# unit roundoff of the screen format (tf32: 2^-10, not 2^-11, in case the hardware truncates)
_U_FORMAT = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-10, "float32": _U32, "float64": 0.0}
# absolute error of rounding into the format when the result underflows (half the smallest subnormal;
# tf32 truncation: the whole spacing)
_ETA_FORMAT = {"bf16": 2.0**-134, "fp16": 2.0**-25, "tf32": 2.0**-149, "float32": 2.0**-150, "float64": 0.0}
_TORCH_DTYPE = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "tf32": torch.float32,
    "float32": torch.float32,
    "float64": torch.float64,
}

# memory bounds (elements): one sub-block of scores [nq, nb] and one block of normalised rows [nb, d]
_SCORE_ELEMS = 2**25
_ROW_ELEMS = 2**26
# elements per float64 temporary in the exact re-rank / the row statistics
_EXACT_ELEMS = 2**21
_STATS_ELEMS = 2**18
# rows longer than this (3D volumes) are summed in segments of this many values (1 MiB of float64: two
# such buffers stay in a core's L2 cache) rather than through row-sized float64 copies
_SEGMENT = 2**17
# centred float64 queries are cached for the re-rank up to this size
_QUERY_CACHE_BYTES = 2**30
#: 'auto' screens float data in bf16 unless the first block's bf16 screen leaves more than this fraction of
#: its pairs for the exact float64 re-rank; then it screens in float32. An exact pair costs ~100-1,000
#: screened pairs (it re-reads both rows in float64), so beyond ~0.5% the wider screen is the cheaper
#: side. Seen on this project's 2-core CPU: 2D 2,000 x 20,000 x 128² re-ranks 0.18% in bf16 (bf16 5.4 s,
#: float32 8.3 s: stays bf16); 3D 50 x 200 volumes of 128x128x96 re-rank 13% (bf16 9.7 s, float32 4.7 s:
#: switches).
AUTO_SWITCH_FRACTION = 0.005


@dataclass
class SearchResult:
    """Exact top-k result.

    Attributes:
        values: float64 ``[nq, k]`` correlations, descending per row; ``NaN`` where no match.
        indices: int64 ``[nq, k]`` train indices; ``-1`` where no match (constant query, or fewer valid
            train items than ``k``). Equal values are ordered by the lower train index.
        n_candidates: total number of (query, train) pairs evaluated exactly.
        n_fallback: number of (query, sub-block) pairs evaluated exactly against the whole sub-block
            because the query had more than ``candidate_cap`` candidates there.
        precision: the resolved screen precision (the last one used, when 'auto' switched).
        epsilon: the proven bound on the screen's error that was used (of the last precision).
        switched_from: the precision 'auto' started with before it switched to ``precision`` (see
            :data:`AUTO_SWITCH_FRACTION`), else None.
    """

    values: np.ndarray
    indices: np.ndarray
    n_candidates: int
    n_fallback: int
    precision: str
    epsilon: float
    switched_from: str | None = None


# --------------------------------------------------------------------------------------------------
# error bound


def _gamma(n: int | float, u: float) -> float:
    """Higham's γ_n = n u / (1 - n u) (requires n u < 1)."""
    nu = n * u
    if nu >= 1.0:
        raise InputError(f"reduction too long for a rounding-error bound: n*u = {nu:.3g} >= 1")
    return nu / (1.0 - nu)


def screen_epsilon(
    precision: str, d: int, chunk: int = 65536, *, rounded_output: bool | None = None
) -> float:
    """Proven bound ε on ``|screened correlation - exact correlation|`` for any two valid items.

    Notation: x, y are the float64-normalised items (``x = fl((raw - μ) / norm)``), ``ν = 1 + γ_{d+2}``
    (u = 2^-53) bounds ``||x||`` (the float64 norm is not exactly 1). The screen does:

    * input rounding float64 → float32 → format (torch converts float64 through float32, so bf16/fp16
      inputs are rounded twice): ``x̃_i = x_i (1 + δ_i) + η_i``, ``|δ_i| <= u = (1+u_f)(1+2^-24) - 1``,
      ``|η_i| <= η`` (underflow; half the smallest subnormal, 2^-25 for fp16). Then
      ``|Σ x̃ỹ - Σ xy| <= (2u + u²) ν² + 2(1+u) η √d ν + d η²`` (Cauchy–Schwarz: Σ|x_i y_i| <= ν²,
      Σ|x_i| <= √d ν), and ``P := Σ|x̃_i ỹ_i| <= (1+u)² ν² + 2(1+u) η √d ν + d η²``.
    * each chunk of m = min(d, chunk) terms accumulated in float32 (u_acc = 2^-24; float64 screen:
      2^-53), any order: error <= γ_m Σ_chunk|x̃ỹ|, summed over the chunks <= γ_m P, plus product
      underflow d η_acc.
    * the chunk result rounded to the output format (bf16 on the CPU): <= u_out |S_c| <= u_out
      (1 + γ_m) Σ_chunk|x̃ỹ|, summed over the chunks <= u_out (1 + γ_m) P, plus C η_out.
    * C = ceil(d / chunk) chunk results added in the accumulator format (float32; float64 screen:
      float64): <= γ_{C-1} (1 + u_out)(1 + γ_m) P.
    * the re-rank value r = fl(Σ c_q c_t) / fl(n_q n_t) differs from x·y by at most
      ``ε_ref = 2 γ_{d+4} ν²`` (u = 2^-53; both use the same centred float64 values c).

    ε is the sum of these terms. For bf16 with a float32 accumulator:
    ``ε ≈ 2u + u² + γ_m (1+u)² + u (1 + γ_m)(1+u)²`` (the last term only when the output is rounded to
    bf16): d = 16,384 → 8.81e-3 (float32 output) / 1.275e-2 (bf16 output, the CPU).

    Args:
        precision: 'bf16' | 'fp16' | 'tf32' | 'float32' | 'float64' (resolved, not 'auto').
        d: number of values per item.
        chunk: maximal reduction length of one product (1 ≤ chunk ≤ 65,536 is sensible).
        rounded_output: whether each chunk product is rounded to the screen format on output. ``None``:
            True for 'bf16'/'fp16' (conservative: what the CPU does), False otherwise.

    Returns:
        ε as a float (rounded up a little for safety).
    """
    if precision not in _U_FORMAT:
        raise InputError(_unknown("precision", precision, tuple(_U_FORMAT)))
    if d < 1 or chunk < 1:
        raise InputError(f"d and chunk must be >= 1, got d={d}, chunk={chunk}")
    if rounded_output is None:
        rounded_output = precision in ("bf16", "fp16")
    u_f = _U_FORMAT[precision]
    eta = _ETA_FORMAT[precision]
    if precision in ("bf16", "fp16", "tf32"):
        u_in = (1.0 + u_f) * (1.0 + _U32) - 1.0
    else:
        u_in = u_f
    u_acc = _U64 if precision == "float64" else _U32
    eta_acc = 2.0**-1075 if precision == "float64" else 2.0**-150
    u_out = u_f if rounded_output and precision in ("bf16", "fp16") else 0.0
    eta_out = eta if u_out else 0.0
    m = min(d, chunk)
    n_chunks = math.ceil(d / chunk)
    nu = 1.0 + _gamma(d + 2, _U64)
    sd = math.sqrt(d)
    g_m = _gamma(m, u_acc)
    e_input = (2 * u_in + u_in * u_in) * nu * nu + 2 * (1 + u_in) * eta * sd * nu + d * eta * eta
    p_abs = (1 + u_in) ** 2 * nu * nu + 2 * (1 + u_in) * eta * sd * nu + d * eta * eta
    e_acc = g_m * p_abs + d * eta_acc
    e_out = u_out * (1 + g_m) * p_abs + n_chunks * eta_out
    e_add = _gamma(n_chunks - 1, u_acc) * (1 + u_out) * (1 + g_m) * p_abs if n_chunks > 1 else 0.0
    e_ref = 2 * _gamma(d + 4, _U64) * nu * nu
    eps = e_input + e_acc + e_out + e_add + e_ref
    return float(eps * (1 + 2.0**-40) + 2.0**-1000)


# --------------------------------------------------------------------------------------------------
# precision and device


def _unknown(what: str, value: object, valid: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {what} {value!r}; expected one of {', '.join(valid)}{hint}"


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
    if precision not in PRECISIONS:
        raise InputError(_unknown("precision", precision, PRECISIONS))
    int8_ok = dtype is not None and np.dtype(dtype) == np.uint8 and (d is None or d <= INT8_MAX_D)
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


# --------------------------------------------------------------------------------------------------
# statistics, normalisation and the exact routine (all deterministic, per row)

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        workers = max(1, min(os.cpu_count() or 1, 16))
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memscan")
    return _pool


def _check_real(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise InputError(f"{what} must be a 2D array [n, d], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise InputError(f"{what} must have a real numeric dtype, got {a.dtype}")
    return a


def _rows_f64(block: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 as a fresh C-contiguous float64 array (exact for every integer/float input ≤ 53 bits)."""
    return np.array(block[r0:r1], dtype=np.float64, order="C", copy=True)


def _segments(d: int) -> list[tuple[int, int]]:
    return [(a, min(d, a + _SEGMENT)) for a in range(0, d, _SEGMENT)]


def _stats_long_rows(
    block: np.ndarray, r0: int, r1: int, z_out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stats_rows` for rows longer than ``_SEGMENT`` (3D volumes: tens of MB per row), in
    cache-resident float64 segments: two or three reads of the raw row instead of ~9 passes over a
    row-sized float64 copy. Each sum is the segments' pairwise sums added in order: it depends on the row
    and ``d`` only, like the short-row path (the same definition as :func:`_long_dot`)."""
    d = block.shape[1]
    segs = _segments(d)
    buf = np.empty(min(d, _SEGMENT))
    mean = np.empty(r1 - r0)
    norm = np.empty(r1 - r0)
    for i, r in enumerate(range(r0, r1)):
        row = block[r]
        total = 0.0
        for a, b in segs:
            seg = buf[: b - a]
            seg[...] = row[a:b]
            total += float(seg.sum())
        m = total / d
        acc = 0.0
        for a, b in segs:
            seg = np.subtract(
                row[a:b], m, out=buf[: b - a], dtype=np.float64
            )  # exact cast, then one rounding
            acc += float(np.multiply(seg, seg, out=seg).sum())
        mean[i], norm[i] = m, math.sqrt(acc)
        # a constant row's float64 mean can be off by a few ulp (sums of float32 values are exact up to
        # 2^29 terms; of float64 ones, pairwise sums err by ~log2(d) ulp), leaving a spurious tiny norm:
        # only a norm that small (the values within ~64 ulp of the mean, on average) is worth the pass that
        # tells
        if norm[i] <= 128.0 * _U64 * abs(m) * math.sqrt(d) and np.all(row == row[0]):
            mean[i], norm[i] = float(row[0]), 0.0
        if z_out is not None:
            if not (norm[i] > 0 and math.isfinite(norm[i]) and math.isfinite(mean[i])):
                z_out[r] = 0.0
                continue
            _normalise_long_row(row, mean[i], norm[i], z_out[r], buf)
    return mean, norm


def _normalise_long_row(row: np.ndarray, mean: float, norm: float, out: np.ndarray, buf: np.ndarray) -> None:
    """``out = (row - mean) / norm`` segment by segment through the float64 buffer ``buf`` (the same values
    as the short rows' whole-row float64 path: one exact cast, one rounding each for − and ÷)."""
    for a, b in _segments(len(row)):
        seg = np.subtract(row[a:b], mean, out=buf[: b - a], dtype=np.float64)
        np.divide(seg, norm, out=out[a:b], casting="same_kind")


def _stats_rows(
    block: np.ndarray, r0: int, r1: int, z_out: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if block.shape[1] > _SEGMENT:
        return _stats_long_rows(block, r0, r1, z_out)
    f = _rows_f64(block, r0, r1)
    d = f.shape[1]
    mean = f.sum(axis=1) / d
    const = f.max(axis=1) == f.min(axis=1)
    first = f[:, 0].copy()
    f -= mean[:, None]
    norm = np.sqrt((f * f).sum(axis=1))
    norm[const] = 0.0
    mean[const] = first[const]
    if z_out is not None:
        valid = (norm > 0) & np.isfinite(norm) & np.isfinite(mean)
        f /= np.where(valid, norm, np.inf)[:, None]
        f[~valid] = 0.0
        z_out[r0:r1] = f
    return mean, norm


def _map_rows(block: np.ndarray, z_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    n, d = block.shape
    step = max(1, _STATS_ELEMS // max(d, 1))
    ranges = [(r, min(n, r + step)) for r in range(0, n, step)]
    if len(ranges) <= 1:
        parts = [_stats_rows(block, r0, r1, z_out) for r0, r1 in ranges]
    else:
        parts = list(_executor().map(lambda rr: _stats_rows(block, rr[0], rr[1], z_out), ranges))
    if not parts:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def item_stats(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item mean and centred norm in float64.

    Computed row by row (independent of the block the row sits in): ``mean = sum(x) / d`` and
    ``norm = sqrt(sum((x - mean)²))`` with NumPy pairwise summation over the contiguous row (rows longer
    than ``_SEGMENT``: over each segment of that length, the segments' sums added in order). Rows whose
    values are all equal get ``norm = 0`` exactly (the float64 mean of equal values can be off by an
    ulp, which would otherwise give a spurious tiny norm).

    Args:
        block: ``[n, d]`` any real dtype.

    Returns:
        ``(mean, norm)``, both float64 ``[n]``.
    """
    block = _check_real(block, "block")
    return _map_rows(block, None)


def _valid(mean: np.ndarray, norm: np.ndarray) -> np.ndarray:
    return (norm > 0) & np.isfinite(norm) & np.isfinite(mean)


def _long_dot(
    qraw: np.ndarray, q_mean: np.ndarray, q: int, traw: np.ndarray, t_mean: np.ndarray, t: int
) -> float:
    """``sum((x_q - μ_q) * (x_t - μ_t))`` of one pair of rows longer than ``_SEGMENT``, in cache-resident
    float64 segments (each segment's pairwise sum, added in order): one read of each raw row instead of
    row-sized float64 copies (a BraTS volume is 286 MB in float64)."""
    d = qraw.shape[1]
    a_buf = np.empty(min(d, _SEGMENT))
    b_buf = np.empty_like(a_buf)
    acc = 0.0
    for a, b in _segments(d):
        x = np.subtract(qraw[q, a:b], q_mean[q], out=a_buf[: b - a], dtype=np.float64)
        y = np.subtract(traw[t, a:b], t_mean[t], out=b_buf[: b - a], dtype=np.float64)
        acc += float(np.multiply(x, y, out=x).sum())
    return acc


def _exact_batch(
    qraw: np.ndarray,
    q_mean: np.ndarray,
    q_norm: np.ndarray,
    qi: np.ndarray,
    traw: np.ndarray,
    t_mean: np.ndarray,
    t_norm: np.ndarray,
    ti: np.ndarray,
) -> np.ndarray:
    a = np.array(qraw[qi], dtype=np.float64, order="C", copy=True)
    a -= q_mean[qi, None]
    b = np.array(traw[ti], dtype=np.float64, order="C", copy=True)
    b -= t_mean[ti, None]
    a *= b
    return a.sum(axis=1) / (q_norm[qi] * t_norm[ti])


def exact_correlation(
    qraw: np.ndarray,
    q_mean: np.ndarray,
    q_norm: np.ndarray,
    qi: np.ndarray,
    traw: np.ndarray,
    t_mean: np.ndarray,
    t_norm: np.ndarray,
    ti: np.ndarray,
) -> np.ndarray:
    """THE exact routine: correlation of the pairs ``(qi[p], ti[p])`` in float64.

    ``sum((x_q - μ_q) * (x_t - μ_t)) / (norm_q * norm_t)`` as an elementwise float64 product summed
    along the contiguous row (pairwise summation; no BLAS; rows longer than ``_SEGMENT``: segment by
    segment, :func:`_long_dot`), in batches of pairs run on a thread pool.
    The value of a pair does not depend on the batch, the thread or the caller.

    Args:
        qraw: ``[nq, d]`` raw queries; q_mean, q_norm: float64 ``[nq]`` from :func:`item_stats`.
        qi: int ``[p]`` query rows.
        traw: ``[nt, d]`` raw train rows; t_mean, t_norm: float64 ``[nt]``.
        ti: int ``[p]`` train rows.

    Returns:
        float64 ``[p]``.
    """
    p = len(qi)
    d = qraw.shape[1]
    if p == 0:
        return np.zeros(0, dtype=np.float64)
    if d > _SEGMENT:

        def one(j: int) -> float:
            num = _long_dot(qraw, q_mean, int(qi[j]), traw, t_mean, int(ti[j]))
            return num / (q_norm[qi[j]] * t_norm[ti[j]])

        return np.fromiter(_executor().map(one, range(p)), dtype=np.float64, count=p)
    step = max(1, _EXACT_ELEMS // max(d, 1))
    ranges = [(s, min(p, s + step)) for s in range(0, p, step)]

    def run(rr: tuple[int, int]) -> np.ndarray:
        s, e = rr
        return _exact_batch(qraw, q_mean, q_norm, qi[s:e], traw, t_mean, t_norm, ti[s:e])

    if len(ranges) == 1:
        return run(ranges[0])
    return np.concatenate(list(_executor().map(run, ranges)))


def _exact_grouped(
    q_centred: np.ndarray,
    q_norm: np.ndarray,
    qi: np.ndarray,
    traw: np.ndarray,
    t_mean: np.ndarray,
    t_norm: np.ndarray,
    ti: np.ndarray,
) -> np.ndarray:
    """:func:`exact_correlation` with the queries already centred, grouped by train row.

    Bitwise identical to :func:`exact_correlation` (the same centred float64 values, the same
    elementwise products — multiplication commutes exactly — and the same contiguous row sums), but
    each train row is centred once and the products are formed in place: ~2.5× less memory traffic.
    """
    p = len(qi)
    out = np.empty(p, dtype=np.float64)
    if p == 0:
        return out
    order = np.argsort(ti, kind="stable")
    ts = ti[order]
    uniq, starts = np.unique(ts, return_index=True)
    ends = np.append(starts[1:], p)
    d = q_centred.shape[1]
    rows_per_task = max(1, _STATS_ELEMS // max(d, 1))

    def run(u0: int) -> None:
        u1 = min(len(uniq), u0 + rows_per_task)
        tc = _rows_f64(traw[uniq[u0:u1]], 0, u1 - u0)
        tc -= t_mean[uniq[u0:u1], None]
        for j in range(u0, u1):
            pos = order[starts[j] : ends[j]]
            qs = qi[pos]
            a = q_centred[qs]
            a *= tc[j - u0]
            out[pos] = a.sum(axis=1) / (q_norm[qs] * t_norm[uniq[j]])

    list(_executor().map(run, range(0, len(uniq), rows_per_task)))
    return out


# --------------------------------------------------------------------------------------------------
# candidates and merge


def _thresholds(
    v_k: np.ndarray,
    s_k: np.ndarray,
    eps: float | np.ndarray,
    q_valid: np.ndarray,
    floor: float | np.ndarray = -2.0,
) -> np.ndarray:
    """Per-query candidate line ``max(v_k - ε, s_k - 2ε)`` (float64 ``[nq]``).

    Proof that no item of the final top-k is missed. Let r_j be the exact value (re-rank routine) and
    S_j the screened value of item j, ``|S_j - r_j| <= ε``. Suppose j ends in the final top-k.
    (a) The final k-th value V_k is at least the running one v_k (the running top-k only improves),
    and r_j >= V_k, so ``S_j >= r_j - ε >= v_k - ε``. (b) The k items of the block with the largest
    screened values have ``r >= s_k - ε``. If ``S_j < s_k - 2ε``, j is not among them and
    ``r_j <= S_j + ε < s_k - ε``, so k items of the block are strictly better than j and j cannot be
    in the final top-k. Hence ``S_j >= max(v_k - ε, s_k - 2ε)``; ties (``=``) are kept, and the lower
    index rule is applied on exact values in the merge. Valid correlations are ≥ -1 - ε, so clamping
    the line at ``floor`` = -2 loses nothing (and excludes the ``-inf`` of invalid items). ``eps`` may
    be one bound per query (the integer path's ranking, whose units are correlation · √V_q; its floor is
    then ``-2 √V_q - 2ε``).
    """
    with np.errstate(invalid="ignore"):
        thr = np.maximum(v_k - eps, s_k - 2.0 * eps)
    thr = np.maximum(thr, floor)
    thr[~q_valid] = np.inf
    return thr


def _round_down_f32(t: np.ndarray) -> np.ndarray:
    """float32 thresholds t32 ≤ t (so ``S >= t32`` keeps every S with ``S >= t``)."""
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def _merge(
    best_v: np.ndarray, best_i: np.ndarray, qi: np.ndarray, ti: np.ndarray, vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge new exact pairs into the running top-k (values desc, ties → lower train index)."""
    nq, k = best_v.shape
    if len(qi) == 0:
        return best_v, best_i
    rows = np.unique(qi)
    sub_v = best_v[rows]
    sub_i = best_i[rows]
    local = np.searchsorted(rows, qi)
    have = sub_i >= 0
    q_all = np.concatenate([np.repeat(np.arange(len(rows)), k)[have.ravel()], local])
    v_all = np.concatenate([sub_v[have], vals])
    i_all = np.concatenate([sub_i[have], ti])
    order = np.lexsort((i_all, -v_all, q_all))
    q_s, v_s, i_s = q_all[order], v_all[order], i_all[order]
    starts = np.searchsorted(q_s, np.arange(len(rows)))
    rank = np.arange(len(q_s)) - starts[q_s]
    keep = rank < k
    nv = np.full((len(rows), k), -np.inf)
    ni = np.full((len(rows), k), -1, dtype=np.int64)
    nv[q_s[keep], rank[keep]] = v_s[keep]
    ni[q_s[keep], rank[keep]] = i_s[keep]
    best_v = best_v.copy()
    best_i = best_i.copy()
    best_v[rows] = nv
    best_i[rows] = ni
    return best_v, best_i


# --------------------------------------------------------------------------------------------------
# the screen


@dataclass
class _Prepared:
    start: int
    raw: np.ndarray  # [nb, d] raw rows
    mean: np.ndarray
    norm: np.ndarray
    valid: np.ndarray
    z: torch.Tensor | None  # normalised rows on the device (screen dtype), or pending copy
    raw_dev: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None
    int_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # int8 path: Σx' and d²·variance
    chunks: list[torch.Tensor] | None = None  # int8 path on the CPU: x - 128, one tensor per reduction chunk


@dataclass
class _Screened:
    prep: _Prepared
    scores: torch.Tensor  # [nq, nb] float32/float64 on the device, -inf for invalid items
    s_k: torch.Tensor | None  # [nq] k-th largest screened value in the block (-inf if fewer than k valid)
    acc: torch.Tensor | None = None  # int8 path: the exact integer products Σx'y' [nq, nb]


class _Screen:
    """Holds the normalised queries on the device and screens train sub-blocks against them."""

    exact_scores = False
    groups: _Groups | None = None

    def __init__(
        self,
        queries: np.ndarray | torch.Tensor,
        q_mean: np.ndarray,
        q_norm: np.ndarray,
        q_valid: np.ndarray,
        precision: str,
        device: str,
        chunk: int,
        k: int,
        keep_float32: bool = False,
    ) -> None:
        """``keep_float32`` (CPU): keep the float32 normalised queries as ``zq32`` (for a float32 screen
        that may take over from this one, without normalising them again)."""
        self.precision = precision
        self.device = torch.device(device)
        self.cuda = device == "cuda"
        self.dtype = _TORCH_DTYPE[precision]
        self.chunk = chunk
        self.k = k
        nq, d = queries.shape
        self.d = d
        self.bounds = [(a, min(d, a + chunk)) for a in range(0, d, chunk)]
        self.score_dtype = torch.float64 if precision == "float64" else torch.float32
        self.float32_out = False
        if self.cuda and precision in ("bf16", "fp16"):
            self.float32_out = _cuda_float32_out(self.dtype)
        self.rounded_output = precision in ("bf16", "fp16") and not self.float32_out
        self.copy_stream = torch.cuda.Stream() if self.cuda else None
        self.zq32: torch.Tensor | None = None
        if isinstance(queries, torch.Tensor):  # float32 normalised queries kept by an earlier screen (CPU)
            zq = queries.to(self.dtype)
        else:
            zq = self._normalise_host(queries, q_mean, q_norm, q_valid, keep_float32)
        self.zq = [zq[:, a:b].contiguous() for a, b in self.bounds]

    # normalised rows on the device, in the screen dtype
    def _normalise_host(
        self, raw: np.ndarray, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray, keep_float32: bool
    ) -> torch.Tensor:
        if self.cuda:
            x = _to_device_raw(raw, self.device, None)
            return self._normalise_device(x, mean, norm, valid)
        zdt = np.float64 if self.precision == "float64" else np.float32
        z = np.empty(raw.shape, dtype=zdt)
        _fill_normalised(raw, mean, norm, valid, z)
        if keep_float32 and zdt == np.float32:
            self.zq32 = torch.from_numpy(z)
        return torch.from_numpy(z).to(self.dtype)

    def _normalise_device(
        self, x: torch.Tensor, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray
    ) -> torch.Tensor:
        dev = self.device
        mu = torch.from_numpy(np.where(valid, mean, 0.0)).to(dev, non_blocking=False)
        nr = torch.from_numpy(np.where(valid, norm, np.inf)).to(dev, non_blocking=False)
        z = (x.to(torch.float64) - mu[:, None]) / nr[:, None]
        keep = torch.from_numpy(valid).to(dev)[:, None]
        z = torch.where(keep, z, torch.zeros((), dtype=z.dtype, device=dev))
        if self.precision != "float64":
            z = z.to(torch.float32)
        return z.to(self.dtype)

    def prepare(self, start: int, raw: np.ndarray) -> _Prepared:
        """Statistics on the host (float64, deterministic); rows normalised for the screen.

        On CUDA the raw rows travel (pinned, on a side stream) and are normalised on the device, so the
        copy of block i+1 overlaps the product of block i.
        """
        if self.cuda:
            mean, norm = _map_rows(raw, None)
            valid = _valid(mean, norm)
            assert self.copy_stream is not None
            with torch.cuda.stream(self.copy_stream):
                x = _to_device_raw(raw, self.device, self.copy_stream)
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
            return _Prepared(start, raw, mean, norm, valid, None, raw_dev=x, copied=ev)
        zdt = np.float64 if self.precision == "float64" else np.float32
        z = np.empty(raw.shape, dtype=zdt)
        mean, norm = _map_rows(raw, z)
        valid = _valid(mean, norm)
        # kept in float32 (float64) here and converted to the screen dtype by screen(): a float32 screen that
        # takes over from a bf16 one ('auto') can then screen this block without preparing it again
        return _Prepared(start, raw, mean, norm, valid, torch.from_numpy(z))

    def screen(self, prep: _Prepared) -> _Screened:
        if self.cuda:
            assert prep.copied is not None and prep.raw_dev is not None
            torch.cuda.current_stream().wait_event(prep.copied)
            prep.raw_dev.record_stream(torch.cuda.current_stream())
            zt = self._normalise_device(prep.raw_dev, prep.mean, prep.norm, prep.valid)
            prep.raw_dev = None
            ctx: contextlib.AbstractContextManager[None] = _cuda_matmul_flags(self.precision)
        else:
            assert prep.z is not None
            zt = prep.z.to(self.dtype)
            prep.z = None
            ctx = contextlib.nullcontext()
        scores: torch.Tensor | None = None
        with ctx:
            for (a, b), zq in zip(self.bounds, self.zq, strict=True):
                ztc = zt[:, a:b]
                if self.float32_out:
                    part = torch.mm(zq, ztc.t(), out_dtype=torch.float32)
                else:
                    part = torch.mm(zq, ztc.t())
                part = part.to(self.score_dtype)
                # chunk results added in float32 (float64 screen: float64); ε includes γ_{C-1}
                scores = part if scores is None else scores.add_(part)
        assert scores is not None
        return _Screened(prep, scores, _mask_and_kth(scores, prep, self.k, self.groups))


def _mask_and_kth(scores: torch.Tensor, prep: _Prepared, k: int, groups: _Groups | None) -> torch.Tensor:
    """Set invalid items (and excluded same-group pairs) to -inf in place; return each row's k-th value.

    Args:
        scores: ``[nq, nb]`` screened (or exact) values of one block.
        prep: the block (validity, start index).
        k: neighbours per query.
        groups: optional exclusion groups: a pair (q, t) with equal group ids is never matched.

    Returns:
        ``[nq]`` k-th largest value per row (``-inf`` if the row has fewer than k eligible items).
    """
    _mask_excluded(scores, prep, groups)
    return _kth(scores, k)


def _mask_excluded(scores: torch.Tensor, prep: _Prepared, groups: _Groups | None) -> None:
    """Set invalid items and excluded same-group pairs to -inf in place."""
    if not prep.valid.all():
        scores.masked_fill_(torch.from_numpy(~prep.valid).to(scores.device)[None, :], -math.inf)
    if groups is not None:
        scores.masked_fill_(groups.same(prep.start, scores.shape[1], scores.device), -math.inf)


def _kth(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k-th largest value (``-inf`` if the row has fewer than k items)."""
    if scores.shape[1] >= k:
        return torch.topk(scores, k, dim=1, largest=True, sorted=True).values[:, -1]
    return torch.full((scores.shape[0],), -math.inf, dtype=scores.dtype, device=scores.device)


@dataclass
class _Groups:
    """Exclusion groups: query q never matches train item t when ``query[q] == train[t]``.

    Used for the train-vs-train baselines (group = the item itself, or its subject).
    """

    query: np.ndarray  # int64 [nq]
    train: np.ndarray  # int64 [n_train]

    def same(self, start: int, n: int, device: torch.device) -> torch.Tensor:
        q = torch.from_numpy(self.query).to(device)
        t = torch.from_numpy(self.train[start : start + n]).to(device)
        return q[:, None] == t[None, :]


def int8_block(raw: torch.Tensor, dp: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 ``[n, d]`` (any device) → (int8 ``[rows, dp]`` of x - 128 zero-padded, Σx' ``[rows]``,
    d²·variance ``[rows]``), all int64 sums exact. Used on the GPU, where plain reductions are fast."""
    n, d = raw.shape
    z = torch.zeros((rows, dp), dtype=torch.int8, device=raw.device)
    z[:n, :d] = torch.bitwise_xor(raw, 128).view(torch.int8)
    wide = z.to(torch.int32)
    s1 = wide.sum(dim=1, dtype=torch.int64)
    s2 = (wide * wide).sum(dim=1, dtype=torch.int64)
    return z, s1, d * s2 - s1 * s1


def _pad_rows_for_int_mm(a: torch.Tensor) -> torch.Tensor:
    """``a`` with zero rows appended to a multiple of 8, at least 24 (what ``_int_mm`` needs on CUDA)."""
    n = a.shape[0]
    target = _pad_to(n, 8, 24)
    if target == n:
        return a
    return torch.cat([a, a.new_zeros((target - n, a.shape[1]))])


def _pad_to(n: int, multiple: int, minimum: int = 0) -> int:
    return max(minimum, -(-n // multiple) * multiple)


class _IntScreen:
    """The exact integer path for uint8 items: int8 products with exact integer sums (see module doc).

    ``screen`` returns the block's exact int32/int64 products ``Σx'y'`` and a float32 *ranking* of them,
    ``G = Σx'y' · d/√V_t - Σx'_q · Σx'_t/√V_t`` (= correlation · √V_q, V = d²·variance), with a proven
    per-query bound ``|G - exact| <= ε_q`` (:meth:`epsilon`). The candidates it selects are then
    evaluated exactly in float64 from the integer products (:meth:`exact`), so the float64 passes over
    the whole ``[nq, nb]`` block of the earlier design (convert, numerator, outer product of the
    variances, square root, division: ~3× the memory traffic of float32) shrink to a few values per
    query. Shapes are padded with zeros (which add nothing to the sums) to what ``torch._int_mm`` needs
    on CUDA (rows > 16, inner and column sizes multiples of 8).
    """

    exact_scores = True  # no float re-rank from the raw rows: candidates are exact from the products
    precision = "int8"
    rounded_output = False
    groups: _Groups | None = None

    def __init__(self, queries: np.ndarray, device: str, k: int) -> None:
        if queries.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got {queries.dtype}")
        self.device = torch.device(device)
        self.cuda = device == "cuda"
        self.k = k
        self.nq, self.d = queries.shape
        if self.d > INT8_MAX_D:
            raise InputError(f"precision 'int8' supports d <= 2^24, got d={self.d}")
        self.dp = _pad_to(self.d, 8)
        self.bounds = [(a, min(self.dp, a + INT8_CHUNK)) for a in range(0, self.dp, INT8_CHUNK)]
        self.copy_stream = torch.cuda.Stream() if self.cuda else None
        self._buffers: list[np.ndarray] = []
        self.exact_in_f64 = self.d <= 2**19
        rows = _pad_to(self.nq, 8, 24)
        if self.cuda:
            self.zq_chunks, s1, var, sq = self._int8_on_device(queries, rows)
        else:
            self.zq_chunks, s1, var, sq = self._to_int8(queries, pad_rows=rows)
        self.q_valid = var[: self.nq] > 0
        self.q_s1 = torch.from_numpy(s1[: self.nq]).to(self.device)
        self.q_var = torch.from_numpy(sq[: self.nq]).to(self.device)  # d²·variance, float64 (exact)
        self.q_s1_f32 = torch.from_numpy(s1[: self.nq].astype(np.float32)).to(self.device)
        root = np.sqrt(np.where(self.q_valid, sq[: self.nq], 1.0))
        self.q_root = root  # √V_q: converts correlations to the units of G and back
        self.q_alpha = np.sqrt(1.0 + s1[: self.nq].astype(np.float64) ** 2 / root**2)

    def _to_int8(self, raw: np.ndarray, pad_rows: int | None = None, reuse: bool = False):
        """uint8 ``[n, d]`` → (int8 x - 128 as one contiguous ``[n_pad, chunk width]`` tensor per reduction
        chunk of :attr:`bounds`, Σx', d²·variance (int64), it in float64).

        Chunk-major, so that a long item (3D: d up to 2^24) needs no column-slice copies before its products.
        ``reuse``: write into buffers kept across blocks (on the CPU a block's int8 copy is dead once it is
        screened); fresh 100s-of-MB arrays cost more in page faults than the conversion itself.
        """
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        rows = n if pad_rows is None else max(n, pad_rows)
        if reuse and (not self._buffers or self._buffers[0].shape[0] < rows):
            self._buffers = [np.empty((rows, b - a), dtype=np.int8) for a, b in self.bounds]
        chunks = []
        for i, (a, b) in enumerate(self.bounds):
            if reuse:
                z = self._buffers[i][:rows]
                z[n:] = 0
            else:
                z = np.zeros((rows, b - a), dtype=np.int8)
            w = max(0, min(b, self.d) - a)  # the last chunk may end in zero padding
            z[:n, w:] = 0
            np.bitwise_xor(raw[:, a : a + w], np.uint8(128), out=z[:n, :w].view(np.uint8))  # x - 128, exactly
            chunks.append(torch.from_numpy(z))
        s1, s2 = self._sums_int_mm(chunks, rows)
        var = self.d * s2 - s1 * s1  # = d² · population variance, exact
        return chunks, s1, var, var.astype(np.float64)

    def _int8_on_device(self, raw: np.ndarray, rows: int):
        """:meth:`_to_int8` on :attr:`device` (the queries on CUDA): the shift and the exact sums by
        :func:`int8_block`, bit for bit the host's, 4,096 rows at a time (its int32 temporaries stay small).
        The host's own int8 products may have no fast kernel on the GPU machine's CPU."""
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        z = torch.zeros((rows, self.dp), dtype=torch.int8, device=self.device)
        s1 = torch.zeros(rows, dtype=torch.int64, device=self.device)
        var = torch.zeros(rows, dtype=torch.int64, device=self.device)
        for r in range(0, n, 4096):
            part = torch.from_numpy(np.ascontiguousarray(raw[r : r + 4096])).to(self.device)
            m = part.shape[0]
            z[r : r + m], s1[r : r + m], var[r : r + m] = int8_block(part, self.dp, m)
        chunks = [z] if len(self.bounds) == 1 else [z[:, a:b].contiguous() for a, b in self.bounds]
        s1_h, var_h = s1.cpu().numpy(), var.cpu().numpy()
        return chunks, s1_h, var_h, var_h.astype(np.float64)

    def _sums_int_mm(self, chunks: list[torch.Tensor], rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Σx' and Σx'² exactly on the int8 matrix unit (int32 per chunk < 2^31, chunk sums in int64):
        Σx' = Z·1 in one product per chunk; Σx'² = diag(Z Zᵀ) over groups of 32 rows (32× the rows' length
        in products: ~2% of the search's own product for 2,000 queries, in few calls; 32 rows per call was
        the fastest of 8/16/32/64 for chunks of 16,384 and of 131,064 values, and 5-8x faster than NumPy's
        or torch's own int16 square-and-sum)."""
        s1 = torch.zeros(rows, dtype=torch.int64)
        s2 = torch.zeros(rows, dtype=torch.int64)
        ones = torch.ones((INT8_CHUNK, 8), dtype=torch.int8)
        diag = torch.empty(rows, dtype=torch.int32)
        for zc in chunks:
            s1 += torch._int_mm(_pad_rows_for_int_mm(zc), ones[: zc.shape[1]])[:rows, 0]
            for r in range(0, rows, 32):
                g = zc[r : r + 32]
                if g.shape[0] < 8:  # _int_mm's smallest row count; zero rows add nothing
                    g = torch.cat([g, g.new_zeros((8 - g.shape[0], g.shape[1]))])
                diag[r : r + 32] = torch._int_mm(g, g.t()).diagonal()[: min(32, rows - r)]
            s2 += diag
        return s1.numpy(), s2.numpy()

    def prepare(self, start: int, raw: np.ndarray) -> _Prepared:
        if self.cuda:
            return self._prepare_on_device(start, raw)
        n = raw.shape[0]
        chunks, s1, var, sq = self._to_int8(raw, pad_rows=_pad_to(n, 8), reuse=True)
        valid = var[:n] > 0
        prep = _Prepared(start, raw, s1[:n].astype(np.float64), np.sqrt(sq[:n]), valid, None)
        prep.chunks = chunks
        prep.int_stats = (torch.from_numpy(s1[:n]), torch.from_numpy(sq[:n]))
        return prep

    def _prepare_on_device(self, start: int, raw: np.ndarray) -> _Prepared:
        """CUDA: only the raw uint8 bytes cross the bus (pinned, on the side stream); the int8 shift and the
        exact integer statistics are computed on the GPU, overlapping the previous block's product."""
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        assert self.copy_stream is not None
        with torch.cuda.stream(self.copy_stream):
            host = torch.from_numpy(np.ascontiguousarray(raw)).pin_memory()
            z, s1, var = int8_block(host.to(self.device, non_blocking=True), self.dp, _pad_to(n, 8))
            ev = torch.cuda.Event()
            ev.record(self.copy_stream)
        ev.synchronize()  # the block's statistics are needed on the host (vectors of n values)
        s1_h, var_h = s1[:n].cpu().numpy(), var[:n].cpu().numpy()
        varf = var_h.astype(np.float64)
        prep = _Prepared(start, raw, s1_h.astype(np.float64), np.sqrt(varf), var_h > 0, None)
        prep.raw_dev, prep.copied = z, ev
        prep.int_stats = (s1[:n], var[:n].to(torch.float64))
        return prep

    def screen(self, prep: _Prepared) -> _Screened:
        assert prep.int_stats is not None
        if prep.chunks is not None:  # CPU: chunk-major already
            chunks, prep.chunks = prep.chunks, None
        else:  # CUDA: one [rows, dp] block; mat2 column-major for cuBLASLt
            assert prep.raw_dev is not None and prep.copied is not None
            torch.cuda.current_stream().wait_event(prep.copied)
            prep.raw_dev.record_stream(torch.cuda.current_stream())
            zt = prep.raw_dev
            prep.raw_dev = None
            chunks = [zt] if len(self.bounds) == 1 else [zt[:, a:b].contiguous() for a, b in self.bounds]
        acc: torch.Tensor | None = None
        for ztc, zq in zip(chunks, self.zq_chunks, strict=True):
            part = torch._int_mm(zq, ztc.t())
            acc = part if len(self.bounds) == 1 else (part.long() if acc is None else acc.add_(part))
        del chunks
        assert acc is not None
        n = len(prep.valid)
        acc = acc[: self.nq, :n]
        # the float32 ranking G (module doc): exact ints scaled per column, minus a rank-one term
        root = np.where(prep.valid, prep.norm, 1.0)  # √V_t (prep.norm holds √V_t on this path)
        p = torch.from_numpy((self.d / root).astype(np.float32)).to(self.device)
        q = torch.from_numpy((prep.mean / root).astype(np.float32)).to(self.device)
        g = acc.to(torch.float32).mul_(p[None, :])  # (one fused int32→float32 multiply is 4× slower)
        g.addr_(self.q_s1_f32, q, alpha=-1.0)
        _mask_excluded(g, prep, self.groups)
        return _Screened(prep, g, None, acc)  # the block's k-th values only if needed (finish)

    def epsilon(self, prep: _Prepared) -> np.ndarray:
        """Per-query bound on ``|G - exact·√V_q|`` for this block, in the units of G.

        Each factor of G is rounded to float32 (u = 2^-24) at most once before the product and once after
        (p, q: float64 → float32; the integer sums: exact below 2^24, else one rounding; the products, the
        subtraction: one each), so ``|G - h| <= 8u (|Σx'y'| d/√V_t + |Σx'_q| |Σx'_t|/√V_t)`` with
        ``h = (d Σx'y' - Σx'_q Σx'_t)/√V_t`` exactly (the rounding-error model, Higham 2002, §2.2, with
        ``γ_5 + u(1 + γ_5) < 8u``). Cauchy–Schwarz, ``|Σx'y'| <= √(Σx'²_q Σx'²_t)``, and
        ``d Σx'² = V + (Σx')²`` turn the first term into ``√V_q α_q α_t`` and the second into
        ``√V_q β_q β_t`` with ``β = |Σx'|/√V`` and ``α = √(1 + β²) >= β``, so
        ``|G - h| <= 16u √V_q α_q max_t α_t`` over the block's valid items. For ordinary images α is 1–5;
        a near-constant item with a large mean raises α and with it only the number of candidates.
        ``+ 2^-40 √V_q`` covers the float64 roundings of the exact values and of ``v_k √V_q`` (< 2^-50).
        """
        if not prep.valid.any():
            return np.full(self.nq, np.inf)
        beta_t = np.abs(prep.mean[prep.valid]) / prep.norm[prep.valid]
        alpha_t = float(np.sqrt(1.0 + beta_t**2).max())
        return self.q_root * (16.0 * _U32 * self.q_alpha * alpha_t + 2.0**-40)

    def candidates(self, sc: _Screened, v_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The block's pairs that can still enter the top-k, with their exact values: (query, block-local
        train index, value). ``v_k``: each query's running exact k-th value (``-inf`` while unknown).

        The line ``max(v_k - ε, s_k - 2ε)`` (:func:`_thresholds`, here in the ranking's units) is proven
        with either term alone; ``s_k`` only prunes rows without a running k-th value yet, so the top-k
        pass runs for those rows only.
        """
        eps = self.epsilon(sc.prep)
        root = self.q_root
        s_k = np.full(self.nq, -np.inf)
        fresh = np.flatnonzero(self.q_valid & ~np.isfinite(v_k))
        if len(fresh):
            rows = torch.from_numpy(fresh).to(self.device)
            s_k[fresh] = _kth(sc.scores[rows], self.k).double().cpu().numpy()
        thr = _thresholds(v_k * root, s_k, eps, self.q_valid, floor=-2.0 * root - 2.0 * eps)
        mask = sc.scores >= torch.from_numpy(_round_down_f32(thr)).to(self.device)[:, None]
        if mask.is_cuda:
            pairs = torch.nonzero(mask)
        else:  # NumPy's flat nonzero is ~5× faster than torch's (and NumPy's 2-D) nonzero on the CPU
            flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
            pairs = torch.stack([flat // mask.shape[1], flat % mask.shape[1]], dim=1)
        del mask
        vals = self.exact(sc, pairs[:, 0], pairs[:, 1])
        pairs_h = pairs.cpu().numpy()
        return pairs_h[:, 0].astype(np.intp), pairs_h[:, 1].astype(np.int64), vals

    def exact(self, sc: _Screened, qi: torch.Tensor, ti: torch.Tensor) -> np.ndarray:
        """Exact float64 correlations of the pairs ``(qi, ti)`` of a screened block.

        From its integer products: ``(d Σx'y' - Σx'_q Σx'_t) / √(V_q V_t)``, the numerator exact
        (integers < 2^53 for d ≤ 2^19, int64 beyond), then one rounding each in the product of the
        variances, the root and the division, in the same order for every pair: bitwise reproducible
        across block sizes, devices and thread counts."""
        assert sc.acc is not None and sc.prep.int_stats is not None
        t_s1, t_var = sc.prep.int_stats
        a = sc.acc[qi, ti]
        qs, ts = self.q_s1[qi], t_s1.to(self.device)[ti]
        if self.exact_in_f64:
            num = a.double().mul_(self.d).sub_(qs.double() * ts.double())
        else:
            num = a.long().mul_(self.d).sub_(qs * ts).double()
        den = (self.q_var[qi] * t_var.to(self.device)[ti]).sqrt_()
        return num.div_(den).cpu().numpy()


def _fill_normalised(
    raw: np.ndarray, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray, z: np.ndarray
) -> None:
    n, d = raw.shape
    step = max(1, _STATS_ELEMS // max(d, 1))

    def run(r0: int) -> None:
        r1 = min(n, r0 + step)
        f = _rows_f64(raw, r0, r1)
        f -= np.where(valid[r0:r1], mean[r0:r1], 0.0)[:, None]
        f /= np.where(valid[r0:r1], norm[r0:r1], np.inf)[:, None]
        f[~valid[r0:r1]] = 0.0
        z[r0:r1] = f

    def run_long(r: int) -> None:  # the same values, a cache-resident segment at a time
        if not valid[r]:
            z[r] = 0.0
            return
        _normalise_long_row(raw[r], mean[r], norm[r], z[r], np.empty(min(d, _SEGMENT)))

    if d > _SEGMENT:
        list(_executor().map(run_long, range(n)))
    else:
        list(_executor().map(run, range(0, n, step)))


def _to_device_raw(raw: np.ndarray, device: torch.device, stream: torch.cuda.Stream | None) -> torch.Tensor:
    """Raw rows to the device through pinned memory (dtypes torch lacks go as float64, exactly)."""
    if raw.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64):
        raw = raw.astype(np.float64)
    host = torch.from_numpy(np.ascontiguousarray(raw))
    if device.type == "cuda":
        host = host.pin_memory()
        return host.to(device, non_blocking=True)
    return host


# --------------------------------------------------------------------------------------------------
# the search


def search_topk(
    queries: np.ndarray,
    train_blocks: Callable[[], Iterable[tuple[int, np.ndarray]]],
    k: int,
    *,
    precision: str = "auto",
    device: str = "cpu",
    candidate_cap: int = 2048,
    progress: Callable[[int], None] | None = None,
    chunk: int = SCREEN_CHUNK,
    query_groups: np.ndarray | None = None,
    train_groups: np.ndarray | None = None,
) -> SearchResult:
    """Exact top-k Pearson correlation of every query against a streamed training set.

    Args:
        queries: ``[nq, d]`` raw items (uint8/uint16/float32/float64 ...), not normalised.
        train_blocks: called once; yields ``(start_index, block [n_b, d])`` in increasing, contiguous
            start order covering ``0 .. n_train - 1``.
        k: number of neighbours per query (≥ 1).
        precision: screen precision, 'auto' | 'bf16' | 'fp16' | 'tf32' (CUDA) | 'float32' | 'float64'.
            Results do not depend on it (only the number of re-ranked candidates does).
        device: 'cpu' | 'cuda' (screen on the GPU; the exact re-rank always runs on the CPU).
        candidate_cap: above this many candidates in a sub-block, a query is evaluated exactly against
            the whole sub-block.
        progress: called with the number of train items finished after each block.
        chunk: maximal reduction length of one screened product (1 … 65,536).
        query_groups: optional int ``[nq]`` group ids; with ``train_groups`` (int ``[n_train]``), a query
            is never matched with a train item of its own group (train-vs-train baselines: the item
            itself, or its whole subject).

    Returns:
        :class:`SearchResult` with float64 values and int64 indices ``[nq, k]``.
    """
    queries = _check_real(queries, "queries")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if candidate_cap < 1:
        raise InputError(f"candidate_cap must be >= 1, got {candidate_cap}")
    if not 1 <= chunk <= 65536:
        raise InputError(f"chunk must be in 1..65536, got {chunk}")
    adaptive = precision == "auto"
    precision = resolve_precision(precision, device, queries.dtype, queries.shape[1])
    adaptive = adaptive and precision == "bf16"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch.cuda.is_available() is False")
    nq, d = queries.shape
    if d == 0:
        raise InputError("items have no values (d = 0)")

    screen: _Screen | _IntScreen
    if precision == "int8":
        screen = _IntScreen(queries, device, k)
        q_valid = screen.q_valid
        q_mean = q_norm = np.zeros(0)
        eps = 0.0
    else:
        q_mean, q_norm = item_stats(queries)
        q_valid = _valid(q_mean, q_norm)
        screen = _Screen(queries, q_mean, q_norm, q_valid, precision, device, chunk, k, keep_float32=adaptive)
        eps = screen_epsilon(precision, d, chunk, rounded_output=screen.rounded_output)
    if (query_groups is None) != (train_groups is None):
        raise InputError("query_groups and train_groups go together")
    groups = None
    if query_groups is not None and train_groups is not None:
        if len(query_groups) != nq:
            raise InputError(f"query_groups has {len(query_groups)} entries for {nq} queries")
        groups = _Groups(np.asarray(query_groups, dtype=np.int64), np.asarray(train_groups, dtype=np.int64))
        screen.groups = groups
    started_with: str | None = None
    logger.debug(
        "search_topk: nq=%d d=%d k=%d precision=%s device=%s eps=%.3e", nq, d, k, precision, device, eps
    )

    # centred float64 queries, kept when they fit in _QUERY_CACHE_BYTES (faster exact re-rank)
    q_centred: np.ndarray | None = None  # (long rows are re-ranked segment by segment: no cache)
    if not screen.exact_scores and nq * d * 8 <= _QUERY_CACHE_BYTES and d <= _SEGMENT:
        q_centred = np.empty((nq, d), dtype=np.float64)
        for r in range(0, nq, 1024):
            q_centred[r : r + 1024] = _rows_f64(queries, r, min(nq, r + 1024))
            q_centred[r : r + 1024] -= q_mean[r : r + 1024, None]
    best_v = np.full((nq, k), -np.inf)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    n_cand = 0
    n_fallback = 0
    sub_rows = max(1, min(_SCORE_ELEMS // max(nq, 1), _ROW_ELEMS // d))

    def sub_blocks() -> Iterator[tuple[int, np.ndarray, int]]:
        expected = 0
        for start, block in train_blocks():
            block = _check_real(block, "train block")
            if block.shape[1] != d:
                raise InputError(f"train block at {start} has d={block.shape[1]}, queries have d={d}")
            if int(start) != expected:
                raise InputError(
                    f"train blocks must be contiguous and increasing: expected start {expected}, got {start}"
                )
            n_b = block.shape[0]
            for r in range(0, n_b, sub_rows):
                yield int(start) + r, block[r : r + sub_rows], (n_b if r + sub_rows >= n_b else 0)
            expected += n_b

    def candidate_mask(sc: _Screened, v_k: np.ndarray, eps: float) -> torch.Tensor:
        """The screened pairs of a float screen that can still enter the top-k (:func:`_thresholds`)."""
        assert sc.s_k is not None
        thr = _thresholds(v_k, sc.s_k.double().cpu().numpy(), eps, q_valid)
        if sc.scores.dtype == torch.float32:
            thr_t = torch.from_numpy(_round_down_f32(thr)).to(sc.scores.device)
        else:
            thr_t = torch.from_numpy(thr).to(sc.scores.device)
        return sc.scores >= thr_t[:, None]

    def finish(sc: _Screened, eps: float) -> None:
        nonlocal best_v, best_i, n_cand, n_fallback
        prep = sc.prep
        v_k = best_v[:, -1]
        if isinstance(screen, _IntScreen):  # a float32 ranking of exact integer products: exact candidates
            qi, ti, vals = screen.candidates(sc, v_k)
            n_cand += len(qi)
            best_v, best_i = _merge(best_v, best_i, qi, ti + prep.start, vals)
            return
        mask = candidate_mask(sc, v_k, eps)
        counts = mask.sum(dim=1)
        over = counts > candidate_cap
        n_over = int(over.sum())
        if n_over:
            mask[over] = False
        pairs = torch.nonzero(mask).cpu().numpy()
        qi = pairs[:, 0].astype(np.intp)
        ti = pairs[:, 1].astype(np.intp)
        if n_over:
            fq = torch.nonzero(over).flatten().cpu().numpy().astype(np.intp)
            vt = np.flatnonzero(prep.valid).astype(np.intp)
            fqi, fti = np.repeat(fq, len(vt)), np.tile(vt, len(fq))
            if screen.groups is not None:  # never the excluded same-group pairs
                keep = screen.groups.query[fqi] != screen.groups.train[fti + prep.start]
                fqi, fti = fqi[keep], fti[keep]
            qi = np.concatenate([qi, fqi])
            ti = np.concatenate([ti, fti])
            n_fallback += n_over
        del mask, sc.scores
        if q_centred is not None:
            vals = _exact_grouped(q_centred, q_norm, qi, prep.raw, prep.mean, prep.norm, ti)
        else:
            vals = exact_correlation(queries, q_mean, q_norm, qi, prep.raw, prep.mean, prep.norm, ti)
        n_cand += len(qi)
        best_v, best_i = _merge(best_v, best_i, qi, ti.astype(np.int64) + prep.start, vals)

    def probe_bf16(prepared: _Prepared) -> _Screened | None:
        """'auto' on float data: screen the first block in bf16 and count the pairs it leaves for the exact
        re-rank beyond each query's top-k. Above :data:`AUTO_SWITCH_FRACTION` of the block (an exact pair
        costs ~100-1,000 screened ones), the scan screens in float32 instead and this block is screened
        again; the results cannot change (every screen is followed by the same exact re-rank). Returns the
        block's bf16 screen when it is kept."""
        nonlocal screen, eps, precision, started_with
        assert isinstance(screen, _Screen)
        z, raw_dev = prepared.z, prepared.raw_dev  # screen() lets go of them; a float32 screen needs them
        sc = screen.screen(prepared)
        n_pairs = int(sc.scores.shape[0] * sc.scores.shape[1])
        # beyond the k per query that any screen leaves in a first block
        n_extra = int(candidate_mask(sc, best_v[:, -1], eps).sum()) - k * int(q_valid.sum())
        zq32, screen.zq32 = screen.zq32, None
        if n_extra <= AUTO_SWITCH_FRACTION * n_pairs:
            return sc
        logger.info(
            "the bf16 screen leaves %d pairs beyond the top-%d of the first block's %d for the exact re-rank "
            "(> %.1f%%): screening in float32",
            n_extra,
            k,
            n_pairs,
            100 * AUTO_SWITCH_FRACTION,
        )
        started_with, precision = precision, "float32"
        screen.zq = []  # free the bf16 queries before the float32 copy is made
        del sc
        screen = _Screen(
            queries if zq32 is None else zq32, q_mean, q_norm, q_valid, precision, device, chunk, k
        )
        screen.groups = groups
        eps = screen_epsilon(precision, d, chunk, rounded_output=screen.rounded_output)
        prepared.z, prepared.raw_dev = z, raw_dev  # the block, ready for the float32 screen
        return None

    pending: _Screened | None = None
    pending_eps = eps
    done_after: int = 0
    it = sub_blocks()
    cur = next(it, None)
    prepared = screen.prepare(cur[0], cur[1]) if cur is not None else None
    first: _Screened | None = None
    if adaptive and prepared is not None:
        first = probe_bf16(prepared)
    while prepared is not None and cur is not None:
        # Taking the next sub-block first starts the stream's read-ahead of the block after it now, so
        # that the read overlaps this product (long, on all cores) rather than the next block's
        # statistics (short products, which stall when a reader thread holds a core). Preparing the next
        # block in a background thread during the product was measured too: no faster on 2 cores
        # (2.51 vs 2.38 s, five alternating runs), so it stays sequential.
        nxt = next(it, None)
        screened = first if first is not None else screen.screen(prepared)
        screened_eps, first = eps, None
        # the next block's statistics (and on CUDA its copy) overlap this block's product on the GPU
        prepared = screen.prepare(nxt[0], nxt[1]) if nxt is not None else None
        if pending is not None:
            finish(pending, pending_eps)
            if progress is not None and done_after:
                progress(done_after)
        pending, pending_eps, done_after = screened, screened_eps, cur[2]
        cur = nxt
    if pending is not None:
        finish(pending, pending_eps)
        if progress is not None and done_after:
            progress(done_after)

    values = np.where(best_i >= 0, best_v, np.nan)
    return SearchResult(
        values=values,
        indices=best_i,
        n_candidates=n_cand,
        n_fallback=n_fallback,
        precision=precision,
        epsilon=eps,
        switched_from=started_with,
    )
