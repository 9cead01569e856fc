"""Image statistics beside the learned embedding: what an encoder trained to ignore noise, blur and contrast
cannot see.

The self-supervised encoder (``memscan.embed``) is trained to be invariant to exactly the degradations a
fidelity measure must notice: with it alone, uniform noise lands inside the real images' k-NN manifold
(precision 0.84–0.97 on the ``cpu`` study's data, ``docs/quality.md``). The default features of the panel
are therefore the embedding **and** a fixed vector of image statistics per channel — the first-order and
texture families of radiomics, which the radiomics Fréchet distance (FRD; Konz et al. 2025, "FRD: the
Fréchet Radiomic Distance") uses for the same reason: no downloaded weights, and sensitive to noise,
blur and intensity changes. Written here as a dozen torch operations; pyradiomics would add SimpleITK and a
mask per image for the same handful of statistics.

Per channel of an item mapped to about [0, 1] (the panel's linear map from the training set, so intensity
shifts count): the 5th, 25th, 50th, 75th and 95th percentiles, mean and standard deviation; mean and
standard deviation of the gradient magnitude (forward differences); the RMS of the band-pass residual
``x - G_σ * x`` at σ = 1, 2 and 4 pixels (fine texture, noise and blur). 12 values per channel.

:class:`CombinedEncoder` concatenates two encoders' features and names the column blocks; the panel then
standardises the blocks on the training set (each to the same total variance)
(:func:`memscan.quality.panel.standardise_blocks`), so that neither block's units decide the distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memscan.embed.augment import gaussian_blur
from memscan.errors import InputError

#: Percentiles of each channel's intensities.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Scales (pixels) of the band-pass residuals.
BAND_SIGMAS = (1.0, 2.0, 4.0)
#: Items per batch (bounded temporaries).
_BATCH = 256


class ImageStatistics:
    """Fixed per-channel image statistics (module doc) as an :class:`~memscan.quality.encoders.Encoder`."""

    #: its columns are in different units: the panel z-scores them one by one
    per_column = True

    description: dict[str, Any] = {
        "kind": "image statistics",
        "per_channel": [f"q{int(q * 100)}" for q in QUANTILES]
        + ["mean", "std", "grad_mean", "grad_std"]
        + [f"band_rms_{s:g}px" for s in BAND_SIGMAS],
    }

    def features(self, items: np.ndarray) -> np.ndarray:
        """Items ``[N, C, H, W]`` (float, about [0, 1]) → float64 ``[N, 12 C]``."""
        out = [self._batch(items[lo : lo + _BATCH]) for lo in range(0, len(items), _BATCH)]
        n_feat = len(self.description["per_channel"]) * (items.shape[1] if items.ndim > 1 else 1)
        return np.concatenate(out) if out else np.zeros((0, n_feat))

    @staticmethod
    def _batch(items: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
        if x.ndim != 4:
            raise InputError(f"image statistics take 2D items [N, C, H, W], got shape {tuple(x.shape)}")
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        q = torch.quantile(flat, torch.tensor(QUANTILES), dim=2).permute(1, 2, 0)  # [N, C, 5]
        gx = x[..., :-1, 1:] - x[..., :-1, :-1]
        gy = x[..., 1:, :-1] - x[..., :-1, :-1]
        grad = torch.sqrt(gx * gx + gy * gy).reshape(n, c, -1)
        bands = []
        for s in BAND_SIGMAS:
            r = x - gaussian_blur(x, torch.full((n,), s))
            bands.append(torch.sqrt((r * r).reshape(n, c, -1).mean(dim=2)))
        stats = [flat.mean(dim=2), flat.std(dim=2), grad.mean(dim=2), grad.std(dim=2), *bands]
        f = torch.cat([q, torch.stack(stats, dim=2)], dim=2)  # [N, C, 12]
        return f.reshape(n, -1).double().numpy()


class CombinedEncoder:
    """Two encoders' features side by side, with the column blocks named for the panel's standardisation.

    Attributes:
        parts: the encoders, in column order.
        blocks: filled by :meth:`features`: ``[(name, width, per_column), ...]``; ``per_column``: the part's
            own ``per_column`` attribute (False for a learned embedding: standardised as a whole).
    """

    def __init__(self, *parts: Any) -> None:
        self.parts = parts
        self.blocks: list[tuple[str, int, bool]] = []

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "combined (each column standardised on the training set; blocks weighted equally)",
            "parts": [dict(p.description) for p in self.parts],
        }

    def features(self, items: np.ndarray) -> np.ndarray:
        """Items ``[N, C, *S]`` → the parts' features concatenated, float64 ``[N, ΣD]``."""
        feats = [np.asarray(p.features(items), dtype=np.float64) for p in self.parts]
        self.blocks = [
            (
                str(p.description.get("kind", type(p).__name__)),
                f.shape[1],
                bool(getattr(p, "per_column", False)),
            )
            for p, f in zip(self.parts, feats, strict=True)
        ]
        return np.concatenate(feats, axis=1)
