"""Parameter validation whose messages name the parameter as the caller spelled it.

The library speaks in keyword names (``top_k must be >= 1``); the CLI passes its flag names
(``--top-k``) through ``name=`` so that its messages speak in flags. One "did you mean" for every choice.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from memscan.errors import InputError


def did_you_mean(word: Any, options: Iterable[str], *, cutoff: float = 0.5) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``word`` (case-insensitive), or ``''``."""
    lowered = {str(o).lower(): str(o) for o in options}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=cutoff)
    return f" (did you mean {lowered[match[0]]!r}?)" if match else ""


def check_choice(value: Any, choices: Iterable[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming ``name`` and the nearest choice."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(
            f"{name} must be one of {', '.join(choices)}; got {value!r}{did_you_mean(value, choices)}"
        )
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]`` (bools refused), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be <= {maximum}; got {value}")
    return value


def check_float(
    value: Any, name: str, *, low: float | None = None, high: float | None = None, open_low: bool = False
) -> float:
    """Return ``value`` as a finite float within the bounds, else raise naming ``name``."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number; got {value!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise InputError(f"{name} must be {'>' if open_low else '>='} {low}; got {value}")
    if high is not None and value > high:
        raise InputError(f"{name} must be <= {high}; got {value}")
    return float(value)
