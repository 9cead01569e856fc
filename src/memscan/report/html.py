"""``memscan report RUN``: one self-contained, auditable HTML report of a scan run.

What is written into the run folder (all relative links, no external assets, no JavaScript, so the
folder can be zipped, mailed and opened offline)::

    RUN/report.html            verdict, key numbers, histogram, gallery page 1, subjects, how to read it
    RUN/gallery-2.html, ...    further gallery pages (``per_page`` pairs each, ``max_gallery`` in all)
    RUN/figures/histogram.png  maximum correlation: synthetic vs held-out vs train-vs-train
    RUN/figures/pairs/pair-NNN.png   one matched pair per file, in the study's layout
    RUN/synthetic.csv, matches.csv, subjects.csv (+ holdout.csv, baseline.csv when present)

Files are written to temporary names and renamed into place; the figures folder is built beside the
old one and swapped in whole, so a reader never sees a half-written report.

The synthetic image of a pair is shown **after undoing its transform** (mirrored back, shifted back)
so that it lies pixel-aligned on the training image; the transform is named in the caption and in the
panel title. Images need the dataset folders named in ``summary.json``; when they cannot be opened
(moved, deleted, another machine) the report is written without images and says so.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import platform
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from memscan.core import atomic
from memscan.dataset.store import Dataset
from memscan.report import figures
from memscan.report.terminal import engine_text, filtered_text
from memscan.scanning.runfolder import FIGURES_DIR, REPORT_FILE, ScanResult, Summary, load_run

log = logging.getLogger(__name__)

PAIRS_DIR = "pairs"
SUBJECT_ROWS = 100  # rows of the per-subject table in the HTML (the CSV has all)
READ_BUDGET = 256 * 2**20  # bytes of items read at once for the gallery
_GALLERY_PAGE = re.compile(r"^gallery-(\d+)\.html$")


# ----------------------------------------------------------------------------------------------- data model


@dataclass
class PairEntry:
    """One gallery entry: a synthetic item and its nearest training item."""

    rank: int
    synthetic_id: str
    train_id: str
    subject: str
    correlation: float
    transform: str
    p_value: float | None
    flagged: bool
    image: str | None = None  # relative path of the PNG
    width: int | None = None
    height: int | None = None
    r_display: float | None = None  # r over the pixels of the scatter plot
    note: str | None = None  # why there is no image, or what to keep in mind


@dataclass
class GalleryPage:
    """One page of the gallery."""

    number: int
    href: str
    entries: list[PairEntry] = field(default_factory=list)


@dataclass
class Images:
    """The opened datasets behind a run, or why they could not be opened."""

    train: Dataset | None
    synthetic: Dataset | None
    problem: str | None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.train is not None and self.synthetic is not None


# ----------------------------------------------------------------------------------------------- helpers


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells that start like a formula are prefixed with ``'`` (OWASP CSV injection).

    Only text columns are touched: numbers (e.g. negative correlations) stay numbers.
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            values = out[col].astype("object")
            risky = values.map(lambda v: isinstance(v, str) and v.startswith(_FORMULA_START))
            if risky.any():
                out[col] = values.where(~risky, "'" + values.astype(str))
    return out


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    safe = neutralise_formulas(df)
    atomic.write_with(path, lambda tmp: safe.to_csv(tmp, index=False))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


# ----------------------------------------------------------------------------------------------- datasets


def _open_one(recorded: str | None, run: Path, role: str) -> tuple[Dataset | None, str | None]:
    if not recorded:
        return None, f"summary.json names no {role} dataset"
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, run / p, run.parent / p]
    errors = []
    for cand in dict.fromkeys(candidates):
        try:
            return Dataset.open(cand), None
        except Exception as exc:  # noqa: BLE001 - InputError, zarr errors, permissions: all mean "no images"
            errors.append(str(exc))
    return None, f"the {role} dataset {recorded!s} cannot be opened from here ({errors[0]})"


def open_images(result: ScanResult) -> Images:
    """Open the training and synthetic datasets recorded in the run's summary, if they are reachable."""
    s = result.summary
    train, p1 = _open_one(s.get("train"), result.run, "training")
    synth, p2 = _open_one(s.get("synthetic"), result.run, "synthetic")
    problem = "; ".join(p for p in (p1, p2) if p) or None
    if train is None or synth is None:
        return Images(None, None, problem)
    warnings = []
    if train.item_shape != synth.item_shape:
        return Images(
            None,
            None,
            f"the datasets' item shapes differ ({list(train.item_shape)} vs "
            f"{list(synth.item_shape)}): they are not the ones that were scanned",
        )
    for ds, key in ((train, "n_train"), (synth, "n_synthetic")):
        if s.get(key) is not None and ds.n_items != int(s[key]):
            warnings.append(
                f"{ds.path} now holds {ds.n_items} items but the scan saw {s[key]}: it may have "
                "changed since the scan"
            )
    return Images(train, synth, None, "; ".join(warnings) or None)


