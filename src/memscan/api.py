"""The Python API: the pipeline's steps as functions with explicit keyword-only options.

Layered entry points: arrays and tables live in the packages (``memscan.search``, ``memscan.scanning``,
``memscan.audit``); these functions are the end-to-end steps a notebook calls, and the CLI is a thin layer
over them. Every import is inside a function so that ``import memscan`` stays fast (no torch).
Errors name the Python parameters (``top_k must be >= 1``); the CLI speaks in flags.

Example::

    import memscan
    memscan.prepare("BraTS2020/", "brats", layout="brats", test_subjects=56)
    result = memscan.scan("brats/train", "synthetic/", "run", holdout="brats/test", flips=True)
    result.synthetic.sort_values("max_correlation")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from memscan.dataset.store import Dataset
    from memscan.scanning.filter import FilterResult
    from memscan.scanning.runfolder import ScanResult
    from memscan.study.pipeline import StudyConfig, StudyResult

__all__ = [
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


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    layout: str = "auto",
    recipe: str | None = None,
    size: int | None = None,
    subject_pattern: str | None = None,
    test_subjects: int | None = None,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    axis: str = "z",
    slice_range: tuple[int, int] | None = None,
    volumes: bool = False,
    overwrite: bool = False,
    pseudonymize: bool = False,
    pseudonym_key: str | Path | None = None,
    pseudonym_map: str | Path | None = None,
) -> Dataset:
    """Prepare a folder (or file) of medical images into a dataset folder.

    Args:
        src: folder or file of images/volumes (PNG/JPEG/TIFF, DICOM, NIfTI, NumPy; BraTS; chest x-ray).
        out: the dataset folder to write.
        layout: ``auto``, ``folder``, ``brats`` or ``cxr``.
        recipe: ``study`` (BraTS), ``cxr`` or ``generic``; default by layout.
        size: output in-plane size in pixels.
        subject_pattern: REGEX giving the subject from the relative path (first group).
        test_subjects: BraTS: hold out this many whole subjects as split ``test``.
        seed: seed of the subject split.
        modalities: BraTS channels (default t1, t2, t1ce, flair, seg).
        axis: slicing axis of volumes, ``x``, ``y`` or ``z``.
        slice_range: keep slices ``[start, stop)`` only.
        volumes: keep whole 3D volumes, not slices.
        overwrite: replace a dataset already at ``out``.
        pseudonymize: replace every id, subject and source path by a keyed pseudonym (HMAC-SHA256).
        pseudonym_key: the key file (created if missing; default ``OUT.pseudonym-key`` beside ``out``);
            use one key for training, held-out and synthetic sets so subjects line up.
        pseudonym_map: where the map name → pseudonym is written (default ``OUT.pseudonym-map.json``
            beside ``out``; never inside it).

    Returns:
        The prepared dataset.
    """
    from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        layout=layout,
        recipe=recipe,
        size=size,
        subject_pattern=subject_pattern,
        test_subjects=test_subjects,
        seed=seed,
        modalities=tuple(modalities) if modalities is not None else None,
        axis=axis,
        slice_range=slice_range,
        volumes=volumes,
        pseudonymize=pseudonymize,
    )
    return prepare_dataset(
        src, out, options, overwrite=overwrite, pseudonym_key=pseudonym_key, pseudonym_map=pseudonym_map
    )


def open_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder (or ``DATASET/SPLIT``) for reading.

    Args:
        path: the dataset folder, or ``DATASET/SPLIT`` for the items of one split.
    """
    from memscan.dataset.store import Dataset

    return Dataset.open(path)


def train(
    data: str | Path,
    out: str | Path,
    family: str,
    *,
    config: str | Path | dict[str, Any] | None = None,
    preset: str | None = None,
    steps: int | None = None,
    batch: int | None = None,
    device: str = "auto",
    resume: bool = False,
    seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 1000,
    sample_every: int = 1000,
    compile: bool = False,
) -> Path:
    """Train a generative model (DDPM or StyleGAN2, 2D or 3D) on a dataset folder.

    Args:
        data: training dataset folder (or ``DATASET/SPLIT``).
        out: the model folder to write.
        family: ``ddpm`` or ``stylegan2`` (``memscan.models.registry.FAMILIES``).
        config: a JSON file or dict of config overrides.
        preset: the family's preset (default: the family's default).
        steps: total training steps (default: the preset's).
        batch: images per step (default: the preset's).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue exactly from the folder's latest checkpoint.
        seed: seed of weights, noise and batches.
        log_every: steps per ``log.jsonl`` line.
        checkpoint_every: steps per checkpoint (0: at the end only).
        sample_every: steps per sample grid (0: at the end only).
        compile: ``torch.compile`` the network (CUDA).

    Returns:
        The model folder.
    """
    from memscan.models.train import train_model

    return train_model(
        data,
        out,
        family,
        config=config,
        preset=preset,
        steps=steps,
        batch=batch,
        device=device,
        resume=resume,
        seed=seed,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        sample_every=sample_every,
        compile=compile,
    )


