"""memscan: find memorized copies of training images among synthetic medical images.

The command line is a thin layer over these functions (``memscan.api``, imported on first use so that
``import memscan`` stays light)::

    import memscan
    memscan.prepare("BraTS2020/", "brats", layout="brats", test_subjects=56)
    result = memscan.scan("brats/train", "synthetic/", "run", holdout="brats/test", flips=True)
    result.synthetic.sort_values("max_correlation")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memscan.core.version import __version__

__all__ = [
    "__version__",
    "filter",
    "load_model",
    "load_run",
    "open_dataset",
    "prepare",
    "run_study",
    "sample",
    "scan",
    "train",
    "write_report",
]

if TYPE_CHECKING:  # pragma: no cover
    from memscan.api import (
        filter,
        load_model,
        load_run,
        open_dataset,
        prepare,
        run_study,
        sample,
        scan,
        train,
        write_report,
    )


def __getattr__(name: str) -> Any:
    """Lazy re-exports of :mod:`memscan.api` (PEP 562)."""
    if name in __all__ and name != "__version__":
        from memscan import api

        return getattr(api, name)
    raise AttributeError(f"module 'memscan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
