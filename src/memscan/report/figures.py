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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from memscan.core import atomic
from memscan.search import transforms

__all__ = [
    "HistogramSeries",
    "PairCanvas",
    "PairPanel",
    "align_to_train",
    "display_plane",
    "histogram_figure",
    "neighbour_label",
    "pair_figure",
    "parse_transform",
    "pearson",
]


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
    return atomic.write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    )


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


def histogram_figure(
    series: Sequence[HistogramSeries],
    threshold: float | None,
    out: Path,
    *,
    threshold_label: str = "threshold",
) -> Path:
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
            ax.hist(
                v,
                bins=bins,
                weights=weights,
                color=s.colour,
                histtype="step",
                linewidth=1.8,
                linestyle="--" if s.dashed else "-",
                label=label,
            )
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(
            threshold,
            color=THRESHOLD_COLOUR,
            linewidth=1.6,
            linestyle=(0, (4, 2)),
            label=f"{threshold_label} = {threshold:.4f}",
        )
    if shares:
        nz = np.concatenate(shares)
        if nz.size and nz.max() / nz.min() > 100:
            ax.set_yscale("log")
    ax.set_xlim(lo, hi + 0.01 * (hi - lo))
    ax.set_xlabel("maximum Pearson correlation with any training image")
    ax.set_ylabel("share of items per bin")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01, 1.0, 0.1),
        ncols=2,
        mode="expand",
        frameon=False,
        fontsize=9,
        borderaxespad=0.2,
    )
    if not pooled.size:
        ax.text(0.5, 0.5, "no correlations to show", transform=ax.transAxes, ha="center", va="center")
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------- alignment


def parse_transform(label: str | None) -> transforms.Transform:
    """The scan's transform label read with the one grammar (``memscan.search.transforms``).

    Parts outside the grammar are returned in ``Transform.unknown`` (drawn without undoing them).
    """
    return transforms.parse(label, strict=False)


