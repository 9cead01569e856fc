"""``memscan study``: the study's comparison (DDPM vs StyleGAN2, small vs large training sets) end to end.

The study is described by a TOML file or a shipped preset (:mod:`memscan.study.config`); this module runs
it, in stages (:mod:`memscan.study.stages`) that are skipped when up to date::

    DIR/raw/                      phantom tree (phantom studies only)          (memscan.study.subsets)
    DIR/data/                     the prepared dataset, split train / test (test = the shared holdout)
    DIR/subsets/s{N}/             the first N training subjects (a seeded, nested order of subjects)
    DIR/cells/{model}-s{N}/       model/, samples/, run/ of each cell          (memscan.study.grid)
    DIR/results.csv, results.md   the table                                    (memscan.study.table)
    DIR/report.html, figures/     the page                                     (memscan.study.report)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from memscan.core.atomic import write_json
from memscan.core.devices import check_device
from memscan.core.fingerprint import fingerprint
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.models.registry import check_config
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.study.config import HOLDOUT_SPLIT, TRAIN_SPLIT, StudyConfig, load_config, preset_names
from memscan.study.grid import Cell, run_cell, subset_sizes
from memscan.study.stages import Runner, Stage
from memscan.study.subsets import subject_order, write_phantoms, write_subset
from memscan.study.table import markdown_table, result_columns, results_table, write_results

__all__ = [
    "StudyResult",
    "load_config",
    "markdown_table",
    "preset_names",
    "result_columns",
    "run_study",
]

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What :func:`run_study` did and wrote.

    Attributes:
        out: the study folder.
        table: the results table (one row per model and size).
        ran: names of the stages computed in this call.
        skipped: names of the stages found up to date.
    """

    out: Path
    table: pd.DataFrame
    ran: list[str]
    skipped: list[str]


def _check_models(cfg: StudyConfig) -> None:
    for m in cfg.models:
        check_config(m.family, m.config, m.preset)


def run_study(
    config: StudyConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    report: bool = True,
) -> StudyResult:
    """Run (or continue) a study into ``out``; stages already done with the same settings are skipped.

    Args:
        config: the study (see :func:`load_config`).
        out: the study folder.
        resume: continue in a folder that already holds (part of) a study; stale stages are recomputed.
        device: ``auto``, ``cpu`` or ``cuda``, for training, sampling and scanning.
        report: write ``report.html`` and its figures.

    Returns:
        The results table and which stages ran.

    Raises:
        InputError: bad config or data, or ``out`` not empty without ``resume`` (exit 2).
    """
    out = Path(out)
    check_device(device)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError("is not empty; pass --resume to continue the study in it", out)
    if not out.parent.exists():
        raise InputError("parent folder does not exist", out.parent)
    _check_models(config)
    data = config.data
    if data.source is not None and not data.source.exists():
        raise InputError("[data] source does not exist", data.source)
    out.mkdir(exist_ok=True)
    write_json(out / "study.json", config.to_dict(), indent=2)
    runner = Runner()

    # 1. raw data (phantoms) and the prepared, split dataset
    if data.phantom is not None:
        raw = Stage(
            "phantoms", out / "raw", fingerprint("phantom", asdict(data.phantom), data.layout, data.seed)
        )
        runner.run(raw, lambda _: write_phantoms(data, raw.path, data.seed))
        source, source_hash = raw.path, raw.hash
    else:
        assert data.source is not None
        source, source_hash = data.source, fingerprint("source", str(data.source.resolve()))
    prep = Stage(
        "prepare",
        out / "data",
        fingerprint(
            source_hash,
            data.layout,
            data.recipe,
            data.size,
            data.modalities,
            data.holdout_subjects,
            data.seed,
        ),
    )
    opts = PrepareOptions(
        layout=data.layout,
        recipe=data.recipe,
        size=data.size,
        test_subjects=data.holdout_subjects if data.layout == "brats" else None,
        seed=data.seed,
        modalities=data.modalities,
    )
    runner.run(prep, lambda _: prepare_dataset(source, prep.path, opts, overwrite=True))
    full = Dataset.open(prep.path)
    splits = set(full.manifest["split"].dropna().astype(str))
    for split in (TRAIN_SPLIT, HOLDOUT_SPLIT):
        if split not in splits:
            raise InputError(
                f"the prepared dataset has no {split!r} split "
                f"(splits: {', '.join(sorted(splits)) or 'none'}); "
                "set [data] holdout_subjects (brats) or use a tree with train/ and test/ folders",
                prep.path,
            )
    train_path, holdout_path = prep.path / TRAIN_SPLIT, prep.path / HOLDOUT_SPLIT
    train_ds = Dataset.open(train_path)
    order = subject_order(list(train_ds.manifest["subject"].astype(str)), data.seed)

    # 2. nested subsets of whole training subjects
    resolved = subset_sizes(config, len(order), prep.path)
    subsets: dict[int, Stage] = {}
    for n in sorted(resolved):
        st = Stage(f"subset s{n}", out / "subsets" / f"s{n}", fingerprint(prep.hash, order[:n]))
        runner.run(st, lambda _, st=st, n=n: write_subset(train_path, st.path, order[:n], st.hash))
        subsets[n] = st

    # 3. the grid: train -> sample -> scan, per model and size
    cells: list[Cell] = []
    for m in config.models:
        for n in sorted(resolved):
            cell = Cell(m, resolved[n], n, subsets[n].path, out / "cells" / f"{m.label}-s{n}")
            run_cell(runner, cell, subsets[n], config, holdout_path, prep.hash, device)
            cells.append(cell)

    table = results_table(cells, config)
    write_results(table, out)
    if report:
        from memscan.study.report import write_study_report

        write_study_report(out, table, cells, config)
    log.info("study: %d stages run, %d up to date", len(runner.ran), len(runner.skipped))
    return StudyResult(out=out, table=table, ran=runner.ran, skipped=runner.skipped)
