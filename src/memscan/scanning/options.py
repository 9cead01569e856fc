"""Frozen, validated option sets; each is saved as JSON beside the results it produced."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from memscan.core.devices import check_device
from memscan.core.validate import check_choice, check_float, check_int
from memscan.errors import InputError
from memscan.search.limits import PRECISIONS as ENGINE_PRECISIONS

#: Smallest memory_budget: ~150 MiB of library working memory (Zarr chunk decompression, int8
#: buffers, thread pools) come on top of the blocks, so smaller budgets could not be honoured
#: (benchmarks/bench_memory.py).
MIN_MEMORY_BUDGET = 256 * 2**20
#: The engine's screen precisions, plus ``exact`` (= ``float64``, the plain path for comparison).
PRECISIONS = (*ENGINE_PRECISIONS, "exact")
CALIBRATIONS = ("fdr", "quantile")
#: Smallest encoder_size: ``memscan.embed.EncoderConfig``'s own bound (kept here so that reading the options
#: does not load torch; a test keeps them equal).
MIN_ENCODER_SIZE = 16
#: Largest max_shift accepted before the items are seen (the items' size limits it further).
MAX_SHIFT = 64
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
        orientations: compare all eight axis-aligned orientations of each synthetic item (square 2D items):
            identity, ``flip``, ``flipud``, ``rot90``, ``rot180``, ``rot270``, ``transpose``,
            ``antitranspose`` (includes ``flips``).
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
        quality: also compute the fidelity and diversity panel (``memscan.quality``) into
            ``RUN/quality.json``; changes no table.
        robust: also run the robust stage (``memscan.robust``: a learned screen and a registered re-rank,
            calibrated on the held-out set): catches rotated, rescaled, cropped and warped copies; adds the
            ``robust_*`` columns and makes ``flagged`` the combined verdict of both tests. Needs a held-out
            set; 2D items only.
        encoder: with ``quality``: a TorchScript (or ``torch.export``) file whose features the panel uses;
            ``None``: the self-supervised encoder trained on the training set (``memscan.embed``).
        encoder_steps: optimiser steps of that self-supervised encoder (shared by ``quality`` without
            ``encoder`` and by ``robust``); ``None``: ``memscan.embed.EncoderConfig``'s default (300).
        encoder_size: its input size in pixels (items are resized to it; at least 16); ``None``: the
            default (48). Data smaller than 48 px gain nothing from being upsampled: their own size halves
            the training cost.
    """

    top_k: int = 5
    device: str = "auto"
    precision: str = "auto"
    flips: bool = False
    orientations: bool = False
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
    quality: bool = False
    encoder: str | None = None
    robust: bool = False
    encoder_steps: int | None = None
    encoder_size: int | None = None

    def __post_init__(self) -> None:
        """Validate every option; messages name the parameter (``top_k must be >= 1``)."""
        check_int(self.top_k, "top_k", minimum=1)
        check_device(self.device, "device")
        check_choice(self.precision, PRECISIONS, "precision")
        check_int(self.max_shift, "max_shift", minimum=0, maximum=MAX_SHIFT)
        check_float(self.threshold, "threshold", low=-1.0, high=1.0)
        check_int(self.memory_budget, "memory_budget")
        if self.memory_budget < MIN_MEMORY_BUDGET:
            raise InputError(
                "memory_budget must be at least 256MiB (the scan's libraries hold ~150 MiB of working "
                f"memory whatever the blocks), got {self.memory_budget / 2**20:.0f}MiB"
            )
        check_choice(self.calibration, CALIBRATIONS, "calibration")
        check_float(self.alpha, "alpha", low=0.0, high=1.0, open_low=True)
        if self.alpha >= 1.0:
            raise InputError(f"alpha must be < 1; got {self.alpha}")
        check_int(self.baseline_items, "baseline_items", minimum=0)
        if self.fail_on_leaked_subjects is not None:
            check_int(self.fail_on_leaked_subjects, "fail_on_leaked_subjects", minimum=1)
        for name in ("query_block", "train_block", "shift_candidates"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, name, minimum=1)
        if self.fail_above is not None:
            check_float(self.fail_above, "fail_above", low=0.0, high=1.0)
        if self.workers is not None and self.scheduler is not None:
            raise InputError("give either workers or scheduler, not both")
        if self.workers is not None:
            check_int(self.workers, "workers", minimum=1)
        if self.scheduler is not None and not self.scheduler.strip():
            raise InputError("scheduler needs an address like tcp://HOST:8786")
        if self.encoder is not None and not self.quality:
            raise InputError("encoder is used by the quality panel only, and quality is off")
        for name, minimum in (("encoder_steps", 1), ("encoder_size", MIN_ENCODER_SIZE)):
            if getattr(self, name) is None:
                continue
            check_int(getattr(self, name), name, minimum=minimum)
            if not self.trains_encoder:
                raise InputError(
                    f"{name} sets the training of the self-supervised encoder, which only robust and "
                    "quality (without encoder) use; neither is on"
                )

    @property
    def trains_encoder(self) -> bool:
        """Whether the scan trains the self-supervised encoder (``memscan.embed``) on the training set."""
        return self.robust or (self.quality and self.encoder is None)

    @property
    def engine_precision(self) -> str:
        """The engine's name for the precision (``exact`` is the float64 path)."""
        return "float64" if self.precision == "exact" else self.precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
