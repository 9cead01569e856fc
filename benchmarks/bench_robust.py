"""Planted benchmark of ``--robust``: perturbed copies that pixel correlation misses, on phantom subjects.

Data (all offline, :mod:`memscan.phantoms` brain volumes through ``prepare`` with the study recipe,
128² slices, 5 channels uint8): training subjects, held-out subjects (calibration), and a synthetic set
of slices of *fresh* subjects (novel: negatives) plus copies of training slices under each perturbation
kind at two strengths (positives). Perturbations are made here with ``scipy.ndimage`` (independent of
the encoder's own augmentations):

    rotation ±8°, ±15° | scale 0.9, 1.1 | crop 90 %, 85 % + resize | elastic warp 2, 4 px |
    gamma 0.7/1.4, 0.55/1.8 | blur + noise (σ 1, 2 %), (σ 1.5, 4 %) |
    rotation + contrast + noise (6°, ×0.8, 2 %), (10°, ×0.7, 4 %)

Measured: recall per kind and the false-positive rate (novel items flagged) at FDR 0.05 for the plain
pixel scan (``memscan scan --flips --max-shift 2`` with the held-out calibration) and the combined
verdict (:func:`memscan.robust.combined_verdict`); TPR at 5 % FPR (threshold = 95th percentile of the
novel items' score) for pixel correlation, embedding cosine alone, and the registered score; the cost:
encoder training, the robust stage, the plain scan.

    python benchmarks/bench_robust.py --quick          # a few minutes on 2 cores
    python benchmarks/bench_robust.py --medium         # 8 held-out people
    python benchmarks/bench_robust.py                  # the recorded configuration
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from memscan import phantoms
from memscan.core.progress import set_quiet
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.embed import EncoderConfig
from memscan.embed.train import encoder_key
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.robust import RegisterConfig, RobustOptions, combined_verdict, robust_scan
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import scan

KINDS = ("rotation", "scale", "crop", "elastic", "gamma", "blur_noise", "rot_contrast_noise")


def _affine(ch: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Rotate ``angle`` degrees and scale ``ch [H, W]`` about its centre (bilinear, zero fill)."""
    h, w = ch.shape
    a = np.deg2rad(angle)
    # output p -> input R(-a) p / scale (about the centre)
    m = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / scale
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    return ndimage.affine_transform(ch, m, offset=c - m @ c, order=1, mode="constant", cval=0.0)


