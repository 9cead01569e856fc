"""``robust_scan``: learned candidates + registered re-rank + held-out calibration, one table.

Steps (issue 18): (1) train or load the encoder of the training set (:mod:`memscan.embed`); (2) embed
the training, synthetic and held-out items; (3) per query, the top ``top_k`` training items by cosine
(:mod:`memscan.robust.candidates`, the exact engine); (4) register every candidate pair on a coarse
grid and polish them briefly, refine the best ``refine_k`` pairs per query with the local optimiser
(:mod:`memscan.robust.register`); the best registered correlation is the robust score; (5) the
held-out items go through steps 3-4 identically: their scores are the null (cached beside the encoder,
see :func:`_null_scores`); robust p-values (:mod:`memscan.robust.calibrate`).

Shapes: datasets of 2D items ``[C, H, W]`` with the same item shape.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from memscan.core.atomic import write_with
from memscan.core.devices import check_device, resolve_device
from memscan.core.fingerprint import fingerprint
from memscan.core.progress import progress
from memscan.core.validate import check_int
from memscan.dataset.store import Dataset
from memscan.embed.train import EncoderConfig, TrainedEncoder, dataset_identity, scale_items, train_encoder
from memscan.errors import InputError
from memscan.robust.calibrate import robust_pvalues
from memscan.robust.candidates import cosine_topk, embed_dataset
from memscan.robust.register import RegisterConfig, coarse_search, polish, refine, transform_label

logger = logging.getLogger(__name__)

#: Columns of :func:`robust_scan`'s table (the ``synthetic.parquet`` contract's robust columns first).
COLUMNS = (
    "synthetic_id",
    "robust_score",
    "robust_train_id",
    "robust_subject",
    "robust_transform",
    "robust_p_value",
    "robust_embedding_cosine",
    "robust_overlap",
)


@dataclass(frozen=True)
class RobustOptions:
    """Options of the robust stage.

    Attributes:
        cache_dir: where trained encoders are cached (one sub-folder per training set and config).
        top_k: candidates per query from the embedding search.
        refine_k: of those, how many (best after the grid and its short polish) get the local optimiser.
        query_block: queries registered per batch (changes results by float32 rounding at most: each
            pair's search is independent of its batch).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the registration (the embedding search is
            small and runs on the CPU; the encoder trains on the CPU).
        encoder: how the encoder is trained; register: the registration search.
    """

    cache_dir: str | Path = ".memscan-cache"
    top_k: int = 10
    refine_k: int = 2
    query_block: int = 32
    device: str = "cpu"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)

    def __post_init__(self) -> None:
        check_int(self.top_k, "top_k", minimum=1)
        check_int(self.refine_k, "refine_k", minimum=1)
        if self.refine_k > self.top_k:
            raise InputError(f"refine_k ({self.refine_k}) must be <= top_k ({self.top_k})")
        check_int(self.query_block, "query_block", minimum=1)
        check_device(self.device, "device")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache_dir"] = str(self.cache_dir)
        return d


@dataclass
class QueryResult:
    """Robust results of one query set (arrays ``[n]``; ``train_index`` -1 where nothing registered)."""

    score: np.ndarray
    train_index: np.ndarray
    transform: np.ndarray
    cosine: np.ndarray
    overlap: np.ndarray
    seconds: float


def _register_block(
    q_items: np.ndarray,
    cand: np.ndarray,
    train: Dataset,
    opts: RobustOptions,
    device: str,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Register ``q_items [b, C, H, W]`` against their candidates ``cand [b, K]`` (train positions)."""
    b, k = cand.shape
    valid = cand >= 0
    uniq = np.unique(cand[valid])
    t_items = scale_items(train.take(uniq)).to(device)
    q = scale_items(q_items).to(device)
    pos = np.searchsorted(uniq, np.where(valid, cand, uniq[0] if uniq.size else 0))
    qi = torch.arange(b, device=device).repeat_interleave(k)
    ti = torch.as_tensor(pos.ravel(), device=device)
    cfg = opts.register
    coarse, angle, scale, shift = coarse_search(q[qi], t_items[ti], cfg)
    gamma = None
    if cfg.polish_steps:
        coarse, angle, scale, shift, gamma = polish(q[qi], t_items[ti], angle, scale, shift, cfg)
    coarse = coarse.view(b, k).cpu()
    coarse[torch.from_numpy(~valid)] = -np.inf
    r = min(opts.refine_k, k)
    # best refine_k by (polished) coarse score; ties to the better embedding rank (stable sort)
    order = torch.from_numpy(np.argsort(-coarse.numpy(), axis=1, kind="stable")[:, :r].copy())
    flat = (torch.arange(b)[:, None] * k + order).ravel()
    fd = flat.to(device)
    reg = refine(
        q[qi[fd]],
        t_items[ti[fd]],
        angle[fd],
        scale[fd],
        shift[fd],
        cfg,
        gamma=None if gamma is None else gamma[fd],
    )
    score = reg.score.reshape(b, r)
    score[~np.take_along_axis(valid, order.numpy(), axis=1)] = -np.inf
    best = np.argmax(score, axis=1)  # first maximum: ties to the better coarse rank
    rows = np.arange(b)
    best_score = score[rows, best]
    best_flat = (rows * r + best).astype(np.int64)
    best_train = cand[rows, order.numpy()[rows, best]]
    best_train = np.where(np.isfinite(best_score), best_train, -1)
    labels = [
        transform_label(reg.angle[f], reg.scale[f], reg.shift[f], reg.gamma[f], reg.warp[f], reg.blur[f])
        if np.isfinite(s)
        else "none"
        for f, s in zip(best_flat, best_score, strict=True)
    ]
    return best_score, best_train, labels, reg.overlap[best_flat]


