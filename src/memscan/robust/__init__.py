"""Robust matching: learned candidates, registered re-rank, calibration (``memscan scan --robust``)."""

from memscan.robust.calibrate import combined_pvalues, combined_verdict, robust_pvalues
from memscan.robust.pipeline import COLUMNS, RobustOptions, robust_scan
from memscan.robust.register import RegisterConfig, register_pairs

__all__ = [
    "COLUMNS",
    "RegisterConfig",
    "RobustOptions",
    "combined_pvalues",
    "combined_verdict",
    "register_pairs",
    "robust_pvalues",
    "robust_scan",
]
