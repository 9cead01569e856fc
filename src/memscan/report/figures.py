"""Figures of a scan report: the max-correlation histogram and the study's matched-pair figure.

Everything is drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state, no
display needed), and every PNG is written to a temporary file and renamed into place.

Alignment convention (the scan's, see ``memscan.search.variants``): a transform label such as
``flip+shift(+2,-1)`` means that the synthetic item, mirrored left-right and then compared at shift
``(dy, dx) = (+2, -1)``, matches the training item: ``synthetic'[y, x] ~ train[y - dy, x - dx]``.
``align_to_train`` undoes the label so that the synthetic image can be shown pixel-aligned with the
training image; pixels that fall outside the overlap are NaN.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = [
    "HistogramSeries",
    "PairPanel",
    "align_to_train",
    "display_plane",
    "histogram_figure",
    "neighbour_label",
    "pair_figure",
    "parse_transform",
    "pearson",
]

_SHIFT = re.compile(r"^shift\(([+-]?\d+),([+-]?\d+)\)$")
_PARTS = re.compile(r"[a-z_]+\([^)]*\)|[^+]+")  # "flip+shift(+2,-1)" -> ["flip", "shift(+2,-1)"]

# Colour-blind-safe palette (Okabe-Ito).
SYNTHETIC_COLOUR = "#D55E00"
HOLDOUT_COLOUR = "#0072B2"
BASELINE_COLOUR = "#009E73"
THRESHOLD_COLOUR = "#222222"


def _save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render ``fig`` to ``path`` (PNG) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:6]}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------------------------- histogram


@dataclass
class HistogramSeries:
    """One distribution of maximum correlations to draw.

    Attributes:
        label: legend text.
        values: the correlations (NaN are dropped).
        colour: line / fill colour.
        filled: draw a translucent filled histogram (else a step outline).
        dashed: dashed outline.
    """

    label: str
    values: np.ndarray
    colour: str
    filled: bool = False
    dashed: bool = False


def histogram_figure(series: Sequence[HistogramSeries], threshold: float | None, out: Path, *,
                     threshold_label: str = "threshold") -> Path:
    """Histogram of maximum correlations, one curve per series, with the threshold as a vertical line.

    Each series is normalized to the share of its items per bin, so sets of very different sizes
    (100,000 synthetic vs 500 held-out images) can be compared; the y axis turns logarithmic when the
    shares span more than two decades (a small cluster of copies next to a large bulk).

    Args:
        series: the distributions; empty ones are listed in the legend as "(none)".
        threshold: the flagging threshold, or None.
        out: PNG path.
        threshold_label: legend text of the threshold line.

    Returns:
        ``out``.
    """
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    clean = [(s, np.asarray(s.values, dtype=np.float64)) for s in series]
    clean = [(s, v[np.isfinite(v)]) for s, v in clean]
    pooled = np.concatenate([v for _, v in clean if v.size] + [np.empty(0)])
    if threshold is not None and np.isfinite(threshold):
        pooled = np.append(pooled, threshold)
    if pooled.size:
        lo = float(np.floor(pooled.min() * 50) / 50)
        hi = float(min(1.0, np.ceil(pooled.max() * 50) / 50 + 0.02))
        if hi - lo < 0.05:
            lo = hi - 0.05
    else:
        lo, hi = 0.0, 1.0
    bins = np.linspace(lo, hi, 61)
    shares = []
    for s, v in clean:
        if not v.size:
            ax.plot([], [], color=s.colour, label=f"{s.label} (none)")
            continue
        weights = np.full(v.size, 1.0 / v.size)
        h, _ = np.histogram(v, bins=bins, weights=weights)
        shares.append(h[h > 0])
        label = f"{s.label} (n = {v.size:,})"
        if s.filled:
            ax.hist(v, bins=bins, weights=weights, color=s.colour, alpha=0.35, label=label)
            ax.hist(v, bins=bins, weights=weights, color=s.colour, histtype="step", linewidth=1.4)
        else:
            ax.hist(v, bins=bins, weights=weights, color=s.colour, histtype="step", linewidth=1.8,
                    linestyle="--" if s.dashed else "-", label=label)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.6, linestyle=(0, (4, 2)),
                   label=f"{threshold_label} = {threshold:.4f}")
    if shares:
        nz = np.concatenate(shares)
        if nz.size and nz.max() / nz.min() > 100:
            ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("maximum Pearson correlation with any training image")
    ax.set_ylabel("share of items per bin")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    if not pooled.size:
        ax.text(0.5, 0.5, "no correlations to show", transform=ax.transAxes, ha="center", va="center")
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------- alignment


def parse_transform(label: str | None) -> tuple[bool, int, int, list[str]]:
    """``'flip+shift(+2,-1)'`` → ``(True, 2, -1, [])``; unknown parts are returned in the list."""
    flip, dy, dx, unknown = False, 0, 0, []
    for part in _PARTS.findall(str(label or "none")):
        part = part.strip()
        m = _SHIFT.match(part)
        if part in ("", "none"):
            continue
        if part == "flip":
            flip = True
        elif m:
            dy, dx = int(m.group(1)), int(m.group(2))
        else:
            unknown.append(part)
    return flip, dy, dx, unknown


def align_to_train(item: np.ndarray, transform: str | None, spatial_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Undo a synthetic item's transform so that it lies pixel-aligned on its training match.

    Args:
        item: one synthetic item ``[C, H, W]`` or ``[C, X, Y, Z]``.
        transform: the scan's label (``none``, ``flip``, ``shift(+dy,+dx)``, ``flip+shift(...)``).
        spatial_dims: 2 or 3.

    Returns:
        ``(aligned float64 item, valid bool mask [same shape])``; pixels outside the overlap are NaN
        and False.
    """
    flip, dy, dx, _ = parse_transform(transform)
    x = np.asarray(item, dtype=np.float64)
    if flip:
        x = np.flip(x, axis=-1 if spatial_dims == 2 else 1)
    valid = np.ones(x.shape, dtype=bool)
    if (dy or dx) and spatial_dims == 2:
        h, w = x.shape[-2:]
        out = np.full_like(x, np.nan)
        out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = x[
            ..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)
        ]
        x = out
        valid = np.isfinite(out)
    return np.ascontiguousarray(x), valid


