"""The quality panel: every fidelity, diversity and copying metric of a synthetic set, into ``quality.json``.

For the synthetic set against the training set, and — as the reference that says what "good" means for
these data and this encoder — for held-out real items against the training set. Top-level keys (the
contract, docs/architecture.md): ``fd``, ``fd_relative``, ``kid``, ``precision``, ``recall``, ``density``,
``coverage``, ``alpha_precision``, ``beta_recall``, ``authenticity``, ``ct_statistic``, ``ct_p_value``,
``ms_ssim_synthetic``, ``ms_ssim_holdout`` and ``encoder`` (the encoder's description); beside them
``kid_std``, ``holdout_reference`` (the same metrics for held-out vs training), ``ct`` (cells and the cells
that copy most), ``ms_ssim`` (spread, pairs, settings), the item counts and the options. Every random
choice (subsamples, KID subsets, k-means, MS-SSIM pairs) comes from ``options.seed``: the same inputs give
the same file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memscan.core.atomic import write_json
from memscan.core.validate import check_int
from memscan.core.version import __version__
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.quality.alpha_precision import alpha_beta_authenticity
from memscan.quality.copying import MIN_SYNTHETIC_PER_CELL, data_copying_test
from memscan.quality.diversity import N_PAIRS, ms_ssim_settings, pairwise_ms_ssim, sample_pairs
from memscan.quality.encoders import Encoder, encode, intensity_scale
from memscan.quality.frechet import frechet_distance, relative_frechet_distance
from memscan.quality.kid import kernel_inception_distance
from memscan.quality.prdc import NEAREST_K, prdc

log = logging.getLogger(__name__)

QUALITY_FILE = "quality.json"
#: The contract's keys, in order (the run-folder contract, docs/architecture.md).
CONTRACT_KEYS = (
    "fd",
    "fd_relative",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "alpha_precision",
    "beta_recall",
    "authenticity",
    "ct_statistic",
    "ct_p_value",
    "ms_ssim_synthetic",
    "ms_ssim_holdout",
)
#: Items per set read and encoded at once.
READ_BLOCK = 256
#: MS-SSIM pairs whose items are read at once.
MS_SSIM_PAIRS_PER_READ = 64


@dataclass(frozen=True)
class QualityOptions:
    """Options of the quality panel.

    Attributes:
        k: neighbours of the k-NN radii (PRDC; Naeem et al. use 5).
        kid_subsets: KID subsets.
        kid_subset_size: items per KID subset (capped at the smaller set).
        ct_cells: k-means cells of C_T; ``None``: ``min(held-out, synthetic items) // 50`` within 1..50, so
            that a cell holds about 50 of each on average.
        ct_min_synthetic: cells with fewer synthetic items are left out of C_T (the paper's τ).
        ms_ssim_pairs: pairs per set for the MS-SSIM diversity.
        max_items: items per set used (a seeded subsample above it): the k-NN metrics cost N x M.
        seed: seed of every random choice.
    """

    k: int = NEAREST_K
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    ct_cells: int | None = None
    ct_min_synthetic: int = MIN_SYNTHETIC_PER_CELL
    ms_ssim_pairs: int = N_PAIRS
    max_items: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.k, "quality k", minimum=1)
        check_int(self.kid_subsets, "kid_subsets", minimum=1)
        check_int(self.kid_subset_size, "kid_subset_size", minimum=2)
        if self.ct_cells is not None:
            check_int(self.ct_cells, "ct_cells", minimum=1)
        check_int(self.ct_min_synthetic, "ct_min_synthetic", minimum=1)
        check_int(self.ms_ssim_pairs, "ms_ssim_pairs", minimum=1)
        check_int(self.max_items, "max_items", minimum=2)
        check_int(self.seed, "seed", minimum=0)

    def cells_for(self, n_holdout: int, n_synthetic: int) -> int:
        if self.ct_cells is not None:
            return self.ct_cells
        return int(min(50, max(1, min(n_holdout, n_synthetic) // 50)))


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: an undefined value is written as null."""
    return float(x) if x is not None and math.isfinite(x) else None


def feature_metrics(
    train: np.ndarray, other: np.ndarray, options: QualityOptions, *, seed_offset: int = 0
) -> dict[str, float]:
    """KID, PRDC, α-precision, β-recall and authenticity of ``other [M, D]`` against ``train [N, D]``."""
    out: dict[str, float] = {}
    out.update(
        kernel_inception_distance(
            train,
            other,
            subsets=options.kid_subsets,
            subset_size=options.kid_subset_size,
            seed=options.seed + seed_offset,
        )
    )
    out.update(prdc(train, other, k=options.k))
    out.update(alpha_beta_authenticity(train, other))
    return out


def panel_from_features(
    train: np.ndarray,
    holdout: np.ndarray | None,
    synthetic: np.ndarray,
    options: QualityOptions | None = None,
) -> dict[str, Any]:
    """Every feature-space metric, for ``synthetic`` and (as the reference) ``holdout`` against ``train``.

    Args:
        train: training features ``[N, D]``.
        holdout: held-out real features ``[H, D]`` (the reference, and C_T's test sample), or None: then
            ``fd_relative``, ``ct_statistic``, ``ct_p_value`` and ``holdout_reference`` are None (they
            need new real patients to compare with).
        synthetic: synthetic features ``[M, D]``.
        options: see :class:`QualityOptions`.

    Returns:
        The contract's feature-space keys (no MS-SSIM, no encoder) plus ``kid_std``, ``kid_subsets``,
        ``kid_subset_size``, ``holdout_reference`` and ``ct``.
    """
    opts = options or QualityOptions()
    sets = [("training", train), ("synthetic", synthetic)] + (
        [("held-out", holdout)] if holdout is not None else []
    )
    need = opts.k + 1  # each set's own k-th neighbour (PRDC's radii)
    for name, f in sets:
        if len(f) < need:
            raise InputError(f"the quality metrics need at least {need} {name} items, got {len(f)}")
    syn = feature_metrics(train, synthetic, opts)
    panel: dict[str, Any] = {
        "fd": frechet_distance(synthetic, train),
        "fd_relative": None,
        "kid": syn["kid"],
        **{k: syn[k] for k in ("precision", "recall", "density", "coverage")},
        **{k: syn[k] for k in ("alpha_precision", "beta_recall", "authenticity")},
        "ct_statistic": None,
        "ct_p_value": None,
        "kid_std": syn["kid_std"],
        "kid_subsets": syn["kid_subsets"],
        "kid_subset_size": syn["kid_subset_size"],
        "holdout_reference": None,
        "ct": None,
    }
    if holdout is None:
        return panel
    fd = relative_frechet_distance(synthetic, holdout, train)
    ref = feature_metrics(train, holdout, opts, seed_offset=1)
    ct = data_copying_test(
        train,
        holdout,
        synthetic,
        n_cells=opts.cells_for(len(holdout), len(synthetic)),
        min_synthetic=opts.ct_min_synthetic,
        seed=opts.seed,
    )
    panel["fd_relative"] = _finite(fd["fd_relative"])
    panel["ct_statistic"] = _finite(ct["ct_statistic"])
    panel["ct_p_value"] = _finite(ct["ct_p_value"])
    panel["holdout_reference"] = {
        "fd": fd["fd_holdout"],
        **{k: ref[k] for k in ("kid", "kid_std", "precision", "recall", "density", "coverage")},
        **{k: ref[k] for k in ("alpha_precision", "beta_recall", "authenticity")},
    }
    panel["ct"] = {k: v for k, v in ct.items() if k not in ("ct_statistic", "ct_p_value")}
    return panel


def _subsample(n: int, max_items: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_items:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_items, replace=False))


