"""Candidates by embedding: the top-K training items per query by cosine similarity of embeddings.

The search is the project's exact engine (:func:`memscan.search.engine.search_topk`), which ranks by
Pearson correlation. Cosine similarity is a Pearson correlation of augmented vectors: for ``x ∈ R^D``
let ``x' = [x, -x]``; its mean is 0 and ``‖x'‖ = √2 ‖x‖``, so

    corr(x', y') = x'·y' / (‖x'‖ ‖y'‖) = 2 x·y / (2 ‖x‖ ‖y‖) = cos(x, y)

exactly; the engine's float64 re-rank makes the top-K and its order exact for the embeddings given.

Shapes: embeddings ``[N, D]`` float32 → indices/values ``[N, K]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from memscan.dataset.store import Dataset
from memscan.embed.train import TrainedEncoder, embed
from memscan.search.engine import SearchResult, search_topk


def cosine_vectors(e: np.ndarray) -> np.ndarray:
    """``[N, D]`` → ``[N, 2D]`` ``[e, -e]``: Pearson correlation of the result = cosine of ``e``."""
    e = np.asarray(e, dtype=np.float32)
    return np.concatenate([e, -e], axis=1)


def embed_dataset(encoder: TrainedEncoder, ds: Dataset, *, block: int = 512) -> np.ndarray:
    """Embeddings of every item of ``ds`` (``[N, D]`` float32, L2-normalised), read block by block."""
    out = np.empty((ds.n_items, encoder.dim), dtype=np.float32)
    for start, items in ds.iter_blocks(block):
        out[start : start + len(items)] = embed(encoder, items)
    return out


def cosine_topk(
    queries: np.ndarray, train: np.ndarray, k: int, *, device: str = "cpu", block: int = 65536
) -> SearchResult:
    """Exact top-``k`` training embeddings by cosine for every query embedding.

    Args:
        queries: ``[nq, D]``; train: ``[nt, D]`` (need not be normalised).
        k: neighbours per query (capped at ``nt``).
        device: the engine's device.

    Returns:
        :class:`~memscan.search.engine.SearchResult` (``values`` = cosines, ``indices`` into ``train``).
    """
    t = cosine_vectors(train)

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, len(t), block):
            yield s, t[s : s + block]

    return search_topk(
        cosine_vectors(queries), blocks, min(int(k), len(t)), precision="float32", device=device
    )