# ----------------------------------------------------------------------------------------------- gallery


def select_gallery(synthetic: pd.DataFrame, max_gallery: int) -> pd.DataFrame:
    """Flagged items by decreasing correlation; free slots filled with the best unflagged items.

    Items without a match (no nearest training item) are left out.
    """
    df = synthetic[synthetic["nearest_train_id"].notna()].copy()
    df["_corr"] = pd.to_numeric(df["max_correlation"], errors="coerce").astype("float64")
    df = df.sort_values(
        ["_corr", "synthetic_id"], ascending=[False, True], kind="mergesort", na_position="last"
    )
    flagged = df["flagged"].fillna(False).astype(bool)
    chosen = pd.concat(
        [df[flagged].head(max_gallery), df[~flagged].head(max(0, max_gallery - int(flagged.sum())))]
    )
    return chosen.drop(columns="_corr").reset_index(drop=True)


def _entries(chosen: pd.DataFrame) -> list[PairEntry]:
    out = []
    for i, row in enumerate(chosen.itertuples(index=False), start=1):
        p = getattr(row, "p_value", None)
        out.append(
            PairEntry(
                rank=i,
                synthetic_id=str(row.synthetic_id),
                train_id=str(row.nearest_train_id),
                subject=str(row.nearest_subject),
                correlation=float(row.max_correlation),
                transform=str(row.transform) if pd.notna(row.transform) else "none",
                p_value=None if p is None or pd.isna(p) else _num(p),
                flagged=bool(row.flagged) if pd.notna(row.flagged) else False,
            )
        )
    return out


def _display_channel(train: Dataset, options: dict[str, Any]) -> tuple[int, list[int] | None, str]:
    names = list(train.channels)
    wanted = options.get("channel")
    if wanted and wanted in names:
        idx = names.index(wanted)
        return idx, [idx], f"channel {wanted!r} (the channel the scan compared)"
    text = f"channel {names[0]!r}" + (f" (1 of {len(names)}: {', '.join(names)})" if len(names) > 1 else "")
    return 0, None, text