def _encode_dataset(
    ds: Dataset, positions: np.ndarray, encoder: Encoder, scale: tuple[float, float]
) -> np.ndarray:
    blocks = [
        encode(encoder, ds.take(positions[lo : lo + READ_BLOCK]), scale)
        for lo in range(0, len(positions), READ_BLOCK)
    ]
    return np.concatenate(blocks) if blocks else np.empty((0, 0))


def _ms_ssim(ds: Dataset, positions: np.ndarray, options: QualityOptions, scale: tuple[float, float]) -> dict:
    """Mean pairwise MS-SSIM over a seeded sample of pairs of the items at ``positions``."""
    pairs = sample_pairs(len(positions), options.ms_ssim_pairs, options.seed)
    if len(pairs) == 0:
        raise InputError(f"MS-SSIM diversity needs at least 2 items, got {len(positions)}", ds.path)
    values = np.empty(len(pairs))
    for lo in range(0, len(pairs), MS_SSIM_PAIRS_PER_READ):  # bounded memory: read the items of 64 pairs
        chunk = pairs[lo : lo + MS_SSIM_PAIRS_PER_READ]
        used = np.unique(chunk)  # the items these pairs touch, in order
        images = ds.take(positions[used])
        values[lo : lo + len(chunk)] = pairwise_ms_ssim(images, np.searchsorted(used, chunk), scale=scale)
    return {"mean": float(values.mean()), "std": float(values.std()), "n_pairs": int(len(pairs))}