def align_to_train(
    item: np.ndarray, transform: str | None, spatial_dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a synthetic item's transform so that it lies pixel-aligned on its training match.

    Args:
        item: one synthetic item ``[C, H, W]`` or ``[C, X, Y, Z]``.
        transform: the scan's label (``none``, ``flip``, ``rot90``, ``shift(+dy,+dx)``, ``flip+shift(...)``).
        spatial_dims: 2 or 3.

    Returns:
        ``(aligned float64 item, valid bool mask [same shape])``; pixels outside the overlap are NaN
        and False.
    """
    t = parse_transform(transform)
    x = np.asarray(item, dtype=np.float64)
    if t.orientation != "none":
        x = transforms.orient(x[None], t.orientation, spatial_dims)[0]
    dy, dx = t.dy, t.dx
    valid = np.ones(x.shape, dtype=bool)
    if (dy or dx) and spatial_dims == 2:
        h, w = x.shape[-2:]
        out = np.full_like(x, np.nan)
        out[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
            ..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)
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


# Panel rectangles in inches (left, bottom, width, height) on a 13 x 3 inch canvas (1300 x 300 px).
_FIG_SIZE = (13.0, 3.0)
_IMG = 2.35
_RECTS = [
    (0.15, 0.12, _IMG, _IMG),  # training
    (2.65, 0.12, _IMG, _IMG),  # synthetic
    (5.80, 0.55, 1.85, 1.85),  # scatter
    (8.10, 0.12, _IMG, _IMG),  # previous slice
    (10.6, 0.12, _IMG, _IMG),  # next slice
]


class PairCanvas:
    """A reusable five-panel figure of one matched pair (the study's layout).

    training image | synthetic image (aligned) | pixel-intensity 2D histogram with r | previous slice |
    next slice of the training subject. The figure and its axes are built once and only their data are
    replaced for each pair, which makes a gallery of dozens of pairs take seconds, not minutes.
    """

    def __init__(self) -> None:
        w, h = _FIG_SIZE
        self.fig = Figure(figsize=_FIG_SIZE, dpi=100, facecolor="white")
        FigureCanvasAgg(self.fig)
        self.axes = [self.fig.add_axes((x / w, y / h, aw / w, ah / h)) for x, y, aw, ah in _RECTS]
        blank = np.zeros((2, 2))
        self.images = []
        self.messages = []
        for i in (0, 1, 3, 4):
            ax = self.axes[i]
            ax.set_xticks([])
            ax.set_yticks([])
            self.images.append(ax.imshow(blank, cmap="gray", interpolation="nearest"))
            self.messages.append(
                ax.text(
                    0.5,
                    0.5,
                    "",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="#555555",
                    linespacing=1.5,
                )
            )
        ax = self.axes[2]
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))
        self.density = ax.imshow(
            np.ma.masked_all((2, 2)),
            cmap=cmap,
            origin="lower",
            aspect="equal",
            interpolation="nearest",
            norm=LogNorm(vmin=1, vmax=10),
            extent=(0, 1, 0, 1),
            zorder=2,
        )
        (self.diagonal,) = ax.plot([0, 1], [0, 1], color="#9aa5b1", linewidth=0.8, linestyle="--", zorder=1)
        ax.set_xlabel("training pixel value", fontsize=8.5)
        ax.set_ylabel("synthetic pixel value", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.spines[["top", "right"]].set_visible(False)

    def _panel(
        self,
        slot: int,
        image: np.ndarray | None,
        title: str,
        vmin: float,
        vmax: float,
        message: str | None = None,
    ) -> None:
        ax = self.axes[(0, 1, 3, 4)[slot]]
        im, text = self.images[slot], self.messages[slot]
        ax.set_title(title, fontsize=9.5, linespacing=1.3)
        if image is None:
            im.set_visible(False)
            text.set_text(message or "not available")
            ax.set_facecolor("#f1f3f5")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor("#b8c0c8")
                spine.set_linestyle((0, (3, 2)))
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            return
        im.set_visible(True)
        text.set_text("")
        ax.set_facecolor("white")
        for spine in ax.spines.values():
            spine.set_visible(False)
        img = np.ma.masked_invalid(image)
        im.set_data(img)
        im.set_cmap(matplotlib.colormaps["gray"].with_extremes(bad="#f4e1dc"))
        im.set_clim(vmin, vmax)
        rows, cols = image.shape
        im.set_extent((-0.5, cols - 0.5, rows - 0.5, -0.5))
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_aspect("equal", adjustable="box")

    def draw(
        self,
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
        max_points: int = 400_000,
    ) -> tuple[Path, float]:
        """Draw one pair and save it as PNG.

        Args:
            train_item: the training item ``[C, *S]``.
            synthetic_aligned: the synthetic item after ``align_to_train`` (float64, NaN outside the overlap).
            valid: overlap mask from ``align_to_train``.
            out: PNG path.
            channel: channel shown in the image panels.
            compared_channels: channels in the scatter plot and r (None: all of them, as in the scan).
            spatial_dims: 2 or 3 (3D items show their middle axial slice).
            synthetic_title, train_title: panel titles.
            neighbours: the two neighbour panels (previous, next).
            max_points: pixels counted in the 2D histogram at most (an even subsample beyond).

        Returns:
            ``(out, r)``: r is the Pearson correlation over the compared channels and the overlap.
        """
        chans = list(range(train_item.shape[0])) if compared_channels is None else list(compared_channels)
        t = np.asarray(train_item, dtype=np.float64)[chans]
        s = np.asarray(synthetic_aligned, dtype=np.float64)[chans]
        v = np.asarray(valid)[chans]
        r = pearson(s, t, v)
        t_plane = display_plane(train_item, channel, spatial_dims)
        s_plane = display_plane(synthetic_aligned, channel, spatial_dims)
        finite = np.concatenate([t_plane.reshape(-1), s_plane[np.isfinite(s_plane)]])
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:
            vmax = vmin + 1.0
        self._panel(0, t_plane, train_title, vmin, vmax)
        self._panel(1, s_plane, synthetic_title, vmin, vmax)
        panels = list(neighbours)[:2] + [PairPanel("", None, "")] * (2 - min(2, len(neighbours)))
        for slot, panel in zip((2, 3), panels, strict=True):
            self._panel(slot, panel.image, panel.title, vmin, vmax, panel.message)

        ax = self.axes[2]
        xs, ys = t[v], s[v]
        if xs.size > max_points:
            step = int(np.ceil(xs.size / max_points))
            xs, ys = xs[::step], ys[::step]
        lo = float(min(xs.min(), ys.min())) if xs.size else 0.0
        hi = float(max(xs.max(), ys.max())) if xs.size else 1.0
        if hi <= lo:
            hi = lo + 1.0
        counts, _, _ = np.histogram2d(xs, ys, bins=80, range=[[lo, hi], [lo, hi]])
        self.density.set_data(np.ma.masked_less(counts.T, 1))
        self.density.set_extent((lo, hi, lo, hi))
        self.density.set_clim(1, max(2.0, float(counts.max())))
        self.diagonal.set_data([lo, hi], [lo, hi])
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(
            f"pixel intensities, r = {r:.4f}" if np.isfinite(r) else "pixel intensities, r = n/a",
            fontsize=9.5,
        )
        return _save(self.fig, out), r


def pair_figure(
    train_item: np.ndarray,
    synthetic_aligned: np.ndarray,
    valid: np.ndarray,
    out: Path,
    **kwargs,
) -> tuple[Path, float]:
    """One pair figure on a fresh ``PairCanvas`` (see ``PairCanvas.draw`` for the arguments)."""
    return PairCanvas().draw(train_item, synthetic_aligned, valid, out, **kwargs)


def registered_training_item(train_item: np.ndarray, label: str | None) -> np.ndarray:
    """The training item ``[C, H, W]`` moved by the robust match's transform (``rot(a)+scale(s)+shift(dy,dx)
    [+gamma(g)]``, the transform that turns it into the synthetic item), with the registration's own warp
    (:func:`memscan.embed.augment.similarity_theta`, bilinear, zeros outside), as float32 in the item's
    units; gamma is applied on the [0, 1] range of the item."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from memscan.embed.augment import similarity_theta
    from memscan.scanning.robust_stage import parse_robust_transform

    x = np.asarray(train_item, dtype=np.float32)
    parsed = parse_robust_transform(label)
    if parsed is None:
        return x
    angle, scale, (dy, dx), gamma = parsed
    c, h, w = x.shape
    theta = similarity_theta(
        torch.tensor([angle]), torch.tensor([scale]), torch.tensor([[float(dy), float(dx)]]), h, w
    )
    grid = F.affine_grid(theta, [1, c, h, w], align_corners=False)
    warped = F.grid_sample(torch.from_numpy(x)[None], grid, mode="bilinear", align_corners=False)[0].numpy()
    if gamma != 1.0:
        hi = float(x.max()) or 1.0
        warped = (np.clip(warped, 0, None) / hi) ** gamma * hi
    return warped


def robust_pair_figure(
    train_item: np.ndarray,
    synthetic_item: np.ndarray,
    label: str | None,
    path: Path,
    *,
    channel: int = 0,
    titles: tuple[str, str] = ("training", "synthetic"),
    words: str = "",
) -> Path:
    """The registered pair of a robust match: training image | training image after the transform |
    synthetic image | absolute difference of the last two (one channel of 2D items ``[C, H, W]``)."""
    moved = registered_training_item(train_item, label)
    t = np.asarray(train_item, dtype=np.float32)[channel]
    m = moved[channel]
    s = np.asarray(synthetic_item, dtype=np.float32)[channel]
    lo, hi = float(min(t.min(), s.min())), float(max(t.max(), s.max()))
    import textwrap

    fig = Figure(figsize=(10, 3.3))
    axes = fig.subplots(1, 4)
    panels = (
        (t, titles[0], "gray"),
        (m, "training, registered: " + (words or (label or "")), "gray"),
        (s, titles[1], "gray"),
        (np.abs(m - s), "|registered - synthetic|", "magma"),
    )
    for ax, (img, title, cmap) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap=cmap, vmin=lo if cmap == "gray" else 0, vmax=hi if cmap == "gray" else hi - lo)
        # ids are long paths: break them anywhere, the words at spaces
        ax.set_title(textwrap.fill(title, 34, break_long_words=True), fontsize=7)
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
