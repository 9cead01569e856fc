"""Frozen, validated option sets; each is saved as JSON beside the results it produced."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from memscan.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
#: Smallest --memory-budget: ~150 MiB of library working memory (Zarr chunk decompression, int8
#: buffers, thread pools) come on top of the blocks, so smaller budgets could not be honoured
#: (benchmarks/bench_memory.py).
MIN_MEMORY_BUDGET = 256 * 2**20
PRECISIONS = ("auto", "int8", "bf16", "fp16", "tf32", "float32", "float64", "exact")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_bytes(text: str | int) -> int:
    """``"4GiB"`` → 4294967296; ``"512MB"`` → 512000000; a plain number is bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read {text!r} as a size; expected e.g. 4GiB, 512MiB, 2GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class ScanOptions:
    """Options of ``memscan scan`` (see the README for each).

    Attributes:
        top_k: matches kept per synthetic item.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: screen precision (results are exact whatever it is): ``auto`` takes the exact integer
            path for 8-bit data and a bf16 screen + float64 re-rank otherwise; ``exact`` (= ``float64``) is
            the plain float64 path, for comparison.
        flips: also compare each synthetic item mirrored left-right.
        max_shift: translation tolerance in pixels, evaluated on the re-rank candidates.
        resize: resample SYNTHETIC (and HOLDOUT) to TRAIN's spatial size when they differ.
        mask: ``none``, ``foreground`` (derived from the training set) or a path to a mask file.
        channel: compare one channel only (by name), else all channels.
        threshold: fixed correlation threshold used for flags without a held-out set.
        memory_budget: bytes of RAM the scan may use above what its process holds after imports (blocks
            of training and query items, scores, library working memory); at least 256 MiB.
        fail_above: release gate: exit code 3 when the flagged fraction exceeds it.
        fail_on_leaked_subjects: release gate: exit code 3 when at least this many training subjects leak.
        calibration: with a held-out set: ``fdr`` (Benjamini–Hochberg at ``alpha``) or ``quantile``
            (flag p <= alpha).
        alpha: the FDR level (or per-image level for ``quantile``).
        baseline_items: training items sampled for the train-vs-train baselines (0: none).
        shift_candidates: candidates per item re-ranked under shifts.
        query_block: items per query block (default: from the memory budget); never changes results.
        train_block: items per training block (default: from the memory budget); never changes results.
        workers: run the search on a local Dask cluster of this many worker processes; never changes results.
        scheduler: run the search on an existing Dask cluster (``tcp://HOST:8786``); never changes results.
    """

    top_k: int = 5
    device: str = "auto"
    precision: str = "auto"
    flips: bool = False
    max_shift: int = 0
    resize: bool = False
    mask: str = "none"
    channel: str | None = None
    threshold: float = 0.95
    memory_budget: int = 4 * 2**30
    fail_above: float | None = None
    fail_on_leaked_subjects: int | None = None
    calibration: str = "fdr"
    alpha: float = 0.05
    baseline_items: int = 500
    shift_candidates: int = 20
    query_block: int | None = None
    train_block: int | None = None
    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise InputError(f"--top-k must be >= 1, got {self.top_k}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_shift < 0 or self.max_shift > 64:
            raise InputError(f"--max-shift must be between 0 and 64 pixels, got {self.max_shift}")
        if not -1.0 <= self.threshold <= 1.0:
            raise InputError(f"--threshold must be a correlation in [-1, 1], got {self.threshold}")
        if self.memory_budget < MIN_MEMORY_BUDGET:
            raise InputError(
                "--memory-budget must be at least 256MiB (the scan's libraries hold ~150 MiB of working "
                f"memory whatever the blocks), got {self.memory_budget / 2**20:.0f}MiB"
            )
        if self.calibration not in ("fdr", "quantile"):
            raise InputError(f"--calibration must be fdr or quantile, got {self.calibration!r}")
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"--fdr must be in (0, 1), got {self.alpha}")
        if self.baseline_items < 0:
            raise InputError(f"--baseline-items must be >= 0, got {self.baseline_items}")
        if self.fail_on_leaked_subjects is not None and self.fail_on_leaked_subjects < 1:
            raise InputError(f"--fail-on-leaked-subjects must be >= 1, got {self.fail_on_leaked_subjects}")
        for name in ("query_block", "train_block", "shift_candidates"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        if self.fail_above is not None and not 0.0 <= self.fail_above <= 1.0:
            raise InputError(f"--fail-above must be a fraction in [0, 1], got {self.fail_above}")
        if self.workers is not None and self.scheduler is not None:
            raise InputError("give either --workers or --scheduler, not both")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.scheduler is not None and not self.scheduler.strip():
            raise InputError("--scheduler needs an address like tcp://HOST:8786")

    @property
    def engine_precision(self) -> str:
        """The engine's name for the precision (``exact`` is the float64 path)."""
        return "float64" if self.precision == "exact" else self.precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