def sample(
    model: str | Path,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    batch: int | None = None,
    sampler: str | None = None,
    sampling_steps: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> Dataset:
    """Generate synthetic images from a trained model into a dataset folder that :func:`scan` reads.

    Args:
        model: the model folder written by :func:`train`.
        n: number of images.
        out: the dataset folder to write.
        seed: item ``i`` depends on ``(seed, i)`` only.
        batch: images generated at once.
        sampler: DDPM models: ``ddpm`` or ``ddim``.
        sampling_steps: DDPM models: number of sampling steps.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        overwrite: replace a dataset already at ``out``.

    Returns:
        The synthetic dataset.
    """
    from memscan.models.sample import sample_model

    return sample_model(
        model,
        n,
        out,
        seed=seed,
        batch=batch,
        sampler=sampler,
        sampling_steps=sampling_steps,
        device=device,
        overwrite=overwrite,
    )


def load_model(model: str | Path, *, device: str = "auto") -> Any:
    """Load a model folder's latest checkpoint.

    Args:
        model: the model folder written by :func:`train`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        What ``memscan.models.sample.load_model`` returns (the model, its config, the checkpoint step and
        the device).
    """
    from memscan.models.sample import load_model as _load_model

    return _load_model(model, device=device)


def scan(
    train: str | Path,
    synthetic: str | Path,
    out: str | Path,
    *,
    holdout: str | Path | None = None,
    report: bool = False,
    top_k: int = 5,
    device: str = "auto",
    precision: str = "auto",
    flips: bool = False,
    orientations: bool = False,
    max_shift: int = 0,
    shift_candidates: int = 20,
    resize: bool = False,
    mask: str | Path = "none",
    channel: str | None = None,
    threshold: float = 0.95,
    calibration: str = "fdr",
    alpha: float = 0.05,
    fail_above: float | None = None,
    fail_on_leaked_subjects: int | None = None,
    baseline_items: int = 500,
    memory_budget: int | str = 4 * 2**30,
    query_block: int | None = None,
    train_block: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    subject_pattern: str | None = None,
    command: str | None = None,
    quality: bool = False,
    encoder: str | Path | None = None,
    robust: bool = False,
    encoder_steps: int | None = None,
    encoder_size: int | None = None,
) -> ScanResult:
    """Exact top-k Pearson correlation of every synthetic item against every training item, into ``out``.

    Args:
        train: training dataset folder (or ``DATASET/SPLIT``), or a raw folder/file.
        synthetic: synthetic dataset folder, or a raw folder/file.
        out: the run folder to write (a new or empty folder, or an earlier memscan run; resumes an
            interrupted scan of the same inputs and options).
        holdout: real images of subjects never used for training: calibrates the flags (p-values, FDR).
        report: also write ``out/report.html`` with its figures and CSV exports.
        top_k: matches kept per synthetic item.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: screen precision (results are exact whatever it is): ``auto``, ``int8``, ``bf16``,
            ``fp16``, ``tf32``, ``float32``, ``float64`` or ``exact``.
        flips: also compare each synthetic item mirrored left-right.
        orientations: compare all eight axis-aligned orientations (square 2D items).
        max_shift: tolerate shifts up to this many pixels (on the re-rank candidates).
        shift_candidates: with ``max_shift``: best unshifted matches per item re-ranked under shifts.
        resize: resample ``synthetic``/``holdout`` to the training size when they differ.
        mask: ``none``, ``foreground`` or a mask file (one mask for all items).
        channel: compare this channel only (e.g. ``flair``).
        threshold: without ``holdout``: flag items whose max correlation exceeds it.
        calibration: with ``holdout``: ``fdr`` or ``quantile``.
        alpha: with ``holdout``: the FDR level (or per-image level for ``quantile``).
        fail_above: release gate: ``result.gate_failed`` is set when the flagged fraction exceeds it.
        fail_on_leaked_subjects: release gate: set when at least this many training subjects leaked.
        baseline_items: training items sampled for the train-vs-train baselines (0: none).
        memory_budget: bytes (or text such as ``"4GiB"``) of RAM for the scan's blocks.
        query_block: items per query block (default from the budget; never changes results).
        train_block: items per training block (default from the budget; never changes results).
        workers: search on a local Dask cluster of this many worker processes.
        scheduler: search on an existing Dask cluster (``tcp://HOST:8786``).
        subject_pattern: subject REGEX for raw folders prepared on the fly.
        command: the command line recorded in the summary.
        quality: also compute the fidelity and diversity panel into ``out/quality.json``
            (``result.quality``; see ``docs/quality.md``); changes no table.
        encoder: with ``quality``: a TorchScript (or ``torch.export``) network file whose features the
            panel uses; ``None``: the self-supervised encoder trained on the training set.
        robust: also run the robust stage (learned screen + registered re-rank, calibrated on ``holdout``,
            which it needs; 2D): catches rotated, rescaled, cropped and warped copies. Adds the
            ``robust_*`` columns to ``synthetic.parquet``; ``flagged`` becomes the combined verdict
            (``docs/robust.md``). Without it every table is as before.
        encoder_steps: training steps of the self-supervised encoder that ``quality`` (without
            ``encoder``) and ``robust`` share; ``None``: its default (300).
        encoder_size: that encoder's input size in pixels (items are resized to it); ``None``: its default
            (48).

    Returns:
        The run's tables and summary; ``gate_failed`` names a failed release gate (nothing is raised).
    """
    from memscan.scanning.options import ScanOptions, parse_bytes
    from memscan.scanning.scanner import scan as run_scan

    options = ScanOptions(
        top_k=top_k,
        device=device,
        precision=precision,
        flips=flips,
        orientations=orientations,
        max_shift=max_shift,
        resize=resize,
        mask=str(mask),
        channel=channel,
        threshold=threshold,
        memory_budget=parse_bytes(memory_budget),
        fail_above=fail_above,
        fail_on_leaked_subjects=fail_on_leaked_subjects,
        calibration=calibration,
        alpha=alpha,
        baseline_items=baseline_items,
        shift_candidates=shift_candidates,
        query_block=query_block,
        train_block=train_block,
        workers=workers,
        scheduler=scheduler,
        quality=quality,
        encoder=str(encoder) if encoder is not None else None,
        robust=robust,
        encoder_steps=encoder_steps,
        encoder_size=encoder_size,
    )
    result = run_scan(
        train, synthetic, out, options, holdout=holdout, subject_pattern=subject_pattern, command=command
    )
    if report:
        write_report(out)
    return result


def filter(  # noqa: A001 - the command's name; memscan.filter reads as the step it is
    run: str | Path,
    out: str | Path,
    *,
    also_subjects: bool = False,
    overwrite: bool = False,
    synthetic: str | Path | None = None,
) -> FilterResult:
    """Write the synthetic items of a run that the scan scored and did not flag as a new dataset folder.

    Beside ``out`` goes ``out.removed.parquet``: one row per removed item with its reason (``flagged``,
    ``not_scored``, ``leaked_subject``), its nearest training item and subject, correlation and p-value.
    ``out/dataset.json`` records the run under ``filtered_from``; a later scan of ``out`` shows it.

    Args:
        run: the run folder written by :func:`scan`.
        out: the dataset folder to write.
        also_subjects: also remove every item matched to a training subject the scan found leaked.
        overwrite: replace a dataset (and its removed list) already at ``out``.
        synthetic: the scanned synthetic dataset when it is no longer where the run recorded it.

    Returns:
        The clean dataset (``result.dataset``), the removed items and the removed list's path.
    """
    from memscan.scanning.filter import filter_run

    return filter_run(run, out, also_subjects=also_subjects, overwrite=overwrite, synthetic=synthetic)


def write_report(run: str | Path, *, max_gallery: int = 48, per_page: int = 12) -> Path:
    """(Re)write ``RUN/report.html``, its gallery pages, figures and CSV exports from a finished run.

    Args:
        run: the run folder written by :func:`scan`.
        max_gallery: matched pairs shown in the gallery at most.
        per_page: pairs per gallery page (page 1 is in ``report.html``).

    Returns:
        The path of ``report.html``.
    """
    from memscan.report.html import write_report as _write_report

    return _write_report(run, max_gallery=max_gallery, per_page=per_page)


def load_run(run: str | Path) -> ScanResult:
    """Read a finished run folder (its tables and summary), checking that all its files are of one run.

    Args:
        run: the run folder written by :func:`scan`.
    """
    from memscan.scanning.runfolder import load_run as _load_run

    return _load_run(run)


def run_study(
    config: str | Path | StudyConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    source: str | Path | None = None,
) -> StudyResult:
    """Train, sample and scan every (model, training-set size) cell of a study; write a table and a report.

    Args:
        config: a study TOML file, a preset name (``memscan.study.pipeline.preset_names()``) or a
            ``StudyConfig``.
        out: the study folder to write.
        resume: continue in a folder that holds a study; finished stages are kept.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (training, sampling and scans).
        source: raw data folder; replaces the config's ``[data] source`` / phantom.

    Returns:
        The study's result (its table of cells).
    """
    from memscan.study.pipeline import load_config
    from memscan.study.pipeline import run_study as _run_study

    if isinstance(config, (str, Path)):
        config = load_config(config, source=source)
    elif source is not None:
        raise TypeError("source applies to a config file or preset name, not to a StudyConfig")
    return _run_study(config, out, resume=resume, device=device)
