"""``memscan scan --robust``: the robust stage's columns in the run, and the combined verdict of both tests.

The method is :mod:`memscan.robust` (a self-supervised encoder trained on the training set, candidates by
embedding, a registered re-rank, calibration on the held-out set; ``docs/robust.md``). This module wires it
into a scan:

- the encoder is trained once per training set and cached in the run folder (``RUN/.encoders``, kept from
  one scan into the same folder to the next); ``--quality`` without ``--encoder`` uses the same one;
- ``synthetic.parquet`` gains :data:`ROBUST_COLUMNS` (only with ``--robust``: without it every table stays
  byte-identical); an item the robust stage could not score has null ``robust_score`` and p-value;
- ``flagged`` is the combined verdict (:func:`memscan.robust.calibrate.combined_verdict`): per item
  ``p = min(1, 2 · min(p_pixel, p_robust))`` (Bonferroni over the two tests, valid under any dependence),
  then Benjamini–Hochberg at ``alpha`` (``calibration="quantile"``: ``p <= alpha``);
- an item is attributed to the training subject of the test that gives it the smaller p-value, so the
  subject roll-up counts robust matches too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memscan.dataset.store import Dataset
from memscan.errors import InputError

log = logging.getLogger(__name__)

#: The ``synthetic.parquet`` columns added by ``--robust`` (issue 18's contract).
ROBUST_COLUMNS = ("robust_score", "robust_train_id", "robust_subject", "robust_transform", "robust_p_value")


def with_encoder_settings(options: Any, steps: int | None, size: int | None) -> Any:
    """``options`` (``RobustOptions`` or None: the defaults) with the encoder's ``steps`` and ``input_size``
    replaced where given (``memscan scan --encoder-steps/--encoder-size``); unchanged when both are None.

    The encoder's cache key holds its whole config, so another setting trains (and caches) another encoder.
    """
    if steps is None and size is None:
        return options
    import dataclasses

    from memscan.robust.pipeline import RobustOptions

    base = options if options is not None else RobustOptions()
    changes = {k: v for k, v in (("steps", steps), ("input_size", size)) if v is not None}
    return dataclasses.replace(base, encoder=dataclasses.replace(base.encoder, **changes))


def trained_encoder(train: Dataset, cache_dir: Path, options: Any = None) -> Any:
    """The self-supervised encoder of ``train`` (trained, or loaded from ``cache_dir``; 2D items only), with
    ``options.encoder`` (``RobustOptions``) or the default configuration."""
    from memscan.embed import train_encoder

    return train_encoder(train, cache_dir, options.encoder if options is not None else None)


class EmbeddingEncoder:
    """The trained encoder as the quality panel's :class:`memscan.quality.encoders.Encoder`."""

    def __init__(self, trained: Any) -> None:
        self.trained = trained

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "memscan.embed (self-supervised, trained on the training set)",
            **self.trained.description,
        }

    def features(self, items: np.ndarray) -> np.ndarray:
        """``items [N, C, H, W]`` (any linear intensity scale: the encoder rescales per item) → ``[N, D]``."""
        from memscan.embed import embed

        return embed(self.trained, items)


def check_robust(train: Dataset, holdout: Dataset | None) -> None:
    """Refuse a robust scan that cannot run, before the search starts."""
    if holdout is None:
        raise InputError("robust needs held-out real images (HOLDOUT): they calibrate the robust score")
    if train.spatial_dims != 2:
        raise InputError("robust supports 2D items only; this training set holds 3D volumes", train.path)


def robust_columns(
    train: Dataset,
    synthetic: Dataset,
    holdout: Dataset,
    encoder: Any,
    cache_dir: Path,
    device: str,
    options: Any = None,
) -> pd.DataFrame:
    """The robust stage for the scan: :data:`ROBUST_COLUMNS` in synthetic order (``df.attrs``: the stage's
    record: encoder, null quantiles, seconds)."""
    import dataclasses

    from memscan.robust.pipeline import RobustOptions, robust_scan

    base = options if options is not None else RobustOptions()
    opts = dataclasses.replace(base, cache_dir=cache_dir, device=device)
    df = robust_scan(train, synthetic, holdout, options=opts, encoder=encoder)
    if list(df["synthetic_id"].astype(str)) != [str(i) for i in synthetic.ids]:
        raise RuntimeError("the robust stage returned its rows in another order than the synthetic set")
    score = df["robust_score"].to_numpy(dtype=np.float64)
    out = pd.DataFrame(
        {
            # -inf (no candidate registered with enough overlap, or a constant item) is "not scored": null
            "robust_score": pd.array(np.where(np.isfinite(score), score, np.nan), dtype="Float64"),
            "robust_train_id": df["robust_train_id"].astype("string"),
            "robust_subject": df["robust_subject"].astype("string"),
            "robust_transform": pd.array(
                np.where(df["robust_train_id"].notna(), df["robust_transform"].astype(str), None),
                dtype="string",
            ),
            "robust_p_value": pd.array(df["robust_p_value"].to_numpy(dtype=np.float64), dtype="Float64"),
        }
    )
    null = np.asarray(df.attrs.get("null_scores", []), dtype=np.float64)
    null = null[np.isfinite(null)]
    out.attrs["record"] = {
        "encoder": df.attrs.get("encoder"),
        "options": df.attrs.get("options"),
        "seconds": df.attrs.get("seconds"),
        "n_null": int(null.size),
        "null_quantiles": (
            {q: float(np.quantile(null, v)) for q, v in (("q50", 0.5), ("q95", 0.95), ("q99", 0.99))}
            | {"max": float(null.max())}
            if null.size
            else None
        ),
        "n_unscored": int(out["robust_score"].isna().sum()),
    }
    return out