def score_queries(
    queries: Dataset,
    query_emb: np.ndarray,
    train: Dataset,
    train_emb: np.ndarray,
    opts: RobustOptions,
    device: str,
    what: str,
) -> QueryResult:
    """Candidates and registration for every item of ``queries`` (robust score per item)."""
    t0 = time.perf_counter()
    n = queries.n_items
    found = cosine_topk(query_emb, train_emb, opts.top_k, device="cpu")
    score = np.full(n, -np.inf)
    tidx = np.full(n, -1, dtype=np.int64)
    overlap = np.zeros(n)
    labels = np.full(n, "none", dtype=object)
    with progress(n, f"robust {what}") as advance:
        for start, items in queries.iter_blocks(opts.query_block):
            sl = slice(start, start + len(items))
            s, t, lab, ov = _register_block(items, found.indices[sl], train, opts, device)
            score[sl], tidx[sl], labels[sl], overlap[sl] = s, t, lab, ov
            advance(len(items))
    return QueryResult(score, tidx, labels, found.values[:, 0].copy(), overlap, time.perf_counter() - t0)


NULL_COLUMNS = ("score", "train_index", "transform", "cosine", "overlap")


def _null_scores(
    enc: TrainedEncoder,
    holdout: Dataset,
    train: Dataset,
    e_train: np.ndarray,
    opts: RobustOptions,
    device: str,
) -> QueryResult:
    """The held-out items' robust results, cached beside the encoder.

    The null is a fixed cost per (training set, held-out set): scans of several synthetic sets against
    the same data reuse it. The cache key covers the encoder (whose key covers the training set), the
    held-out set's identity, ``top_k``, ``refine_k`` and the registration config; ``query_block`` and the
    device are left out (they change nothing beyond float32 rounding).
    """
    key = fingerprint(
        "memscan-robust-null-v1",
        enc.description.get("key"),
        dataset_identity(holdout),
        opts.top_k,
        opts.refine_k,
        opts.register.to_dict(),
    )
    path = enc.path / f"null-{key}.parquet" if enc.path is not None else None
    if path is not None and path.is_file():
        df = pd.read_parquet(path)
        if len(df) == holdout.n_items:
            return QueryResult(
                df["score"].to_numpy(),
                df["train_index"].to_numpy(),
                df["transform"].to_numpy(dtype=object),
                df["cosine"].to_numpy(),
                df["overlap"].to_numpy(),
                0.0,
            )
    e_hold = embed_dataset(enc, holdout)
    res = score_queries(holdout, e_hold, train, e_train, opts, device, "held-out")
    if path is not None:
        table = pd.DataFrame({c: getattr(res, c) for c in NULL_COLUMNS})
        table["transform"] = table["transform"].astype(str)
        write_with(path, lambda tmp: table.to_parquet(tmp, index=False))
    return res