def perturb(item: np.ndarray, kind: str, strength: int, rng: np.random.Generator) -> np.ndarray:
    """One perturbed copy of ``item [C, H, W]`` (uint8) → uint8, same shape."""
    x = item.astype(np.float64)
    c, h, w = x.shape
    sign = rng.choice([-1.0, 1.0])
    if kind == "rotation":
        x = np.stack([_affine(ch, sign * (8.0 if strength == 1 else 15.0), 1.0) for ch in x])
    elif kind == "scale":
        x = np.stack([_affine(ch, 0.0, 0.9 if strength == 1 else 1.1) for ch in x])
    elif kind == "crop":
        f = 0.90 if strength == 1 else 0.85
        ch_, cw = int(round(h * f)), int(round(w * f))
        y0 = int(rng.integers(0, h - ch_ + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        crop = x[:, y0 : y0 + ch_, x0 : x0 + cw]
        x = np.stack([ndimage.zoom(ch, (h / ch_, w / cw), order=1)[:h, :w] for ch in crop])
    elif kind == "elastic":
        amp = 2.0 if strength == 1 else 4.0
        coarse = rng.normal(0.0, 1.0, size=(2, 5, 5))
        field = np.stack([ndimage.zoom(f, (h / 5, w / 5), order=3) for f in coarse])
        field *= amp / np.abs(field).max()
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        coords = np.stack([yy + field[0], xx + field[1]])
        x = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="constant") for ch in x])
    elif kind == "gamma":
        g = (0.7 if sign < 0 else 1.4) if strength == 1 else (0.55 if sign < 0 else 1.8)
        x = 255.0 * (x / 255.0) ** g
    elif kind == "blur_noise":
        s, n = (1.0, 0.02) if strength == 1 else (1.5, 0.04)
        x = np.stack([ndimage.gaussian_filter(ch, s) for ch in x]) + rng.normal(0, n * 255.0, x.shape)
    elif kind == "rot_contrast_noise":
        a, k, n = (6.0, 0.8, 0.02) if strength == 1 else (10.0, 0.7, 0.04)
        x = np.stack([_affine(ch, sign * a, 1.0) for ch in x]) * k + rng.normal(0, n * 255.0, x.shape)
    else:
        raise ValueError(kind)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def build(root: Path, n_train: int, n_hold: int, n_fresh: int, per_group: int, n_novel: int, seed: int):
    """Phantom cohort → (train, holdout, synthetic) dataset views; truth in the synthetic manifest."""
    shape = (160, 160, 100)
    if not (root / "cohort").exists():
        phantoms.write_brats_tree(root / "raw", n_train + n_hold, seed=seed, shape=shape)
        phantoms.write_brats_tree(root / "raw_fresh", n_fresh, seed=seed + 1000, shape=shape)
        prepare_dataset(
            root / "raw",
            root / "cohort",
            PrepareOptions(layout="brats", size=128, test_subjects=n_hold, seed=seed),
        )
        prepare_dataset(root / "raw_fresh", root / "fresh", PrepareOptions(layout="brats", size=128))
    train, hold = Dataset.open(root / "cohort" / "train"), Dataset.open(root / "cohort" / "test")
    fresh = Dataset.open(root / "fresh")
    syn_path = root / f"synthetic-v2-{per_group}-{n_novel}"
    if not syn_path.exists():
        rng = np.random.default_rng(seed)
        items, rows = [], []
        for kind in KINDS:
            for strength in (1, 2):
                picks = np.sort(rng.choice(train.n_items, size=per_group, replace=False))
                for pos, item in zip(picks, train.take(picks), strict=True):
                    items.append(perturb(item, kind, strength, rng))
                    rows.append(
                        {
                            "kind": f"{kind}{strength}",
                            "truth_subject": str(train.subjects[pos]),
                            "truth_train_id": str(train.ids[pos]),
                        }
                    )
        for item in fresh.take(
            np.sort(rng.choice(fresh.n_items, size=min(n_novel, fresh.n_items), replace=False))
        ):
            items.append(item)
            rows.append({"kind": "novel", "truth_subject": None, "truth_train_id": None})
        order = rng.permutation(len(items))
        with DatasetWriter(
            syn_path,
            item_shape=train.item_shape,
            dtype="uint8",
            channels=train.channels,
            recipe={"name": "bench"},
        ) as w:
            for i, j in enumerate(order):
                w.add(items[j], {"id": f"syn_{i:05d}", "subject": "synthetic", **rows[j]})
            w.commit()
    return train, hold, Dataset.open(syn_path)


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.05) -> float:
    """Fraction of positives above the (1 - fpr) quantile of the negatives (higher = more copy-like)."""
    neg = np.nan_to_num(np.asarray(neg, dtype=np.float64), nan=-np.inf)
    pos = np.nan_to_num(np.asarray(pos, dtype=np.float64), nan=-np.inf)
    t = np.quantile(neg, 1.0 - fpr, method="higher")
    return float(np.mean(pos > t))


def compare_cost(train: Dataset, syn: Dataset, opts: RobustOptions, n: int = 32, repeats: int = 3) -> dict:
    """Registration seconds per item of the first ``n`` synthetic items: these options against the
    previous defaults (no polish, no blur, refine 3), alternated ``repeats`` times in one process so both
    see the same machine load; the minimum of each is kept."""
    from memscan.embed.train import train_encoder
    from memscan.robust.candidates import embed_dataset
    from memscan.robust.pipeline import score_queries

    enc = train_encoder(train, opts.cache_dir, opts.encoder)
    e_train, e_syn = embed_dataset(enc, train), embed_dataset(enc, syn)

    class _First:  # the first n items of syn, as score_queries reads them
        def __init__(self, ds: Dataset, n: int) -> None:
            self.ds, self.n_items = ds, min(n, ds.n_items)

        def iter_blocks(self, block: int):
            for start in range(0, self.n_items, block):
                yield start, self.ds.read(start, min(self.n_items, start + block))

    before = dataclasses.replace(
        opts, refine_k=3, register=dataclasses.replace(opts.register, polish_steps=0, blur_sigmas=())
    )
    q = _First(syn, n)
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(repeats):
        for name, o in (("before", before), ("now", opts)):
            r = score_queries(q, e_syn[: q.n_items], train, e_train, o, o.device, name)
            times[name].append(r.seconds / q.n_items)
    return {k: round(min(v), 4) for k, v in times.items()} | {"items": q.n_items, "repeats": repeats}