def combined_flags(
    p_pixel: np.ndarray, p_robust: np.ndarray, calibration: str, alpha: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The combined verdict of the pixel and robust tests (see the module docstring).

    Args:
        p_pixel, p_robust: p-values ``[n]`` (NaN: that test could not score the item).
        calibration: ``fdr`` (Benjamini–Hochberg) or ``quantile`` (``p <= alpha``).
        alpha: the level.

    Returns:
        ``(p_combined [n], flagged [n] bool, record)``.
    """
    from memscan.robust.calibrate import combined_pvalues, combined_verdict

    if calibration == "fdr":
        p, flagged, p_star = combined_verdict(p_pixel, p_robust, alpha)
    else:
        p = combined_pvalues(p_pixel, p_robust)
        flagged = np.nan_to_num(p, nan=np.inf) <= alpha
        p_star = float(alpha)
    record = {
        "rule": "p = min(1, 2 * min(p_pixel, p_robust)), then "
        + ("Benjamini-Hochberg" if calibration == "fdr" else "p <= alpha"),
        "alpha": alpha,
        "p_threshold": float(p_star),
    }
    return p, np.asarray(flagged, dtype=bool), record


def attributed_nearest(
    train: Dataset, pixel_nearest: np.ndarray, p_pixel: np.ndarray, robust: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Per synthetic item, the training position it is attributed to: the robust match where the robust test
    gives the smaller p-value (or the only one), else the pixel match; and where the robust one was taken."""
    pos = pd.Index(pd.array(train.ids, dtype="string")).get_indexer(robust["robust_train_id"])
    p_r = robust["robust_p_value"].to_numpy(dtype=np.float64, na_value=np.nan)
    p_p = np.asarray(p_pixel, dtype=np.float64)
    use = (pos >= 0) & np.isfinite(p_r) & ~(np.nan_to_num(p_p, nan=np.inf) <= p_r)
    return np.where(use, pos, pixel_nearest), use


_TERMS = {
    "rot": re.compile(r"rot\(([-+0-9.]+)\)"),
    "scale": re.compile(r"scale\(([-+0-9.]+)\)"),
    "shift": re.compile(r"shift\(([-+0-9]+),([-+0-9]+)\)"),
    "gamma": re.compile(r"gamma\(([-+0-9.]+)\)"),
    "warp": re.compile(r"warp\(([-+0-9.]+)px\)"),
    "blur": re.compile(r"blur\(([-+0-9.]+)\)"),
}


def parse_robust_transform(label: str | None) -> tuple[float, float, tuple[int, int], float] | None:
    """``rot(a)+scale(s)+shift(dy,dx)[+gamma(g)]`` → ``(a, s, (dy, dx), g)``; None for no transform."""
    if label is None or not isinstance(label, str) or not _TERMS["rot"].search(label):
        return None
    angle = float(_TERMS["rot"].search(label).group(1))
    m = _TERMS["scale"].search(label)
    scale = float(m.group(1)) if m else 1.0
    m = _TERMS["shift"].search(label)
    shift = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    m = _TERMS["gamma"].search(label)
    return angle, scale, shift, float(m.group(1)) if m else 1.0


def transform_words(label: str | None) -> str:
    """``rot(-8.0)+scale(0.91)+shift(+2,-1)`` → "rotated 8.0° clockwise, shrunk to 0.91×, moved 2 px down
    and 1 px left" (the transform that turns the training image into the synthetic one)."""
    if label is None or (isinstance(label, float) and np.isnan(label)) or label in ("", "none"):
        return "no transform"
    words = []
    m = _TERMS["rot"].search(label)
    if m and abs(float(m.group(1))) >= 0.05:
        a = float(m.group(1))
        words.append(f"rotated {abs(a):.1f}° {'counter-clockwise' if a > 0 else 'clockwise'}")
    m = _TERMS["scale"].search(label)
    if m and abs(float(m.group(1)) - 1.0) >= 0.005:
        s = float(m.group(1))
        words.append(f"{'enlarged' if s > 1 else 'shrunk'} to {s:.2f}×")
    m = _TERMS["shift"].search(label)
    if m and (int(m.group(1)) or int(m.group(2))):
        dy, dx = int(m.group(1)), int(m.group(2))
        moves = []
        if dy:
            moves.append(f"{abs(dy)} px {'down' if dy > 0 else 'up'}")
        if dx:
            moves.append(f"{abs(dx)} px {'right' if dx > 0 else 'left'}")
        words.append("moved " + " and ".join(moves))
    m = _TERMS["gamma"].search(label)
    if m:
        words.append(f"intensities remapped (gamma {float(m.group(1)):.2f})")
    m = _TERMS["warp"].search(label)
    if m:
        words.append(f"locally warped (up to {float(m.group(1)):.1f} px)")
    m = _TERMS["blur"].search(label)
    if m:
        words.append(f"blurred (σ {float(m.group(1)):.1f} px)")
    return ", ".join(words) if words else "no transform (aligned as is)"
