"""Proven bounds on the error of a low-precision screen (the rounding-error model)."""

from __future__ import annotations

import logging
import math

from memscan.errors import InputError
from memscan.search import limits
from memscan.search.precision import _unknown

logger = logging.getLogger(__name__)


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
    if precision not in limits._U_FORMAT:
        raise InputError(_unknown("precision", precision, tuple(limits._U_FORMAT)))
    if d < 1 or chunk < 1:
        raise InputError(f"d and chunk must be >= 1, got d={d}, chunk={chunk}")
    if rounded_output is None:
        rounded_output = precision in ("bf16", "fp16")
    u_f = limits._U_FORMAT[precision]
    eta = limits._ETA_FORMAT[precision]
    if precision in ("bf16", "fp16", "tf32"):
        u_in = (1.0 + u_f) * (1.0 + limits._U32) - 1.0
    else:
        u_in = u_f
    u_acc = limits._U64 if precision == "float64" else limits._U32
    eta_acc = 2.0**-1075 if precision == "float64" else 2.0**-150
    u_out = u_f if rounded_output and precision in ("bf16", "fp16") else 0.0
    eta_out = eta if u_out else 0.0
    m = min(d, chunk)
    n_chunks = math.ceil(d / chunk)
    nu = 1.0 + _gamma(d + 2, limits._U64)
    sd = math.sqrt(d)
    g_m = _gamma(m, u_acc)
    e_input = (2 * u_in + u_in * u_in) * nu * nu + 2 * (1 + u_in) * eta * sd * nu + d * eta * eta
    p_abs = (1 + u_in) ** 2 * nu * nu + 2 * (1 + u_in) * eta * sd * nu + d * eta * eta
    e_acc = g_m * p_abs + d * eta_acc
    e_out = u_out * (1 + g_m) * p_abs + n_chunks * eta_out
    e_add = _gamma(n_chunks - 1, u_acc) * (1 + u_out) * (1 + g_m) * p_abs if n_chunks > 1 else 0.0
    e_ref = 2 * _gamma(d + 4, limits._U64) * nu * nu
    eps = e_input + e_acc + e_out + e_add + e_ref
    return float(eps * (1 + 2.0**-40) + 2.0**-1000)
