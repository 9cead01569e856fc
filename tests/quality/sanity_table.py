"""Print the quality panel's sanity table on phantoms (the numbers quoted in docs/quality.md).

Run: ``PYTHONPATH=src python tests/quality/sanity_table.py``. Phantom brain T1 slices (64 x 64, 12 per
subject): training subjects 0-19, held-out 20-29, fresh 30-39. Candidates: fresh real slices, exact copies
of training slices, half copies + half fresh, uniform noise. Two stand-in encoders (test fixtures, not the
product's): the fixed random-weight conv net of the tests, and pixel-space PCA (32 components fitted on the
training slices).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality_helpers import RandomConvEncoder, phantom_slices  # noqa: E402

from memscan.quality.diversity import mean_pairwise_ms_ssim  # noqa: E402
from memscan.quality.encoders import encode  # noqa: E402
from memscan.quality.panel import CONTRACT_KEYS, QualityOptions, panel_from_features  # noqa: E402


class PixelPCA:
    """Test stand-in: the first 32 principal components of the training slices' pixels."""

    def __init__(self, train: np.ndarray, d: int = 32) -> None:
        x = train.reshape(len(train), -1).astype(np.float64)
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[:d].T
        self.description = {"kind": "test-pixel-pca", "output_dim": d}

    def features(self, items: np.ndarray) -> np.ndarray:
        return (items.reshape(len(items), -1) - self.mean) @ self.basis


def main() -> None:
    t0 = time.time()
    train, hold, fresh = (
        phantom_slices(range(0, 20)),
        phantom_slices(range(20, 30)),
        phantom_slices(range(30, 40)),
    )
    rng = np.random.default_rng(0)
    copies = train[rng.choice(len(train), len(hold), replace=False)]
    half = np.concatenate([copies[: len(hold) // 2], fresh[len(hold) // 2 :]])
    noise = rng.random(hold.shape).astype(np.float32)
    sets = {"fresh": fresh, "copies": copies, "half copies": half, "noise": noise, "held-out (ref)": hold}
    opts = QualityOptions(kid_subset_size=100, ct_min_synthetic=10)
    keys = [k for k in CONTRACT_KEYS if k not in ("fd", "ms_ssim_synthetic", "ms_ssim_holdout")]
    print(f"train {len(train)}, held-out {len(hold)}, each candidate {len(fresh)} slices; {opts}")
    for enc in (RandomConvEncoder(), PixelPCA(train)):
        f = {k: encode(enc, v, (0.0, 1.0)) for k, v in {"train": train, "holdout": hold, **sets}.items()}
        print(f"\nencoder: {enc.description['kind']}")
        print("| candidate | " + " | ".join(keys) + " | ms_ssim |")
        print("|---" * (len(keys) + 2) + "|")
        for name, items in sets.items():
            p = panel_from_features(f["train"], f["holdout"], f[name], opts)
            ms = mean_pairwise_ms_ssim(items, n_pairs=100)["mean"]
            cells = [f"{p[k]:.3g}" if p[k] is not None else "–" for k in keys]
            print(f"| {name} | " + " | ".join(cells) + f" | {ms:.3f} |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
