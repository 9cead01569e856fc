"""The study's grid: one cell per (model, training-set size), each run as train → sample → scan stages.

Folders under the study folder ``DIR``::

    DIR/cells/{model}-s{N}/model/     trained model          (memscan train)
    DIR/cells/{model}-s{N}/samples/   synthetic images       (memscan sample)
    DIR/cells/{model}-s{N}/run/       scan against the subset and the holdout (memscan report works here)
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memscan.core.fingerprint import file_digest, fingerprint
from memscan.errors import InputError
from memscan.study.config import ModelConfig, StudyConfig, scan_options
from memscan.study.stages import Runner, Stage

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One (model, training-set size) cell of the grid."""

    model: ModelConfig
    size_label: str
    n_subjects: int
    subset: Path
    folder: Path

    @property
    def key(self) -> str:
        return f"{self.model.label}-s{self.size_label}"


def subset_sizes(config: StudyConfig, n_subjects: int, where: Path) -> dict[int, str]:
    """``{subjects: label}`` of the configured sizes (``"all"`` → every training subject), each once.

    Raises:
        InputError: a size larger than the training split's ``n_subjects`` (``where`` is named).
    """
    resolved: dict[int, str] = {}
    for s in config.sizes:
        n = n_subjects if s == "all" else int(s)
        if n > n_subjects:
            raise InputError(
                f"sizes: {n} training subjects asked, but the training split has {n_subjects}", where
            )
        if n in resolved:
            log.warning("sizes %s and %s are both %d subjects; computed once", resolved[n], s, n)
            continue
        resolved[n] = str(n)
    return resolved


def scan_command(train: Path, samples: Path, run: Path, holdout: Path, config: StudyConfig) -> str:
    """The ``memscan scan`` command line equivalent to a cell's scan (recorded in its summary)."""
    sc = config.scan
    flags = [f"memscan scan {train} {samples} --out {run} --holdout {holdout}"]
    if sc.quality:
        flags.append("--quality")
        if sc.encoder:
            flags.append(f"--encoder {sc.encoder}")
        if sc.encoder_steps is not None:
            flags.append(f"--encoder-steps {sc.encoder_steps}")
        if sc.encoder_size is not None:
            flags.append(f"--encoder-size {sc.encoder_size}")
    return " ".join(flags)


def run_cell(
    runner: Runner,
    cell: Cell,
    subset: Stage,
    config: StudyConfig,
    holdout_path: Path,
    prep_hash: str,
    device: str,
) -> None:
    """Train, sample and scan one cell (each a stage, skipped when up to date).

    The model functions are looked up on their modules at call time (tests replace them).
    """
    from memscan.models import sample as sample_mod
    from memscan.models import train as train_mod
    from memscan.report.html import write_report
    from memscan.scanning.scanner import scan

    m = cell.model
    train_st = Stage(
        f"train {cell.key}",
        cell.folder / "model",
        fingerprint(
            subset.hash, m.family, m.preset, m.steps, m.batch, config.seed, *([m.config] if m.config else [])
        ),
    )

    def do_train(interrupted: bool) -> dict[str, Any]:
        resume = interrupted and (train_st.path / "config.json").is_file()
        if not resume:
            shutil.rmtree(train_st.path, ignore_errors=True)
        train_st.path.parent.mkdir(parents=True, exist_ok=True)
        train_st.mark(False)  # a marker of the same hash: an interrupted training resumes from checkpoints
        t0 = time.perf_counter()
        steps = m.steps
        train_mod.train_model(
            subset.path,
            train_st.path,
            m.family,
            config=m.config or None,
            preset=m.preset,
            steps=steps,
            batch=m.batch,
            device=device,
            resume=resume,
            seed=config.seed,
            checkpoint_every=1000 if (steps or 0) >= 2000 else 0,
            sample_every=0,
        )
        logged = train_mod.read_log(train_st.path)
        elapsed = logged[-1].get("elapsed_s") if logged else None
        return {"train_seconds": float(elapsed if elapsed is not None else time.perf_counter() - t0)}

    runner.run(train_st, do_train)
    sample_st = Stage(
        f"sample {cell.key}",
        cell.folder / "samples",
        fingerprint(train_st.hash, config.samples, m.sampler, m.sampling_steps, config.seed),
    )
    runner.run(
        sample_st,
        lambda _: sample_mod.sample_model(
            train_st.path,
            config.samples,
            sample_st.path,
            seed=config.seed + 1,
            batch=m.sample_batch,
            sampler=m.sampler,
            sampling_steps=m.sampling_steps,
            device=device,
            overwrite=True,
        ),
    )
    scan_st = Stage(
        f"scan {cell.key}",
        cell.folder / "run",
        # the [scan] table (quality and its encoder settings included) and the encoder file's content
        fingerprint(
            sample_st.hash,
            subset.hash,
            prep_hash,
            asdict(config.scan),
            file_digest(config.scan.encoder) if config.scan.encoder else None,
        ),
    )
    opts = scan_options(config.scan, device)

    def do_scan(_: bool) -> dict[str, Any]:
        scan(
            subset.path,
            sample_st.path,
            scan_st.path,
            opts,
            holdout=holdout_path,
            command=scan_command(subset.path, sample_st.path, scan_st.path, holdout_path, config),
        )
        write_report(scan_st.path)
        return {}

    runner.run(scan_st, do_scan)