def _batches(entries: list[PairEntry], per_pair_bytes: int) -> Iterator[list[PairEntry]]:
    size = max(1, READ_BUDGET // max(1, per_pair_bytes))
    for i in range(0, len(entries), size):
        yield entries[i : i + size]


def _render_pairs(entries: list[PairEntry], images: Images, options: dict[str, Any], pairs_dir: Path) -> str:
    """Draw one PNG per entry into ``pairs_dir``; fills ``image``/``note``; returns the channel text."""
    train, synth = images.train, images.synthetic
    assert train is not None and synth is not None
    channel, compared, channel_text = _display_channel(train, options)
    dims = train.spatial_dims
    tman = train.manifest.reset_index(drop=True)
    train_pos = {str(v): i for i, v in enumerate(tman["id"])}
    synth_pos = {str(v): i for i, v in enumerate(synth.manifest["id"])}
    slices: dict[tuple[str, str, int], int] = {}
    sliced = tman[tman["slice_index"].notna()]
    for pos, src, axis, idx in zip(
        sliced.index, sliced["source"], sliced["slice_axis"], sliced["slice_index"], strict=True
    ):
        slices[(str(src), _axis(axis), int(idx))] = int(pos)

    def neighbours_of(pos: int) -> list[tuple[str, int | None, str | None]]:
        row = tman.iloc[pos]
        if dims == 3:
            return [
                ("previous slice", None, "3D volume:\nno neighbouring slices"),
                ("next slice", None, "3D volume:\nno neighbouring slices"),
            ]
        if pd.isna(row["slice_index"]):
            return [
                ("previous slice", None, "not a slice\nof a volume"),
                ("next slice", None, "not a slice\nof a volume"),
            ]
        axis = _axis(row["slice_axis"])
        out = []
        for step, name in ((-1, "previous slice"), (1, "next slice")):
            label = figures.neighbour_label(axis, int(row["slice_index"]), step)
            key = (str(row["source"]), axis, int(row["slice_index"]) + step)
            sign = "\u2212" if step < 0 else "+"
            if key in slices:
                out.append((f"{name} {label}", slices[key], None))
            else:
                out.append(
                    (f"{name} {label}", None, f"slice {axis}{sign}1 ({label})\nnot in the training set")
                )
        return out

    canvas = figures.PairCanvas()
    for batch in _batches(entries, 4 * train.item_nbytes):
        todo = []
        for e in batch:
            tp, sp = train_pos.get(e.train_id), synth_pos.get(e.synthetic_id)
            if tp is None or sp is None:
                which = "training" if tp is None else "synthetic"
                e.note = f"The {which} item is not in the dataset any more: no images."
                continue
            todo.append((e, tp, sp, neighbours_of(tp)))
        need_t = sorted(
            {tp for _, tp, _, _ in todo} | {p for *_, nb in todo for _, p, _ in nb if p is not None}
        )
        need_s = sorted({sp for _, _, sp, _ in todo})
        try:
            t_items = dict(zip(need_t, train.take(need_t), strict=True)) if need_t else {}
            s_items = dict(zip(need_s, synth.take(need_s), strict=True)) if need_s else {}
        except Exception as exc:  # noqa: BLE001 - a damaged store costs the images, not the report
            log.warning("cannot read gallery images: %s", exc)
            for e, *_ in todo:
                e.note = f"The images could not be read ({type(exc).__name__}: {exc})."
            continue
        for e, tp, sp, nb in todo:
            try:
                _draw_pair(e, tp, sp, nb, t_items, s_items, tman, canvas, channel, compared, dims, pairs_dir)
            except Exception as exc:  # noqa: BLE001 - one odd item must not cost the whole report
                log.warning("cannot draw pair %d (%s): %s", e.rank, e.synthetic_id, exc)
                e.image, e.note = None, f"This pair could not be drawn ({type(exc).__name__}: {exc})."
    return channel_text


def _axis(value: Any) -> str:
    """A manifest ``slice_axis`` as text ('' when missing)."""
    return "" if value is None or pd.isna(value) else str(value)


def _draw_pair(
    e: PairEntry,
    tp: int,
    sp: int,
    nb: list[tuple[str, int | None, str | None]],
    t_items: dict[int, np.ndarray],
    s_items: dict[int, np.ndarray],
    tman: pd.DataFrame,
    canvas: figures.PairCanvas,
    channel: int,
    compared: list[int] | None,
    dims: int,
    pairs_dir: Path,
) -> None:
    """Draw one entry's figure and fill its ``image``, size, ``r_display`` and ``note``."""
    t = figures.parse_transform(e.transform)
    unknown = list(t.unknown)
    aligned, valid = figures.align_to_train(s_items[sp], e.transform, dims)
    undone = [w for w, on in ((t.orientation, t.orientation != "none"), ("shift", t.shifted)) if on]
    s_title = "synthetic" + (f" ({' + '.join(undone)} undone)" if undone else "")
    t_row = tman.iloc[tp]
    t_title = "training" + (
        f" {figures.neighbour_label(_axis(t_row['slice_axis']), int(t_row['slice_index']), 0)}"
        if dims == 2 and pd.notna(t_row["slice_index"])
        else ""
    )
    panels = []
    for title, pos, message in nb:
        if pos is None:
            panels.append(figures.PairPanel(title, None, message))
            continue
        chans = compared if compared is not None else list(range(aligned.shape[0]))
        r_nb = figures.pearson(aligned[chans], t_items[pos][chans], valid[chans])
        panels.append(
            figures.PairPanel(
                f"{title}\nr with synthetic {r_nb:.4f}",
                figures.display_plane(t_items[pos], channel, dims),
            )
        )
    name = f"pair-{e.rank:03d}.png"
    path, r = canvas.draw(
        t_items[tp],
        aligned,
        valid,
        pairs_dir / name,
        channel=channel,
        compared_channels=compared,
        spatial_dims=dims,
        synthetic_title=s_title,
        train_title=t_title,
        neighbours=panels,
    )
    e.image = f"{FIGURES_DIR}/{PAIRS_DIR}/{name}"
    e.r_display = r if math.isfinite(r) else None
    with Image.open(path) as im:
        e.width, e.height = im.size
    if unknown:
        e.note = f"Transform part(s) {', '.join(unknown)} not undone in the image."


def _paginate(entries: list[PairEntry], per_page: int) -> list[GalleryPage]:
    per_page = max(1, int(per_page))
    n_pages = max(1, math.ceil(len(entries) / per_page))
    pages = []
    for n in range(1, n_pages + 1):
        href = f"{REPORT_FILE}#gallery" if n == 1 else f"gallery-{n}.html"
        pages.append(GalleryPage(n, href, entries[(n - 1) * per_page : n * per_page]))
    return pages


# ----------------------------------------------------------------------------------------------- text


def _threshold_text(s: Summary) -> tuple[str, bool]:
    """The sentence about how flags are decided, and whether the threshold is calibrated."""
    thr = _num(s.get("threshold"))
    thr_text = f"{thr:.4f}" if thr is not None else "n/a"
    n_hold = s.n_holdout
    cal = s.get("calibration") or {}
    if s.get("threshold_source") == "holdout" and n_hold:
        base = f"Flags are calibrated on {n_hold:,} held-out real images"
        method = str(cal.get("method", "")).lower()
        alpha = _num(cal.get("alpha"))
        if method == "fdr":
            a = f" \u03b1 = {alpha:g}" if alpha is not None else ""
            rule = f"{base}: Benjamini\u2013Hochberg false discovery rate{a}"
            if thr is None:
                return f"{rule}; no synthetic image is significant at that level, so none is flagged.", True
            pt = _num(cal.get("p_threshold"))
            ptxt = f", p \u2264 {_fmt_p(pt)}" if pt else ""
            return f"{rule}, which here flags correlations of {thr_text} and above{ptxt}.", True
        if method == "quantile":
            q = f"the {1 - alpha:.3g} quantile" if alpha is not None else "a quantile"
            return (
                f"{base}: images above {q} of their maximum correlation with the training set are flagged "
                f"(p \u2264 {alpha:g}), here correlations of {thr_text} and above."
            ), True
        return f"{base}: the threshold is r > {thr_text}.", True
    return (
        f"The threshold r > {thr_text} is FIXED AND NOT CALIBRATED: no held-out real images were "
        "given, so nothing measures how similar a new, unseen patient would be to the training set. "
        "Rerun the scan with --holdout to calibrate it."
    ), False


def _verdict(s: Summary) -> str:
    n_s = s.n_synthetic
    n_f = s.n_flagged
    tot = s.subjects_total
    leaked = s.subjects_leaked
    verb_f = "is" if n_f == 1 else "are"
    verb_s = "is" if leaked == 1 else "are"
    text = (
        f"{n_f:,} of {n_s:,} synthetic images ({_pct(n_f, n_s)}) {verb_f} flagged as copies of training "
        f"images; {leaked:,} of {tot:,} training subjects ({_pct(leaked, tot)}) {verb_s} reproduced."
    )
    n_u = s.n_unscored
    if n_u:
        plural = n_u != 1
        text += (
            f" {n_u:,} synthetic image{'s' if plural else ''} could not be scored and "
            f"{'are' if plural else 'is'} NOT certified as non-copies."
        )
    return text


def _key_numbers(result: ScanResult, holdout: pd.DataFrame | None) -> list[tuple[str, str]]:
    s = result.summary
    opts = s.get("options") or {}
    n_s, n_f = s.n_synthetic, s.n_flagged
    tot, leaked = s.subjects_total, s.subjects_leaked
    thr = _num(s.get("threshold"))
    calibrated = s.get("threshold_source") == "holdout"
    if thr is not None:
        thr_row = (
            f"r \u2265 {thr:.4f} (calibrated on held-out images: the lowest flagged correlation)"
            if calibrated
            else f"r > {thr:.4f} (fixed)"
        )
    else:
        thr_row = "none reached: no synthetic image is significant" if calibrated else "n/a"
    rows = [
        ("Synthetic images scanned", f"{n_s:,}"),
        ("Training images (subjects)", f"{int(s.get('n_train') or 0):,} ({tot:,})"),
        (
            "Held-out real images",
            f"{int(s.get('n_holdout') or 0):,}"
            if s.get("n_holdout")
            else "none \u2014 the threshold is not calibrated",
        ),
        ("Threshold", thr_row),
    ]
    if s.get("filtered_from"):
        rows.insert(1, ("Synthetic set filtered", filtered_text(s["filtered_from"])))
    cal = s.get("calibration") or {}
    if cal:
        parts = [f"method {cal.get('method')}"]
        if cal.get("alpha") is not None:
            parts.append(f"\u03b1 = {cal['alpha']}")
        if _num(cal.get("p_threshold")):
            parts.append(f"p threshold {_fmt_p(_num(cal.get('p_threshold')))}")
        if _num(cal.get("min_p_value")) is not None:
            parts.append(f"smallest possible p-value {_fmt_p(_num(cal.get('min_p_value')))}")
        rows.append(("Calibration", ", ".join(parts)))
        q = cal.get("null_quantiles") or {}
        if q:
            names = {"q50": "median", "q90": "90%", "q95": "95%", "q99": "99%", "max": "max"}
            rows.append(
                (
                    "Held-out max correlation",
                    " \u00b7 ".join(
                        f"{names.get(k, k)} {float(v):.4f}" for k, v in q.items() if _num(v) is not None
                    ),
                )
            )
    elif holdout is not None and len(holdout):
        hv = pd.to_numeric(holdout["max_correlation"], errors="coerce").dropna()
        if len(hv):
            rows.append(
                (
                    "Held-out max correlation",
                    f"median {hv.median():.4f} \u00b7 99% {hv.quantile(0.99):.4f} \u00b7 max {hv.max():.4f}",
                )
            )
    rows += [
        ("Flagged synthetic images", f"{n_f:,} ({_pct(n_f, n_s)})"),
        ("Training subjects reproduced", f"{leaked:,} of {tot:,} ({_pct(leaked, tot)})"),
    ]
    corr = pd.to_numeric(result.synthetic["max_correlation"], errors="coerce")
    if corr.notna().any():
        rows.append(("Highest / median max correlation", f"{corr.max():.4f} / {corr.median():.4f}"))
    if s.get("n_unscored"):
        rows.append(
            (
                "NOT SCORED (not certified)",
                f"{int(s['n_unscored']):,} synthetic images could not be scored (constant or non-finite "
                "pixels): they are not known to be non-copies",
            )
        )
    elif s.get("n_unmatched"):
        rows.append(("Synthetic images without any match", f"{int(s['n_unmatched']):,}"))
    search = [
        f"top-{s.get('top_k')}",
        "flips " + ("on" if opts.get("flips") else "off"),
        f"max shift {opts.get('max_shift', 0)} px",
        f"mask {opts.get('mask', 'none')}",
        f"channel {opts.get('channel') or 'all'}",
    ]
    rows.append(("Search", ", ".join(search)))
    rows.append(("Engine", f"{s.get('device')}, {engine_text(s.get('precision'), s.get('n_rerank_pairs'))}"))
    if _num(s.get("seconds")) is not None:
        rows.append(("Scan time", f"{float(s['seconds']):.2f} s"))
    return rows


#: The report's "Fidelity and diversity" rows: (key, name, how to read it; docs/quality.md).
QUALITY_METRICS = (
    ("fd", "Fréchet distance (FD)", "Lower is closer to the training set; its scale depends on the encoder."),
    (
        "fd_relative",
        "FD relative to held-out",
        "FD(synthetic, train) / FD(held-out, train): about 1 = as close as new real patients; much above 1 = "
        "off the real distribution; well below 1 = closer than new patients, a copying warning.",
    ),
    (
        "kid",
        "KID",
        "About 0 (within a few standard errors) = same distribution; comparable across set sizes.",
    ),
    (
        "precision",
        "Precision",
        "Fidelity: share of synthetic images inside the real manifold (1 = all look real).",
    ),
    ("recall", "Recall", "Diversity: share of real images covered by the synthetic manifold."),
    (
        "density",
        "Density",
        "About 1 for a set like the real one; above 1 = samples crowd dense real regions.",
    ),
    (
        "coverage",
        "Coverage",
        "Diversity, robust to outliers: share of real images with a synthetic neighbour.",
    ),
    ("alpha_precision", "α-precision", "1 ideal; low = mass outside the typical real region."),
    (
        "beta_recall",
        "β-recall",
        "1 ideal; slices of volumes score low for real sets too: compare with held-out.",
    ),
    (
        "authenticity",
        "Authenticity",
        "Share of synthetic images not closer to a training image than training images are to each other: "
        "copies score 0.",
    ),
    (
        "ct_statistic",
        "Data-copying test C_T",
        "About 0 = as close as new real data; well below 0 (e.g. < −3) = data-copying; above 0 = "
        "under-fitting.",
    ),
    ("ct_p_value", "C_T p-value", "One-sided, for copying: small = the set copies."),
    (
        "ms_ssim",
        "Mean pairwise MS-SSIM",
        "Within each set: higher = the images are more alike; synthetic well above held-out = less diverse.",
    ),
)


def _fmt_metric(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _quality_rows(panel: dict[str, Any] | None) -> list[dict[str, str]]:
    """Each quality number beside its held-out reference, with one line on how to read it."""
    if panel is None:
        return []
    ref = panel.get("holdout_reference") or {}
    rows = []
    for key, name, howto in QUALITY_METRICS:
        if key == "ms_ssim":
            synthetic, reference = panel.get("ms_ssim_synthetic"), panel.get("ms_ssim_holdout")
        elif key == "fd_relative":
            synthetic, reference = panel.get(key), 1.0 if ref else None
        elif key.startswith("ct_"):
            synthetic, reference = panel.get(key), None
        else:
            synthetic, reference = panel.get(key), ref.get(key)
        value = _fmt_metric(synthetic)
        if key == "kid" and _num(panel.get("kid_std")) is not None:
            value += f" ± {_fmt_metric(panel['kid_std'])}"
        rows.append(
            {
                "name": name,
                "synthetic": value,
                "holdout": _fmt_metric(reference) if reference is not None else "—",
                "howto": howto,
            }
        )
    return rows


def _encoder_text(panel: dict[str, Any] | None) -> str | None:
    if panel is None:
        return None
    enc = panel.get("encoder") or {}
    if enc.get("parts"):  # the default: the learned embedding beside image statistics
        return " + ".join(_one_encoder_text(p) for p in enc["parts"])
    return _one_encoder_text(enc)


def _one_encoder_text(enc: dict[str, Any]) -> str:
    parts = [str(enc.get("kind", "encoder"))]
    for key in ("file", "sha256", "input_size", "output_dim", "dim", "train_items", "key"):
        if enc.get(key) is not None:
            value = str(enc[key])[:12] if key == "sha256" else enc[key]
            parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


#: Robust matches shown with their registered pair, at most.
MAX_ROBUST_SHOWN = 12
ROBUST_DIR = "robust"


def _robust_rows(result: ScanResult, images: Images, fig_dir: Path) -> list[dict[str, Any]]:
    """With ``--robust``: the strongest robust matches (flagged first, then by robust p-value), each with its
    registered pair drawn into ``fig_dir`` and the transform in words."""
    from memscan.scanning.robust_stage import transform_words

    syn = result.synthetic
    if "robust_train_id" not in syn:
        return []
    cand = syn[syn["robust_train_id"].notna()].copy()
    cand["_p"] = pd.to_numeric(cand["robust_p_value"], errors="coerce").fillna(np.inf)
    cand["_s"] = -pd.to_numeric(cand["robust_score"], errors="coerce").fillna(-np.inf)
    cand = cand.sort_values(["flagged", "_p", "_s"], ascending=[False, True, True], kind="stable")
    cand = cand.head(MAX_ROBUST_SHOWN)
    rows = []
    t_pos = s_pos = None
    if images.ok and len(cand):
        t_pos = {str(v): i for i, v in enumerate(images.train.ids)}
        s_pos = {str(v): i for i, v in enumerate(images.synthetic.ids)}
        fig_dir.mkdir(parents=True, exist_ok=True)
    for n, (_, r) in enumerate(cand.iterrows(), start=1):
        words = transform_words(r["robust_transform"])
        row = {
            "synthetic_id": r["synthetic_id"],
            "train_id": r["robust_train_id"],
            "subject": r["robust_subject"],
            "transform": r["robust_transform"],
            "words": words,
            "score": _fmt_metric(r["robust_score"]),
            "p_value": _fmt_p(_num(r["robust_p_value"])),
            "pixel": _fmt_metric(r["max_correlation"]),
            "pixel_p": _fmt_p(_num(r.get("p_value"))),
            "flagged": bool(r["flagged"]),
            "image": None,
        }
        if t_pos is not None and str(r["robust_train_id"]) in t_pos and str(r["synthetic_id"]) in s_pos:
            name = f"robust-{n:03d}.png"
            figures.robust_pair_figure(
                images.train.take(np.array([t_pos[str(r["robust_train_id"])]]))[0],
                images.synthetic.take(np.array([s_pos[str(r["synthetic_id"])]]))[0],
                r["robust_transform"],
                fig_dir / name,
                titles=(f"training {r['robust_train_id']}", f"synthetic {r['synthetic_id']}"),
                words=words,
            )
            row["image"] = f"{FIGURES_DIR}/{ROBUST_DIR}/{name}"
        rows.append(row)
    return rows


def _subject_rows(subjects: pd.DataFrame) -> tuple[list[dict[str, Any]], int]:
    df = subjects
    if "n_synthetic_matched" in df.columns:
        keep = df["n_synthetic_matched"].fillna(0) > 0
        if "leaked" in df.columns:
            keep |= df["leaked"].fillna(False).astype(bool)
        df = df[keep]
    rows = []
    for row in df.head(SUBJECT_ROWS).to_dict("records"):
        rows.append(
            {
                "subject": str(row.get("subject")),
                "n_items": row.get("n_items"),
                "n_synthetic_matched": row.get("n_synthetic_matched"),
                "n_flagged": row.get("n_flagged", ""),
                "max_correlation": f"{row['max_correlation']:.4f}"
                if _num(row.get("max_correlation")) is not None
                else "",
                "leaked": bool(row.get("leaked")),
            }
        )
    return rows, len(df)


def _provenance(s: dict[str, Any]) -> dict[str, Any]:
    opts = s.get("options") or {}
    options = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in opts.items()]
    versions = [
        ("memscan (scan)", str(s.get("memscan_version", "unknown"))),
        ("memscan (report)", _version("memscan")),
        ("numpy", _version("numpy")),
        ("torch", _version("torch")),
        ("python", platform.python_version()),
        ("matplotlib", _version("matplotlib")),
    ]
    scanned = s.get("versions")
    if isinstance(scanned, dict):
        versions += [(f"{k} (scan)", str(v)) for k, v in scanned.items() if k != "memscan"]
    inputs = [(k, str(s[k])) for k in ("train", "synthetic", "holdout") if s.get(k)]
    return {"command": s.get("command"), "options": options, "versions": versions, "inputs": inputs}


# ----------------------------------------------------------------------------------------------- writing


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["p"] = _fmt_p
    return env


def write_report(run: str | Path, *, max_gallery: int = 48, per_page: int = 12) -> Path:
    """Write ``RUN/report.html`` (and its gallery pages, figures and CSV exports) for a finished scan.

    Args:
        run: the run folder written by ``memscan scan``.
        max_gallery: matched pairs shown in the gallery at most.
        per_page: pairs per gallery page (page 1 is in ``report.html``).

    Returns:
        The path of ``report.html``.

    Raises:
        InputError: ``run`` is not a finished run folder.
    """
    run = Path(run)
    result = load_run(run)
    s = result.summary
    holdout, baseline = result.holdout, result.baseline  # checked by load_run: same run, readable
    notes: list[str] = []
    cal_note = (s.get("calibration") or {}).get("note")
    if cal_note:
        notes.insert(0, f"Calibration: {cal_note}")

    # CSV exports
    exports = [
        ("synthetic.csv", result.synthetic),
        ("matches.csv", result.matches),
        ("subjects.csv", result.subjects),
    ]
    if holdout is not None:
        exports.append(("holdout.csv", holdout))
    if baseline is not None:
        exports.append(("baseline.csv", baseline))
    for name, df in exports:
        _write_csv(df, run / name)

    tmp_fig = atomic.temporary_sibling(run / FIGURES_DIR)
    (tmp_fig / PAIRS_DIR).mkdir(parents=True)
    try:
        # histogram
        series = [
            figures.HistogramSeries(
                "synthetic",
                result.synthetic["max_correlation"].to_numpy(dtype=float),
                figures.SYNTHETIC_COLOUR,
                filled=True,
            )
        ]
        if holdout is not None:
            series.append(
                figures.HistogramSeries(
                    "held-out real (null)",
                    holdout["max_correlation"].to_numpy(dtype=float),
                    figures.HOLDOUT_COLOUR,
                )
            )
        if baseline is not None:
            if "nn_correlation_other_subject" in baseline:
                series.append(
                    figures.HistogramSeries(
                        "training vs training, other subjects",
                        baseline["nn_correlation_other_subject"].to_numpy(dtype=float),
                        figures.BASELINE_COLOUR,
                    )
                )
            if "nn_correlation_any" in baseline:
                series.append(
                    figures.HistogramSeries(
                        "training vs training, same subject allowed",
                        baseline["nn_correlation_any"].to_numpy(dtype=float),
                        figures.BASELINE_COLOUR,
                        dashed=True,
                    )
                )
        calibrated = s.get("threshold_source") == "holdout"
        figures.histogram_figure(
            series,
            _num(s.get("threshold")),
            tmp_fig / "histogram.png",
            threshold_label="threshold (calibrated)" if calibrated else "threshold (fixed)",
        )

        # gallery
        entries = _entries(select_gallery(result.synthetic, max(0, int(max_gallery))))
        wants_images = bool(entries) or "robust_train_id" in result.synthetic
        images = open_images(result) if wants_images else Images(None, None, None)
        channel_text = None
        if images.ok and entries:
            channel_text = _render_pairs(entries, images, s.get("options") or {}, tmp_fig / PAIRS_DIR)
        elif entries:
            for e in entries:
                e.note = "Images not available (see the note above)."
        robust_rows = _robust_rows(result, images, tmp_fig / ROBUST_DIR)
        atomic.swap_folder(tmp_fig, run / FIGURES_DIR)
    except BaseException:
        shutil.rmtree(tmp_fig, ignore_errors=True)
        raise

    pages = _paginate(entries, per_page)
    threshold_text, is_calibrated = _threshold_text(s)
    subject_rows, n_subject_rows = _subject_rows(result.subjects)
    opts = s.get("options") or {}
    context = {
        "run_name": run.resolve().name,
        "summary": s,
        "verdict": _verdict(s),
        "threshold_text": threshold_text,
        "calibrated": is_calibrated,
        "any_flagged": s.n_flagged > 0,
        "key_numbers": _key_numbers(result, holdout),
        "has_holdout": holdout is not None and len(holdout) > 0,
        "has_baseline": baseline is not None and len(baseline) > 0,
        "pages": pages,
        "n_entries": len(entries),
        "n_flagged_shown": sum(e.flagged for e in entries),
        "images_problem": images.problem,
        "images_warning": images.warning,
        "channel_text": channel_text,
        "mask": opts.get("mask", "none"),
        "subject_rows": subject_rows,
        "n_subject_rows": n_subject_rows,
        "exports": [name for name, _ in exports],
        "notes": notes,
        "provenance": _provenance(s),
        "max_gallery": max_gallery,
        "quality_rows": _quality_rows(result.quality),
        "robust_rows": robust_rows,
        "robust": s.get("robust"),
        "quality_encoder": _encoder_text(result.quality),
        "quality_has_holdout": bool(result.quality and result.quality.get("holdout_reference")),
    }
    env = _environment()
    for page in pages[1:]:
        html = env.get_template("gallery.html.j2").render(**context, page=page)
        atomic.write_text(run / f"gallery-{page.number}.html", html)
    for old in run.iterdir():
        m = _GALLERY_PAGE.match(old.name)
        if m and int(m.group(1)) > len(pages):
            old.unlink()
    html = env.get_template("report.html.j2").render(**context, page=pages[0])
    out = run / REPORT_FILE
    atomic.write_text(out, html)
    log.info("wrote %s (%d gallery page(s), %d pairs)", out, len(pages), len(entries))
    return out