def _check(train: Dataset, other: Dataset, name: str) -> None:
    if other.item_shape != train.item_shape:
        raise InputError(
            f"{name} items {list(other.item_shape)} differ from training items {list(train.item_shape)}; "
            "the robust scan needs one item shape",
            other.path,
        )


def robust_scan(
    train_ds: Dataset,
    synthetic_ds: Dataset,
    holdout_ds: Dataset,
    *,
    options: RobustOptions | None = None,
    encoder: TrainedEncoder | None = None,
) -> pd.DataFrame:
    """The robust stage of ``memscan scan --robust``: one row per synthetic item.

    Args:
        train_ds, synthetic_ds, holdout_ds: dataset views of 2D items of one shape. The held-out set is
            required: it calibrates the robust score.
        options: see :class:`RobustOptions`.
        encoder: an already trained encoder (else trained or loaded from ``options.cache_dir``).

    Returns:
        DataFrame with :data:`COLUMNS` in synthetic order. Where no candidate registered with enough
        overlap (or the item is constant) the item is *unscored*: ``robust_score`` ``-inf``,
        ``robust_train_id`` null, transform ``none`` and ``robust_p_value`` NaN (never a p-value that
        would call it "not a copy"; the combined verdict then rests on the pixel test).
        ``df.attrs`` holds ``null_scores`` (held-out robust scores), ``encoder`` (its description),
        ``options`` and ``seconds`` per stage.
    """
    opts = options or RobustOptions()
    for ds, name in ((synthetic_ds, "SYNTHETIC"), (holdout_ds, "HOLDOUT")):
        _check(train_ds, ds, name)
    if train_ds.spatial_dims != 2:
        raise InputError("--robust supports 2D items only", train_ds.path)
    if holdout_ds.n_items == 0:
        raise InputError("the robust scan needs held-out items to calibrate its score", holdout_ds.path)
    device = resolve_device(opts.device, "device")
    t0 = time.perf_counter()
    enc = encoder or train_encoder(train_ds, opts.cache_dir, opts.encoder)
    t1 = time.perf_counter()
    e_train = embed_dataset(enc, train_ds)
    e_syn = embed_dataset(enc, synthetic_ds)
    t2 = time.perf_counter()
    syn = score_queries(synthetic_ds, e_syn, train_ds, e_train, opts, device, "synthetic")
    hold = _null_scores(enc, holdout_ds, train_ds, e_train, opts, device)
    p = robust_pvalues(hold.score, syn.score)
    ids = train_ds.ids
    subjects = train_ds.subjects
    has = syn.train_index >= 0
    df = pd.DataFrame(
        {
            "synthetic_id": synthetic_ds.ids.astype(str),
            "robust_score": syn.score,
            "robust_train_id": pd.array(
                np.where(has, ids[np.maximum(syn.train_index, 0)], None), dtype="string"
            ),
            "robust_subject": pd.array(
                np.where(has, subjects[np.maximum(syn.train_index, 0)], None), dtype="string"
            ),
            "robust_transform": syn.transform.astype(str),
            "robust_p_value": p,
            "robust_embedding_cosine": syn.cosine,
            "robust_overlap": syn.overlap,
        },
        columns=list(COLUMNS),
    )
    df.attrs.update(
        null_scores=hold.score.tolist(),
        null_embedding_cosine=hold.cosine.tolist(),
        encoder=enc.description,
        options=opts.to_dict(),
        seconds={
            "encoder": round(t1 - t0, 3),
            "embed": round(t2 - t1, 3),
            "register_synthetic": round(syn.seconds, 3),
            "register_holdout": round(hold.seconds, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    )
    return df