def standardise_blocks(
    feats: dict[str, np.ndarray], blocks: list[tuple[str, int, bool]], reference: str = "train"
) -> dict[str, np.ndarray]:
    """Put the column blocks of combined features on one footing: on ``feats[reference]`` every block ends
    with total variance 1, so that neither block's units nor its width (64 embedding dimensions beside 12
    image statistics) decides the distances the metrics use.

    A block of incommensurable columns (``per_column`` True: the image statistics, in intensity, gradient
    and band-pass units) is z-scored column by column, as FRD z-scores its radiomic features; a learned
    embedding (False) is centred and divided by its total standard deviation as a whole, keeping its
    geometry (z-scoring its dimensions one by one magnified near-constant dimensions: on the ``cpu`` study's
    data it turned a fresh-patients ``fd_relative`` of 2.6 into 27). Constant columns are only centred.

    Args:
        feats: ``{set name: [N, D]}``, the same D for every set.
        blocks: ``[(name, width, per_column), ...]`` covering D in order (see
            :class:`~memscan.quality.descriptors.CombinedEncoder`).
        reference: the set the statistics come from.
    """
    ref = feats[reference]
    if sum(w for _, w, _ in blocks) != ref.shape[1]:
        raise ValueError(f"blocks cover {sum(w for _, w, _ in blocks)} columns, features have {ref.shape[1]}")
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    scale = np.empty(ref.shape[1])
    c = 0
    for _, width, per_column in blocks:
        part = sd[c : c + width]
        if per_column:
            scale[c : c + width] = 1.0 / (np.where(part > 0, part, 1.0) * np.sqrt(width))
        else:
            total = float(np.sqrt(np.sum(part**2)))
            scale[c : c + width] = 1.0 / total if total > 0 else 1.0
        c += width
    return {name: (f - mu) * scale for name, f in feats.items()}


def assess_quality(
    train: Dataset,
    holdout: Dataset | None,
    synthetic: Dataset,
    encoder: Encoder,
    options: QualityOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole panel for three datasets of the same item shape.

    Args:
        train: the training set (reference of every metric; its intensity range sets the [0, 1] map).
        holdout: real items of subjects never trained on, or None (then the metrics that need new
            patients, and ``ms_ssim_holdout``, are None).
        synthetic: the set assessed.
        encoder: feature extractor (:class:`~memscan.quality.encoders.Encoder`).
        options: see :class:`QualityOptions`.
        progress: called with a short stage name before each stage (for a progress display).

    Returns:
        The panel (see the module docstring), contract keys first.
    """
    opts = options or QualityOptions()
    say = progress or (lambda stage: log.info("quality: %s", stage))
    named = {"train": train, "synthetic": synthetic}
    if holdout is not None:
        named["holdout"] = holdout
    for name, ds in named.items():
        if ds.item_shape != train.item_shape:
            raise InputError(
                f"item shapes differ: TRAIN has {list(train.item_shape)}, {name.upper()} has "
                f"{list(ds.item_shape)}",
                ds.path,
            )
    rng = np.random.default_rng(opts.seed)
    pos = {name: _subsample(ds.n_items, opts.max_items, rng) for name, ds in named.items()}
    sample = train.take(pos["train"][:: max(1, len(pos["train"]) // 256)])
    scale = intensity_scale(sample, train.dtype)
    say("encoding")
    feats = {name: _encode_dataset(ds, pos[name], encoder, scale) for name, ds in named.items()}
    blocks = list(getattr(encoder, "blocks", None) or [])
    if blocks:
        feats = standardise_blocks(feats, blocks)
    say("feature metrics")
    panel = panel_from_features(feats["train"], feats.get("holdout"), feats["synthetic"], opts)
    say("MS-SSIM diversity")
    ms_syn = _ms_ssim(synthetic, pos["synthetic"], opts, scale)
    ms_hold = _ms_ssim(holdout, pos["holdout"], opts, scale) if holdout is not None else None
    out: dict[str, Any] = {k: panel[k] for k in CONTRACT_KEYS if k in panel}
    out["ms_ssim_synthetic"] = ms_syn["mean"]
    out["ms_ssim_holdout"] = ms_hold["mean"] if ms_hold is not None else None
    out["encoder"] = dict(encoder.description)
    for key in ("kid_std", "kid_subsets", "kid_subset_size", "holdout_reference", "ct"):
        out[key] = panel[key]
    settings = ms_ssim_settings(train.item_shape[1:])
    out["ms_ssim"] = {"synthetic": ms_syn, "holdout": ms_hold, "settings": {**settings, "data_range": 1.0}}
    out["intensity_scale"] = list(scale)
    out["n_items"] = {name: ds.n_items for name, ds in named.items()}
    out["n_used"] = {k: int(len(v)) for k, v in pos.items()}
    out["feature_dim"] = int(feats["train"].shape[1])
    out["feature_blocks"] = [
        {"name": n, "width": int(w), "per_column": bool(pc)} for n, w, pc in blocks
    ] or None
    out["options"] = asdict(opts)
    out["memscan_version"] = __version__
    return out


def write_quality(folder: str | Path, panel: dict[str, Any]) -> Path:
    """Write ``panel`` to ``folder/quality.json`` atomically (NaN and inf become null); returns the path."""
    return write_json(Path(folder) / QUALITY_FILE, _json_safe(panel))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
