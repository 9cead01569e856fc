"""One grammar for the transform labels of matches: compose, parse and apply.

A label says how the synthetic item was turned to match its training item::

    label       := "none" | part ("+" part)*
    part        := orientation | shift
    orientation := "flip" | "flipud" | "rot90" | "rot180" | "rot270" | "transpose" | "antitranspose"
    shift       := "shift(" ("+"|"-") INT "," ("+"|"-") INT ")"

with at most one orientation, written before at most one shift (``flip+shift(+2,-1)``). Meaning: the
synthetic item with the orientation applied, compared at shift ``(dy, dx)``, matches the training item,
``orient(synthetic)[y, x] ~ train[y - dy, x - dx]`` (the shift re-rank's convention,
``memscan.search.variants``). ``none`` is the identity.

The eight orientations are the symmetries of a square (the dihedral group D4) acting on the last two axes
``(H, W)`` of 2D items ``[..., H, W]``: ``flip`` mirrors left-right (W), ``flipud`` up-down (H),
``rotK`` rotates by K degrees counter-clockwise as displayed (``numpy.rot90``), ``transpose`` swaps H
and W, ``antitranspose`` mirrors across the other diagonal. For 3D volumes ``[n, C, X, Y, Z]`` only
``flip`` exists: left-right is the x axis (``memscan.search.variants.flip_lr``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from memscan.errors import InputError

__all__ = [
    "MIRROR",
    "ORIENTATIONS",
    "Transform",
    "compose",
    "inverse",
    "orient",
    "parse",
]

#: Every orientation, identity first then the left-right mirror: on equal correlations the variant listed
#: first wins (so ``none`` beats ``flip`` and ``flip`` beats the others).
ORIENTATIONS = ("none", "flip", "flipud", "rot90", "rot180", "rot270", "transpose", "antitranspose")
#: The variants of ``--flips``.
MIRROR = ("none", "flip")
_INVERSE = {"rot90": "rot270", "rot270": "rot90"}
_SHIFT = re.compile(r"^shift\(([+-]\d+),([+-]\d+)\)$")
_PARTS = re.compile(r"[a-z]+\([^)]*\)|[^+]+")  # "flip+shift(+2,-1)" -> ["flip", "shift(+2,-1)"]


@dataclass(frozen=True)
class Transform:
    """A parsed label.

    Attributes:
        orientation: one of :data:`ORIENTATIONS`.
        dy: shift in rows.
        dx: shift in columns.
        unknown: parts of the label that are not in the grammar (only when parsed with ``strict=False``).
    """

    orientation: str = "none"
    dy: int = 0
    dx: int = 0
    unknown: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """The canonical label (see :func:`compose`)."""
        return compose(self.orientation, self.dy, self.dx)

    @property
    def shifted(self) -> bool:
        return bool(self.dy or self.dx)


def compose(orientation: str = "none", dy: int = 0, dx: int = 0) -> str:
    """``('flip', 2, -1)`` → ``'flip+shift(+2,-1)'``; ``('none', 0, 0)`` → ``'none'``."""
    if orientation not in ORIENTATIONS:
        raise InputError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")
    parts = [orientation] if orientation != "none" else []
    if dy or dx:
        parts.append(f"shift({int(dy):+d},{int(dx):+d})")
    return "+".join(parts) or "none"


def parse(label: str | None, *, strict: bool = True) -> Transform:
    """``'flip+shift(+2,-1)'`` → ``Transform('flip', 2, -1)``; None or ``''`` read as ``none``.

    Args:
        label: a transform label.
        strict: raise on parts outside the grammar; else return them in ``Transform.unknown``.

    Raises:
        InputError: (strict) a part outside the grammar, or two orientations / two shifts.
    """
    orientation, dy, dx, unknown = "none", 0, 0, []
    seen_orientation = seen_shift = False
    text = str(label) if label else "none"
    for part in _PARTS.findall(text) if text != "none" else []:
        part = part.strip()
        m = _SHIFT.match(part)
        if part in ORIENTATIONS and part != "none" and not seen_orientation and not seen_shift:
            orientation, seen_orientation = part, True
        elif m and not seen_shift:
            dy, dx, seen_shift = int(m.group(1)), int(m.group(2)), True
        else:
            unknown.append(part)
    if unknown and strict:
        raise InputError(f"cannot read transform label {label!r} (not understood: {', '.join(unknown)})")
    return Transform(orientation, dy, dx, tuple(unknown))


def inverse(orientation: str) -> str:
    """The orientation that undoes ``orientation`` (``rot90`` ↔ ``rot270``; the others undo themselves)."""
    if orientation not in ORIENTATIONS:
        raise InputError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")
    return _INVERSE.get(orientation, orientation)


def orient(items: np.ndarray, orientation: str, spatial_dims: int = 2) -> np.ndarray:
    """Apply an orientation to items (any leading axes).

    Args:
        items: 2D items ``[..., H, W]`` (the rotations and transposes need ``H == W``), or 3D items
            ``[n, C, X, Y, Z]`` (``none`` and ``flip`` only).
        orientation: one of :data:`ORIENTATIONS`.
        spatial_dims: 2 or 3.

    Returns:
        A C-contiguous array of the same shape and dtype (``items`` itself for ``none``).
    """
    a = np.asarray(items)
    if orientation == "none":
        return a
    if spatial_dims == 3:
        if orientation != "flip":
            raise InputError(f"orientation {orientation!r} is defined for 2D images only; 3D volumes: flip")
        from memscan.search.variants import flip_lr

        return flip_lr(a)
    if orientation not in ORIENTATIONS:
        raise InputError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")
    if orientation not in ("flip", "flipud", "rot180") and a.shape[-1] != a.shape[-2]:
        raise InputError(f"orientation {orientation!r} needs square images; got {a.shape[-2]}x{a.shape[-1]}")
    h, w = a.ndim - 2, a.ndim - 1
    if orientation == "flip":
        out = np.flip(a, axis=w)
    elif orientation == "flipud":
        out = np.flip(a, axis=h)
    elif orientation in ("rot90", "rot180", "rot270"):
        out = np.rot90(a, k=int(orientation[3:]) // 90, axes=(h, w))
    elif orientation == "transpose":
        out = np.swapaxes(a, h, w)
    else:  # antitranspose: mirror across the anti-diagonal = transpose, then rotate by 180 degrees
        out = np.flip(np.swapaxes(a, h, w), axis=(h, w))
    return np.ascontiguousarray(out)