def stage_seconds(train: Dataset, syn: Dataset, opts: RobustOptions, n: int = 8, repeats: int = 2) -> dict:
    """Seconds per synthetic item of each registration stage (grid over top-K, polish, refine of
    ``refine_k``) for the first ``n`` items, minimum over ``repeats``."""
    import torch

    from memscan.embed.train import scale_items, train_encoder
    from memscan.robust.candidates import cosine_topk, embed_dataset
    from memscan.robust.register import coarse_search, polish, refine

    enc = train_encoder(train, opts.cache_dir, opts.encoder)
    found = cosine_topk(embed_dataset(enc, syn)[:n], embed_dataset(enc, train), opts.top_k)
    k = found.indices.shape[1]
    q = scale_items(syn.read(0, n)).repeat_interleave(k, 0)
    t = scale_items(train.take(found.indices.ravel()))
    cfg = opts.register
    best: dict[str, float] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, a, sc, sh = coarse_search(q, t, cfg)
        t1 = time.perf_counter()
        g = None
        if cfg.polish_steps:
            _, a, sc, sh, g = polish(q, t, a, sc, sh, cfg)
        t2 = time.perf_counter()
        pick = (
            torch.arange(len(q)).view(n, k)[:, : opts.refine_k].ravel()
        )  # the cost is the same for any pick
        refine(q[pick], t[pick], a[pick], sc[pick], sh[pick], cfg, gamma=None if g is None else g[pick])
        t3 = time.perf_counter()
        for name, v in (("grid", t1 - t0), ("polish", t2 - t1), ("refine", t3 - t2)):
            best[name] = min(best.get(name, float("inf")), v / n)
    return {k_: round(v, 4) for k_, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/memscan-bench-robust"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--medium", action="store_true", help="more held-out people than --quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", type=json.loads, default={}, help="EncoderConfig overrides, JSON")
    ap.add_argument("--register", type=json.loads, default={}, help="RegisterConfig overrides, JSON")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--refine-k", type=int, default=2)
    ap.add_argument(
        "--compare-cost", action="store_true", help="only time the registration: these options vs before"
    )
    args = ap.parse_args()
    set_quiet(True)
    if args.quick:
        n_train, n_hold, n_fresh, per_group, n_novel = 6, 4, 3, 5, 40
    elif args.medium:
        n_train, n_hold, n_fresh, per_group, n_novel = 8, 8, 4, 5, 60
    else:
        n_train, n_hold, n_fresh, per_group, n_novel = 16, 8, 6, 20, 200
    root = args.root / ("quick" if args.quick else "medium" if args.medium else "full")
    root.mkdir(parents=True, exist_ok=True)
    train, hold, syn = build(root, n_train, n_hold, n_fresh, per_group, n_novel, args.seed)
    man = syn.manifest
    print(
        f"train {train.n_items} slices ({n_train} subjects), held-out {hold.n_items} ({n_hold}), "
        f"synthetic {syn.n_items} ({int((man['kind'] != 'novel').sum())} copies, "
        f"{int((man['kind'] == 'novel').sum())} novel)"
    )

    if args.compare_cost:
        opts = RobustOptions(
            cache_dir=root / "cache",
            device=args.device,
            top_k=args.top_k,
            refine_k=args.refine_k,
            encoder=EncoderConfig(**args.encoder),
            register=RegisterConfig(**args.register),
        )
        print("registration seconds per item (min of alternated runs):", compare_cost(train, syn, opts))
        print("seconds per item by stage:", stage_seconds(train, syn, opts))
        return

    run = root / "run-plain"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    res = scan(
        train.path,
        syn.path,
        run,
        ScanOptions(top_k=5, flips=True, max_shift=2, device=args.device),
        holdout=hold.path,
        report=False,
    )
    t_plain = time.perf_counter() - t0
    plain = res.synthetic.set_index("synthetic_id").loc[man["id"]]

    opts = RobustOptions(
        cache_dir=root / "cache",
        device=args.device,
        top_k=args.top_k,
        refine_k=args.refine_k,
        encoder=EncoderConfig(**args.encoder),
        register=RegisterConfig(**args.register),
    )
    cached = (root / "cache" / f"encoder-{encoder_key(train, opts.encoder)}" / "model.safetensors").is_file()
    t0 = time.perf_counter()
    rob = robust_scan(train, syn, hold, options=opts).set_index("synthetic_id").loc[man["id"]]
    t_rob = time.perf_counter() - t0
    secs = rob.attrs.get("seconds", {})
    rob.assign(kind=man["kind"].to_numpy(), truth_train_id=man["truth_train_id"].to_numpy()).to_parquet(
        root / "robust.parquet"
    )

    p_comb, flagged, _ = combined_verdict(plain["p_value"].to_numpy(), rob["robust_p_value"].to_numpy(), 0.05)
    kinds = man["kind"].to_numpy()
    novel = kinds == "novel"
    rows = []
    for kind in sorted(set(kinds) - {"novel"}, key=lambda k: (KINDS.index(k[:-1]), k)):
        m = kinds == kind
        rows.append(
            {
                "kind": kind,
                "n": int(m.sum()),
                "plain recall": float(plain["flagged"].to_numpy()[m].mean()),
                "robust recall": float(flagged[m].mean()),
                "robust source found": float(
                    (rob["robust_train_id"].to_numpy()[m] == man["truth_train_id"].to_numpy()[m]).mean()
                ),
                "robust subject correct": float(
                    (rob["robust_subject"].to_numpy()[m] == man["truth_subject"].to_numpy()[m]).mean()
                ),
                "median registered r": float(np.median(rob["robust_score"].to_numpy()[m])),
            }
        )
    table = pd.DataFrame(rows)
    pos = ~novel
    summary = {
        "plain FPR (novel flagged)": float(plain["flagged"].to_numpy()[novel].mean()),
        "robust FPR (novel flagged)": float(flagged[novel].mean()),
        "plain recall (all copies)": float(plain["flagged"].to_numpy()[pos].mean()),
        "robust recall (all copies)": float(flagged[pos].mean()),
        "TPR@5%FPR pixel correlation": tpr_at_fpr(
            plain["max_correlation"].to_numpy()[pos], plain["max_correlation"].to_numpy()[novel]
        ),
        "TPR@5%FPR embedding cosine": tpr_at_fpr(
            rob["robust_embedding_cosine"].to_numpy()[pos], rob["robust_embedding_cosine"].to_numpy()[novel]
        ),
        "TPR@5%FPR registered score": tpr_at_fpr(
            rob["robust_score"].to_numpy()[pos], rob["robust_score"].to_numpy()[novel]
        ),
        "novel median registered r": float(np.median(rob["robust_score"].to_numpy()[novel])),
        "held-out null max / q95": [
            float(np.max(rob.attrs["null_scores"])),
            float(np.quantile(rob.attrs["null_scores"], 0.95)),
        ],
        "plain scan seconds": round(t_plain, 2),
        "robust stage seconds": round(t_rob, 2),
        "encoder seconds": secs.get("encoder"),
        "encoder was cached": cached,
        "robust stage without encoder / plain": round((t_rob - (secs.get("encoder") or 0)) / t_plain, 2),
        "synthetic registration / plain (null cached)": round(
            (secs.get("register_synthetic") or 0) / t_plain, 2
        ),
        "registration seconds per item (synthetic, held-out)": [
            round((secs.get("register_synthetic") or 0) / max(1, syn.n_items), 3),
            round((secs.get("register_holdout") or 0) / max(1, hold.n_items), 3),
        ],
        "seconds by step": secs,
    }
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for k, v in summary.items():
        print(f"- {k}: {v}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.system()}, "
        f"python {sys.version.split()[0]}"
    )
    if args.json:
        args.json.write_text(json.dumps({"table": rows, "summary": summary}, indent=2, default=str))


if __name__ == "__main__":
    main()
