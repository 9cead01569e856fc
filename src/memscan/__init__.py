"""memscan: find memorized copies of training images among synthetic medical images.

The command line is a thin layer over these functions::

    import memscan
    ds = memscan.prepare("BraTS2020/", "brats", layout="brats", test_subjects=56)
    result = memscan.scan("brats/train", "synthetic/", "run", top_k=5, flips=True)
    result.synthetic.sort_values("max_correlation")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memscan.core.version import __version__

__all__ = ["__version__", "open_dataset", "prepare", "scan"]

if TYPE_CHECKING:  # pragma: no cover
    from memscan.dataset.store import Dataset
    from memscan.scanning.scanner import ScanResult


def prepare(src: str | Path, out: str | Path, *, overwrite: bool = False, **options: Any) -> Dataset:
    """Prepare a folder of medical images into a dataset folder (see ``memscan.preprocess.prepare``).

    Keyword options are those of ``PrepareOptions`` (layout, recipe, size, test_subjects, ...).
    """
    from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

    return prepare_dataset(src, out, PrepareOptions(**options), overwrite=overwrite)


def scan(train: str | Path, synthetic: str | Path, out: str | Path, **options: Any) -> ScanResult:
    """Exact top-k correlation scan of ``synthetic`` against ``train`` into the run folder ``out``.

    Keyword options are those of ``ScanOptions`` (top_k, device, precision, flips, max_shift, mask, ...).
    """
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan as _scan

    subject_pattern = options.pop("subject_pattern", None)
    return _scan(train, synthetic, out, ScanOptions(**options), subject_pattern=subject_pattern)


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder (or ``DATASET/SPLIT``) for reading."""
    from memscan.dataset.store import Dataset

    return Dataset.open(path)