def pearson(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Pearson correlation of two arrays over ``valid`` pixels (float64; NaN when one is constant)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if valid is not None:
        a, b = a[valid], b[valid]
    a, b = a.reshape(-1), b.reshape(-1)
    if a.size < 2:
        return float("nan")
    ac, bc = a - a.mean(), b - b.mean()
    den = np.sqrt((ac * ac).sum() * (bc * bc).sum())
    return float((ac * bc).sum() / den) if den > 0 else float("nan")


def display_plane(item: np.ndarray, channel: int, spatial_dims: int) -> np.ndarray:
    """The 2D image shown for an item: one channel; for a 3D volume, its middle axial (z) slice."""
    plane = np.asarray(item)[channel]
    if spatial_dims == 3:
        plane = plane[:, :, plane.shape[2] // 2]
    return np.asarray(plane, dtype=np.float64)


def neighbour_label(axis: str | None, index: int, step: int) -> str:
    """``('z', 78, -1)`` → ``'z077'`` (the id suffix convention of slices)."""
    return f"{axis or 'slice '}{index + step:03d}"


# ----------------------------------------------------------------------------------------------- pair figure


@dataclass
class PairPanel:
    """One neighbouring-slice panel: an image with a title, or a placeholder message."""

    title: str
    image: np.ndarray | None = None
    message: str | None = None


def _image_axis(ax, image: np.ndarray | None, title: str, vmin: float, vmax: float, message: str | None = None):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9.5)
    if image is None:
        ax.set_facecolor("#f3f3f3")
        ax.set_aspect("equal")
        for spine in ax.spines.values():
            spine.set_edgecolor("#bbbbbb")
            spine.set_linestyle((0, (3, 2)))
        ax.text(0.5, 0.5, message or "not available", transform=ax.transAxes, ha="center", va="center",
                fontsize=8.5, color="#555555", wrap=True)
        return
    ax.imshow(np.ma.masked_invalid(image), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)


def pair_figure(
    train_item: np.ndarray,
    synthetic_aligned: np.ndarray,
    valid: np.ndarray,
    out: Path,
    *,
    channel: int,
    compared_channels: Sequence[int] | None,
    spatial_dims: int,
    synthetic_title: str,
    train_title: str,
    neighbours: Sequence[PairPanel],
    max_points: int = 200_000,
) -> tuple[Path, float]:
    """The study's figure of one matched pair, in one row of five panels.

    training image | synthetic image (aligned) | pixel-intensity 2D histogram with r | previous slice |
    next slice of the training subject.

    Args:
        train_item: the training item ``[C, *S]``.
        synthetic_aligned: the synthetic item after ``align_to_train`` (float64, NaN outside the overlap).
        valid: overlap mask from ``align_to_train``.
        out: PNG path.
        channel: channel shown in the image panels.
        compared_channels: channels that enter the scatter plot and r (None: all, as in the scan).
        spatial_dims: 2 or 3 (3D items show their middle axial slice).
        synthetic_title, train_title: panel titles.
        neighbours: the two neighbour panels (previous, next).
        max_points: pixels drawn in the 2D histogram at most (an even subsample beyond).

    Returns:
        ``(out, r)`` with r the Pearson correlation over the compared channels and the overlap.
    """
    chans = list(range(train_item.shape[0])) if compared_channels is None else list(compared_channels)
    t = np.asarray(train_item, dtype=np.float64)[chans]
    s = synthetic_aligned[chans]
    v = valid[chans]
    r = pearson(s, t, v)
    t_plane = display_plane(train_item, channel, spatial_dims)
    s_plane = display_plane(synthetic_aligned, channel, spatial_dims)
    finite = np.concatenate([t_plane.reshape(-1), s_plane[np.isfinite(s_plane)].reshape(-1)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0

    fig = Figure(figsize=(13.0, 2.95), layout="constrained")
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": [1, 1, 1.1, 1, 1]})
    _image_axis(axes[0], t_plane, train_title, vmin, vmax)
    _image_axis(axes[1], s_plane, synthetic_title, vmin, vmax)

    ax = axes[2]
    xs, ys = t[v].reshape(-1), s[v].reshape(-1)
    if xs.size > max_points:
        step = int(np.ceil(xs.size / max_points))
        xs, ys = xs[::step], ys[::step]
    if xs.size:
        lo = float(min(xs.min(), ys.min()))
        hi = float(max(xs.max(), ys.max()))
        if hi <= lo:
            hi = lo + 1.0
        ax.hist2d(xs, ys, bins=64, range=[[lo, hi], [lo, hi]], cmap="viridis", norm=LogNorm(), cmin=1)
        ax.plot([lo, hi], [lo, hi], color="#D55E00", linewidth=0.8, linestyle="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("training pixel", fontsize=8.5)
    ax.set_ylabel("synthetic pixel", fontsize=8.5)
    ax.tick_params(labelsize=7.5)
    ax.set_title(f"pixel intensities, r = {r:.4f}" if np.isfinite(r) else "pixel intensities, r = n/a",
                 fontsize=9.5)

    for ax, panel in zip(axes[3:], list(neighbours)[:2], strict=False):
        _image_axis(ax, panel.image, panel.title, vmin, vmax, panel.message)
    return _save(fig, out), r
