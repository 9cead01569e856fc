"""The quality panel with the default (self-supervised) encoder on the ``cpu`` study preset's data: do fresh
patients, copies and noise separate, and how do the encoder's steps, input size and seed change that?

Data: a study folder written by ``memscan study cpu`` (any run that got past its subsets): training =
``DIR/subsets/s4`` (the 4-subject subset, 32x32 FLAIR slices); its held-out split ``DIR/data/test`` is cut
by subject into a held-out reference (the first half of the subjects) and *fresh* real patients (the rest).
Candidate sets, each as large as the fresh set: ``fresh``, ``copies`` (training slices drawn without
replacement) and ``noise`` (uniform 8-bit noise). For each encoder setting the encoder is trained on the
training set (``memscan.embed``, as ``memscan scan --quality`` does) and the panel of each candidate is
computed against the training set with the held-out reference (``panel_from_features``; 20 KID subsets).

    python benchmarks/bench_quality_encoder.py STUDY_DIR --size 32 --steps 300 --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from memscan.dataset.store import Dataset
from memscan.embed import EncoderConfig, embed, train_encoder
from memscan.embed.augment import AugmentConfig
from memscan.quality.panel import QualityOptions, panel_from_features


def candidate_sets(study: Path) -> tuple[Dataset, np.ndarray, dict[str, np.ndarray]]:
    """The training set, the held-out reference items and the candidate sets (see the module docstring)."""
    train = Dataset.open(study / "subsets" / "s4")
    test = Dataset.open(study / "data" / "test")
    subj = np.asarray(test.manifest["subject"].astype(str))
    names = sorted(set(subj))
    half = len(names) // 2
    holdout = test.take(np.flatnonzero(np.isin(subj, names[:half])))
    fresh = test.take(np.flatnonzero(np.isin(subj, names[half:])))
    x = train.read(0, train.n_items)
    copies = x[np.random.default_rng(0).choice(len(x), size=len(fresh), replace=False)]
    noise = np.random.default_rng(1).integers(0, 256, fresh.shape).astype(x.dtype)
    return train, holdout, {"fresh": fresh, "copies": copies, "noise": noise}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a folder written by `memscan study cpu`")
    ap.add_argument("--size", type=int, nargs="+", default=[32], help="encoder input sizes")
    ap.add_argument("--steps", type=int, nargs="+", default=[300], help="encoder training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="encoder seeds")
    ap.add_argument(
        "--invariances",
        nargs="+",
        default=["all"],
        choices=["all", "no-degradations"],
        help="all: the encoder's default augmentations (robust matching's: noise and blur included); "
        "no-degradations: without noise and blur (the quality panel's encoder)",
    )
    args = ap.parse_args()
    train, holdout, sets = candidate_sets(args.study)
    x = train.read(0, train.n_items)
    header = (
        "input px",
        "steps",
        "seed",
        "train s",
        "set",
        "fd_relative",
        "precision",
        "recall",
        "authenticity",
    )
    print("| invariances | " + " | ".join((*header, "C_T")) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for inv, size, steps, seed in itertools.product(args.invariances, args.size, args.steps, args.seeds):
            aug = AugmentConfig() if inv == "all" else AugmentConfig(p_noise=0.0, p_blur=0.0)
            cfg = EncoderConfig(input_size=size, steps=steps, seed=seed, augment=aug)
            t0 = time.perf_counter()
            enc = train_encoder(train, cache, cfg)
            seconds = time.perf_counter() - t0
            ft, fh = embed(enc, x), embed(enc, holdout)
            for name, items in sets.items():
                p = panel_from_features(ft, fh, embed(enc, items), QualityOptions(kid_subsets=20))
                print(
                    f"| {inv} | {size} | {steps} | {seed} | {seconds:.0f} | {name} | {p['fd_relative']:.2f} "
                    f"| {p['precision']:.2f} | {p['recall']:.2f} | {p['authenticity']:.2f} "
                    f"| {p['ct_statistic']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
