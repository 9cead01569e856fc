"""``memscan scan``: datasets in, one whole run folder out (tables + summary), resumable per query block.

The orchestration of one :class:`ScanJob`: open (or prepare on the fly) the datasets
(:mod:`~memscan.scanning.inputs`), choose what is compared (channel, mask: ``memscan.search.features``),
size blocks from the memory budget (:mod:`~memscan.scanning.plan`), search every query set block by block
with checkpoints (:mod:`~memscan.scanning.queries`, :mod:`~memscan.scanning.state`), calibrate
(``memscan.audit``), build the tables (:mod:`~memscan.scanning.tables`) and commit the run folder whole
(:mod:`~memscan.scanning.runfolder`). The HTML report is not written here (``memscan.report``;
``memscan.scan(..., report=True)`` does both).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memscan.audit.calibrate import calibrate
from memscan.audit.gates import check_gates
from memscan.core.devices import resolve_device
from memscan.core.fingerprint import file_digest, fingerprint
from memscan.core.version import __version__
from memscan.scanning import runfolder
from memscan.scanning.fidelity import check_quality_sizes, quality_encoder, write_run_quality
from memscan.scanning.inputs import Inputs, channel_indices, load_mask, open_inputs
from memscan.scanning.options import ScanOptions
from memscan.scanning.plan import baseline_sample, plan_blocks
from memscan.scanning.queries import LocalSearch, QueryContext, Searcher, SearchFn, train_stream
from memscan.scanning.robust_stage import (
    ROBUST_COLUMNS,
    attributed_nearest,
    check_robust,
    combined_flags,
    robust_columns,
    trained_encoder,
    with_encoder_settings,
)
from memscan.scanning.runfolder import (  # noqa: F401 - re-exported: the run folder's names, for callers
    RUN_TABLES,
    STATE_DIR,
    RunWriter,
    ScanResult,
    Summary,
    load_run,
)
from memscan.scanning.state import Checkpoints, dataset_fingerprint
from memscan.scanning.tables import baseline_table, build_tables, describe, describe_baseline, nearest_table
from memscan.search.features import Features

log = logging.getLogger(__name__)

#: Options that change no result: left out of the resume key.
_NOT_IN_KEY = (
    "workers",
    "scheduler",
    "threshold",
    "fail_above",
    "fail_on_leaked_subjects",
    "quality",
    "encoder",
    "encoder_steps",  # the encoder's own cache key holds them; they change no search result
    "encoder_size",
)


@dataclass(frozen=True)
class ScanJob:
    """One scan to run: inputs, run folder and options.

    Attributes:
        train: training dataset folder (or ``DATASET/SPLIT``), or a raw folder/file.
        synthetic: synthetic dataset folder, or a raw folder/file.
        out: the run folder.
        options: the scan's options.
        holdout: held-out real images (dataset folder or raw), or None.
        subject_pattern: subject rule for raw inputs prepared on the fly.
        command: the command line, recorded in the summary.
        robust_options: the robust stage's options (``memscan.robust.pipeline.RobustOptions``: encoder
            training, candidates, registration); None: the defaults (its cache and device are the scan's).
    """

    train: Path
    synthetic: Path
    out: Path
    options: ScanOptions = field(default_factory=ScanOptions)
    holdout: Path | None = None
    subject_pattern: str | None = None
    command: str | None = None
    robust_options: Any = None


@dataclass
class _Plan:
    """What the search needs once the inputs are open."""

    feats: Features
    mask_digest: str | None
    dim: int
    query_block: int
    train_block: int
    cache_train: bool


def scan(
    train: str | Path,
    synthetic: str | Path,
    out: str | Path,
    options: ScanOptions | None = None,
    *,
    holdout: str | Path | None = None,
    subject_pattern: str | None = None,
    command: str | None = None,
    report: bool = False,
    robust_options: Any = None,
) -> ScanResult:
    """Exact top-k Pearson correlation of every synthetic item against every training item.

    Args:
        train: training dataset folder (or ``DATASET/SPLIT``), or a raw folder/file.
        synthetic: synthetic dataset folder, or a raw folder/file.
        out: the run folder to write (resumes an interrupted scan of the same inputs and options).
        options: see ``ScanOptions``.
        holdout: real images of subjects never used for training (dataset folder or raw): their
            nearest-training correlations calibrate the flags (p-values, FDR).
        subject_pattern: subject rule for raw inputs prepared on the fly.
        command: the command line, recorded in the summary.
        robust_options: with ``options.robust``: ``memscan.robust.pipeline.RobustOptions`` (encoder training,
            candidates, registration; its ``cache_dir`` and ``device`` are replaced by the run's), or None for
            the defaults. Not saved in the resume key: it changes only the robust columns.
        report: must be False here: this layer writes no report (``memscan.scan(..., report=True)`` or
            ``memscan.report.write_report`` does); accepted so that callers passing ``report=False`` work.

    Returns:
        The tables and summary written to ``out``; ``gate_failed`` holds the message of a failed release
        gate (the run is written whole either way).

    Raises:
        InputError: bad input (exit 2), before anything of the run is committed.
    """
    if report:
        raise TypeError(
            "memscan.scanning.scanner.scan writes no report; use memscan.scan(..., report=True) or "
            "memscan.report.html.write_report(run)"
        )
    job = ScanJob(
        Path(train),
        Path(synthetic),
        Path(out),
        options or ScanOptions(),
        Path(holdout) if holdout is not None else None,
        subject_pattern,
        command,
        robust_options,
    )
    return run_job(job)


def run_job(job: ScanJob) -> ScanResult:
    """Run a :class:`ScanJob` into its run folder (see :func:`scan`)."""
    t0 = time.perf_counter()
    opts = job.options
    device = resolve_device(opts.device, "device")
    with RunWriter(job.out) as writer:
        writer.clear_results()
        inputs = open_inputs(
            job.train,
            job.synthetic,
            job.holdout,
            opts,
            writer.work / runfolder.PREPARED_DIR,
            job.subject_pattern,
        )
        plan = _plan(inputs, opts)
        # encoders before the search: a bad --encoder or a robust scan that cannot run fails at once
        if opts.robust:
            check_robust(inputs.train, inputs.holdout)
        if opts.quality:
            check_quality_sizes(inputs.train, inputs.holdout, inputs.synthetic)
        trained = None
        robust_options = with_encoder_settings(job.robust_options, opts.encoder_steps, opts.encoder_size)
        if opts.trains_encoder:
            trained = trained_encoder(inputs.train, writer.work / runfolder.ENCODER_DIR, robust_options)
        encoder = quality_encoder(opts, trained, device) if opts.quality else None
        key = fingerprint(
            [dataset_fingerprint(ds) if ds is not None else None for ds in vars(inputs).values()],
            {n: v for n, v in opts.to_dict().items() if n not in _NOT_IN_KEY},
            plan.mask_digest,
            plan.query_block,
            length=64,
        )
        ckpt = Checkpoints(writer.work / runfolder.STATE_DIR, key)
        stats: dict[str, Any] = {"n_candidates": 0, "n_fallback": 0, "precision": None, "epsilon": None}
        found = _search_all(inputs, plan, opts, device, ckpt, stats)
        robust = None
        if opts.robust:
            robust = robust_columns(
                inputs.train,
                inputs.synthetic,
                inputs.holdout,
                trained,
                writer.work / runfolder.ENCODER_DIR,
                device,
                robust_options,
            )
        run_id = runfolder.new_run_id()
        result = _write_run(job, writer, inputs, plan, found, stats, device, run_id, t0, robust)
        if encoder is not None:
            result.quality = write_run_quality(
                writer.work, run_id, inputs.train, inputs.holdout, inputs.synthetic, encoder
            )
        writer.commit()
    result.run = job.out
    log.info("wrote %s (%.1f s)", job.out, result.summary.seconds)
    return result


def _plan(inputs: Inputs, opts: ScanOptions) -> _Plan:
    """Features (channel, mask), feature length and block sizes."""
    train = inputs.train
    channels = channel_indices(train, opts.channel)
    mask = load_mask(opts.mask, train, channels, opts.memory_budget)
    mask_digest = None
    if mask is not None:  # the mask's content (a file's bytes may change between kill and resume)
        mask_digest = fingerprint(np.packbits(mask).tobytes().hex(), list(mask.shape), length=32)
        if opts.mask not in ("none", "foreground"):
            mask_digest += file_digest(opts.mask)
    feats = Features(channels, mask)
    d = feats.dim(train.item_shape)
    itemsize = train.dtype.itemsize
    n_hold = inputs.holdout.n_items if inputs.holdout is not None else 0
    n_base = len(baseline_sample(train.n_items, opts.baseline_items)) if opts.baseline_items else 0
    # query blocks sized for the largest query set (the baselines are often larger than the synthetic set:
    # each block is one more pass over the training set)
    n_largest = max(inputs.synthetic.n_items, n_hold, n_base)
    qb, tb = plan_blocks(train.n_items, n_largest, d, itemsize, opts.memory_budget)
    qb, tb = min(opts.query_block or qb, n_largest), min(opts.train_block or tb, train.n_items)
    # Keep the training features in memory across the scan's passes (query blocks, held-out items, the two
    # baselines) when they fit in a quarter of the budget.
    n_queries = inputs.synthetic.n_items + n_hold + 2 * n_base
    fits = train.n_items * d * itemsize <= opts.memory_budget // 4 and n_queries > qb
    return _Plan(feats, mask_digest, d, qb, tb, fits)


@dataclass
class _Found:
    """The search's results: synthetic top-k ``[n_s, k]`` and the extra tables."""

    values: np.ndarray
    indices: np.ndarray
    transforms: np.ndarray
    hold_top: np.ndarray | None
    extra: dict[str, pd.DataFrame]


def _search_all(
    inputs: Inputs, plan: _Plan, opts: ScanOptions, device: str, ckpt: Checkpoints, stats: dict[str, Any]
) -> _Found:
    """Search the synthetic set, then the held-out set and the baselines; local engine or Dask."""
    train = inputs.train
    stream = train_stream(train, plan.feats, plan.train_block, [] if plan.cache_train else None)
    search: SearchFn = LocalSearch(stream, opts.engine_precision, device)
    close_cluster: Callable[[], None] = lambda: None  # noqa: E731
    if opts.workers is not None or opts.scheduler is not None:
        from memscan.search.cluster import DaskSearch, open_cluster

        client, close_client = open_cluster(opts.workers, opts.scheduler)
        path = os.path.abspath(train.path)  # as the workers see it (a shared file system)
        search = dask_search = DaskSearch(
            client, path, plan.feats, train.n_items, plan.train_block, opts.engine_precision, device
        )

        def close_cluster() -> None:
            log.info(
                "cluster: %d shard tasks, %d read their rows from a worker's cache",
                dask_search.n_tasks,
                dask_search.n_cache_hits,
            )
            dask_search.release()
            close_client()

    try:
        searcher = Searcher(QueryContext(train, plan.feats, search, opts), ckpt, plan.query_block, stats)
        log.info(
            "scan: %d synthetic x %d training items, d=%d, query blocks of %d, training blocks of %d, %s",
            inputs.synthetic.n_items,
            train.n_items,
            plan.dim,
            plan.query_block,
            plan.train_block,
            device,
        )
        synth = inputs.synthetic
        values, indices, transforms = searcher.run("synthetic", synth.n_items, synth.read, opts.top_k)
        extra: dict[str, pd.DataFrame] = {}
        hold_top = None
        if inputs.holdout is not None:
            hold = inputs.holdout
            hv, hi, ht = searcher.run("holdout", hold.n_items, hold.read, 1)
            hold_top = hv[:, 0]
            extra["holdout"] = nearest_table(train, hold, "holdout_id", hv, hi, ht)
        if opts.baseline_items:
            extra["baseline"] = _baselines(searcher, train, opts.baseline_items)
    finally:
        close_cluster()
    return _Found(values, indices, transforms, hold_top, extra)


def _baselines(searcher: Searcher, train, n_items: int) -> pd.DataFrame:
    """Nearest other training item of sampled training items: any other item, and another subject's.

    Neighbouring slices of one volume are near-duplicates (correlation ~0.99 in real brain MRI), so the
    first baseline is high by construction; the second (another subject) is the fair comparison for
    "how similar are two different patients".
    """
    pos = baseline_sample(train.n_items, n_items)
    _, subject_codes = np.unique(train.subjects.astype(str), return_inverse=True)
    subject_codes = subject_codes.astype(np.int64)

    def read(a: int, b: int) -> np.ndarray:
        return train.take(pos[a:b])

    av, ai, _ = searcher.run("baseline-any", len(pos), read, 1, (pos, np.arange(train.n_items)))
    ov, oi, _ = searcher.run("baseline-other", len(pos), read, 1, (subject_codes[pos], subject_codes))
    return baseline_table(train, pos, (av, ai), (ov, oi))


def _write_run(
    job: ScanJob,
    writer: RunWriter,
    inputs: Inputs,
    plan: _Plan,
    found: _Found,
    stats: dict[str, Any],
    device: str,
    run_id: str,
    t0: float,
    robust: pd.DataFrame | None = None,
) -> ScanResult:
    """Calibrate, build and write the tables, the summary and the marker into the work folder."""
    opts = job.options
    train, synth, hold = inputs.train, inputs.synthetic, inputs.holdout
    top = found.values[:, 0]
    fixed_flags = np.nan_to_num(top, nan=-np.inf) > opts.threshold
    calibration = None
    if found.hold_top is not None:
        p_values, flagged, calibration = calibrate(
            found.hold_top, top, method=opts.calibration, alpha=opts.alpha
        )
    else:
        p_values, flagged = None, fixed_flags
    flag_nearest = robust_used = robust_record = None
    if (
        robust is not None
    ):  # the combined verdict; each item attributed to the test that gives it the smaller p
        pixel_flagged = flagged
        _, flagged, combination = combined_flags(
            p_values, robust["robust_p_value"], opts.calibration, opts.alpha
        )
        flag_nearest, robust_used = attributed_nearest(train, found.indices[:, 0], p_values, robust)
        robust_record = {
            **robust.attrs["record"],
            "combination": combination,
            "n_flagged_pixel_test": int(np.sum(pixel_flagged)),
            "n_flagged_only_by_robust": int(np.sum(flagged & ~pixel_flagged)),
        }
    tables = build_tables(
        train,
        synth,
        found.values,
        found.indices,
        found.transforms,
        flagged,
        p_values,
        flag_nearest=flag_nearest,
        robust_used=robust_used,
    )
    if robust is not None:
        for col in ROBUST_COLUMNS:
            tables["synthetic"][col] = robust[col].array
    tables.update(found.extra)
    for name, df in tables.items():
        runfolder.write_table(df, runfolder.table_path(writer.work, name), run_id)
    synth_df, subjects = tables["synthetic"], tables["subjects"]
    n_flagged = int(synth_df["flagged"].sum())
    summary = Summary(
        n_train=train.n_items,
        n_synthetic=synth.n_items,
        n_holdout=hold.n_items if hold is not None else 0,
        top_k=opts.top_k,
        threshold=calibration.threshold if calibration else opts.threshold,
        threshold_source="holdout" if calibration else "fixed",
        n_flagged=n_flagged,
        flagged_fraction=n_flagged / synth.n_items,
        fixed_threshold=opts.threshold,
        n_above_fixed_threshold=int(fixed_flags.sum()),
        calibration=calibration.to_dict() if calibration else None,
        n_unmatched=int(synth_df["nearest_train_id"].isna().sum()),
        subjects_total=int(len(subjects)),
        subjects_leaked=int(subjects["leaked"].sum()),
        subjects_leaked_fraction=float(subjects["leaked"].mean()) if len(subjects) else 0.0,
        holdout_max_correlation=describe(found.hold_top) if found.hold_top is not None else None,
        baseline=describe_baseline(found.extra.get("baseline")),
        device=device,
        executor="dask" if opts.workers is not None or opts.scheduler is not None else "local",
        precision=stats["precision"],
        screen_epsilon=stats["epsilon"],
        n_rerank_pairs=stats["n_candidates"],
        n_fallback_blocks=stats["n_fallback"],
        item_shape=list(train.item_shape),
        channels=list(train.channels),
        feature_dim=plan.dim,
        query_block=plan.query_block,
        train_block=plan.train_block,
        train=str(writer.final_path(train.path)),
        synthetic=str(writer.final_path(synth.path)),
        holdout=str(writer.final_path(hold.path)) if hold is not None else None,
        options=opts.to_dict(),
        command=job.command,
        memscan_version=__version__,
        run_id=run_id,
        n_unscored=int(synth_df["unscored"].sum()),
        seconds=round(time.perf_counter() - t0, 4),
        filtered_from=synth.info.get("filtered_from"),
        robust=robust_record,
    )
    runfolder.write_summary(summary, writer.work)
    runfolder.write_marker(writer.work, run_id, __version__)
    gate = check_gates(
        summary,
        fail_above=opts.fail_above,
        fail_on_leaked_subjects=opts.fail_on_leaked_subjects,
        run=job.out,
    )
    return ScanResult(
        writer.work,
        synth_df,
        tables["matches"],
        subjects,
        tables["train_items"],
        summary,
        found.extra.get("holdout"),
        found.extra.get("baseline"),
        gate_failed=gate,
    )


__all__ = ["ScanJob", "ScanResult", "Summary", "load_run", "run_job", "scan"]
