"""Release gates: the conditions under which a run must not be released (the CLI exits with code 3).

A gate is *evaluated*, not raised: the run is written whole first, and the result carries the message
(``ScanResult.gate_failed``), so a caller decides what a failed gate means (the CLI: exit code 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def check_gates(
    summary: Mapping[str, Any],
    *,
    fail_above: float | None,
    fail_on_leaked_subjects: int | None,
    run: Path | str,
) -> str | None:
    """The first failed gate's message, or None when every gate passes (or none is set).

    Args:
        summary: the run's summary (``flagged_fraction``, ``subjects_leaked``, ``n_unscored``).
        fail_above: fail when the flagged fraction exceeds it.
        fail_on_leaked_subjects: fail when at least this many training subjects leaked.
        run: the run folder, named in the message.

    Rule: with a gate set, synthetic items that could not be scored fail it too — nobody can certify
    that they are not copies.
    """
    gated = fail_above is not None or fail_on_leaked_subjects is not None
    if fail_above is not None and summary["flagged_fraction"] > fail_above:
        return (
            f"release gate failed: {summary['flagged_fraction']:.2%} of synthetic items flagged "
            f"(> fail_above {fail_above:.2%}); results are in {run}"
        )
    if fail_on_leaked_subjects is not None and summary["subjects_leaked"] >= fail_on_leaked_subjects:
        return (
            f"release gate failed: {summary['subjects_leaked']} training subjects leaked "
            f"(>= fail_on_leaked_subjects {fail_on_leaked_subjects}); results are in {run}"
        )
    n_unscored = int(summary.get("n_unscored") or 0)
    if gated and n_unscored:
        return (
            f"release gate failed: {n_unscored} synthetic item(s) could not be scored (constant or "
            f"non-finite images), so they cannot be certified as not copies; see the column"
            f" 'unscored' in {run}"
        )
    return None
