"""``memscan scan --quality``: the fidelity and diversity panel of the scanned sets, inside the run folder.

The panel itself is :mod:`memscan.quality` (metrics, held-out reference); this module only chooses the
encoder for a scan and writes ``RUN/quality.json`` (:data:`memscan.scanning.runfolder.QUALITY_FILE`) into
the run's work folder, with the run id, so that it is swapped in with the tables and :func:`load_run`
refuses a ``quality.json`` of another run. It changes no table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.scanning.options import ScanOptions
from memscan.scanning.robust_stage import EmbeddingEncoder

log = logging.getLogger(__name__)


def quality_encoder(options: ScanOptions, trained: Any, device: str) -> Any:
    """The encoder of the quality panel: ``options.encoder`` (a TorchScript file), else the default.

    Args:
        options: the scan's options (``encoder``: a file, or None).
        trained: the self-supervised encoder trained on the training set (``memscan.embed``; shared with
            ``--robust``), used when ``options.encoder`` is None, beside fixed image statistics
            (:mod:`memscan.quality.descriptors`).
        device: resolved torch device.

    Returns:
        An object with ``features(items [N, C, *S]) -> [N, D]`` and a ``description`` dict
        (:class:`memscan.quality.encoders.Encoder`).

    Raises:
        InputError: the file is missing or not a network archive, or no encoder is available.
    """
    from memscan.quality.descriptors import CombinedEncoder, ImageStatistics
    from memscan.quality.encoders import TorchScriptEncoder

    if options.encoder is not None:
        return TorchScriptEncoder(options.encoder, device=device)
    if trained is None:
        raise InputError("the quality panel needs an encoder: give encoder=FILE (a TorchScript network)")
    # the embedding is trained to ignore noise, blur and contrast; the image statistics see them
    return CombinedEncoder(EmbeddingEncoder(trained), ImageStatistics())


def check_quality_sizes(train: Dataset, holdout: Dataset | None, synthetic: Dataset) -> None:
    """Refuse, before the search, a panel that cannot be computed: every set needs ``k + 1`` items (its own
    k-th neighbour for the PRDC radii)."""
    from memscan.quality.panel import QualityOptions

    need = QualityOptions().k + 1
    for name, ds in (("TRAIN", train), ("SYNTHETIC", synthetic), ("HOLDOUT", holdout)):
        if ds is not None and ds.n_items < need:
            raise InputError(
                f"quality needs at least {need} items in each set; {name} has {ds.n_items}", ds.path
            )


def write_run_quality(
    work: Path,
    run_id: str,
    train: Dataset,
    holdout: Dataset | None,
    synthetic: Dataset,
    encoder: Any,
) -> dict[str, Any]:
    """Compute the panel of ``synthetic`` (and ``holdout``) against ``train`` into ``work/quality.json``.

    Returns:
        The panel as written (``run_id`` added; undefined numbers are None).
    """
    from memscan.quality.panel import QualityOptions, assess_quality, write_quality

    log.info("quality: fidelity and diversity panel (%s)", encoder.description.get("kind", "encoder"))
    panel = assess_quality(train, holdout, synthetic, encoder, QualityOptions())
    panel["run_id"] = run_id
    path = write_quality(work, panel)
    return json.loads(Path(path).read_text(encoding="utf-8"))
