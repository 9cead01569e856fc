"""The ``memscan`` command: a thin Typer layer that parses, validates and calls the library."""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from memscan.core.devices import DEVICES
from memscan.core.progress import out_console as console
from memscan.core.progress import setup_logging
from memscan.core.version import __version__
from memscan.errors import GateFailed, MemscanError
from memscan.scanning.options import CALIBRATIONS, PRECISIONS

app = typer.Typer(
    name="memscan",
    help="Find memorized copies of training images among synthetic medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("memscan")
_state = {"verbose": False}
_DEVICE_HELP = " | ".join(DEVICES) + " | cuda:N"

#: Library parameter → CLI flag: library errors name Python parameters (``top_k must be >= 1``); at this
#: boundary they are said in flags (``--top-k must be >= 1``).
PARAM_FLAGS = {
    "top_k": "--top-k",
    "max_shift": "--max-shift",
    "shift_candidates": "--shift-candidates",
    "memory_budget": "--memory-budget",
    "fail_above": "--fail-above",
    "fail_on_leaked_subjects": "--fail-on-leaked-subjects",
    "baseline_items": "--baseline-items",
    "subject_pattern": "--subject-pattern",
    "alpha": "--fdr",
    "device": "--device",
    "precision": "--precision",
    "threshold": "--threshold",
    "calibration": "--calibration",
    "mask": "--mask",
    "channel": "--channel",
    "workers": "--workers",
    "scheduler": "--scheduler",
    "orientations": "--orientations",
    "flips": "--flips",
    "out": "--out",
    "encoder": "--encoder",
    "quality": "--quality",
    "robust": "--robust",
    "encoder_steps": "--encoder-steps",
    "encoder_size": "--encoder-size",
    "holdout": "--holdout",
    "also_subjects": "--also-subjects",
    "overwrite": "--overwrite",
}
_MULTI_WORD = re.compile(r"(?<![\w-])(" + "|".join(k for k in PARAM_FLAGS if "_" in k) + r")(?![\w])")
_LEADING = re.compile(r"^(" + "|".join(PARAM_FLAGS) + r")(?= )")


def to_flags(message: str) -> str:
    """Say a library message in CLI flags: ``top_k`` anywhere, one-word names where they lead the message."""
    message = _MULTI_WORD.sub(lambda m: PARAM_FLAGS[m.group(1)], message)
    return _LEADING.sub(lambda m: PARAM_FLAGS[m.group(1)], message)


def _registry_help() -> dict[str, str]:
    """Choices that come from registries whose modules load torch: computed only when help is shown."""
    from memscan.models import registry
    from memscan.study.pipeline import preset_names

    families = {f: ", ".join(registry.presets(f)) for f in registry.FAMILIES}
    return {
        "model_families": " | ".join(registry.FAMILIES),
        "model_presets": "; ".join(f"{f}: {names}" for f, names in families.items()),
        "study_presets": " | ".join(preset_names()),
    }


class RegistryHelpCommand(TyperCommand):
    """A command whose option help holds ``{model_presets}``/``{study_presets}``, filled in when shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        values = _registry_help()
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                param.help = text.format(**values)
        if self.help and "{" in self.help:
            self.help = self.help.format(**values)
        super().format_help(ctx, formatter)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memscan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info messages.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug messages.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    setup_logging(quiet=quiet, verbose=verbose)
    _state["verbose"] = verbose


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"memscan: error: {message}", err=True)
    return typer.Exit(code)


def _errors_to_exit_codes(fn):
    """The exit-code contract, by construction: every exception leaves through here.

    ``InputError`` → 2 and ``GateFailed`` → 3 (one line, no traceback); ``OSError`` (read-only or full
    disk, permissions, a vanished file) → 2, one line naming the path; Ctrl-C → 130; anything else is a
    bug → 1, with one line and a hint (the traceback with ``--verbose``).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MemscanError as exc:
            raise _fail(to_flags(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("memscan: interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "output"
            raise _fail(f"{where}: {exc.strerror or type(exc).__name__}", 2) from None
        except Exception as exc:  # noqa: BLE001 - the contract: a bug is exit 1, said in one line
            if _state["verbose"]:
                traceback.print_exc()
            hint = "" if _state["verbose"] else " (run with --verbose for the traceback)"
            raise _fail(f"internal error, please report it: {type(exc).__name__}: {exc}{hint}", 1) from None

    return wrapper


@app.command()
@_errors_to_exit_codes
def prepare(
    src: Annotated[Path, typer.Argument(help="Folder (or file) of images/volumes to prepare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    layout: Annotated[str, typer.Option(help="auto | folder | brats | cxr")] = "auto",
    recipe: Annotated[
        str | None, typer.Option(help="study (BraTS) | cxr | generic; default by layout.")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Output in-plane size in pixels.")] = None,
    subject_pattern: Annotated[
        str | None, typer.Option(help="REGEX giving the subject from the relative path (first group).")
    ] = None,
    test_subjects: Annotated[
        int | None, typer.Option(help="BraTS: hold out this many whole subjects as split 'test'.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subject split.")] = 0,
    modalities: Annotated[
        str | None, typer.Option(help="BraTS channels, comma-separated (default t1,t2,t1ce,flair,seg).")
    ] = None,
    axis: Annotated[str, typer.Option(help="Slicing axis of volumes: x | y | z.")] = "z",
    slice_range: Annotated[str | None, typer.Option(help="Keep slices START:STOP only.")] = None,
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes",
            help="Keep whole 3D volumes, not slices; read 3D+ .npy/.npz arrays as volumes, not image stacks.",
        ),
    ] = False,
    nan: Annotated[
        str, typer.Option("--nan", help="NaN voxels: error (stop) | zero (read as 0, counted in a warning).")
    ] = "error",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a dataset already at --out.")
    ] = False,
    pseudonymize: Annotated[
        bool,
        typer.Option(
            "--pseudonymize",
            help="Replace ids, subjects and source paths by keyed pseudonyms (HMAC-SHA256; slice suffixes "
            "kept).",
        ),
    ] = False,
    pseudonym_key: Annotated[
        Path | None,
        typer.Option(
            help="Key file for --pseudonymize (created if missing; default OUT.pseudonym-key beside OUT). "
            "Use one key for training, held-out and synthetic sets; keep it apart from the data."
        ),
    ] = None,
    pseudonym_map: Annotated[
        Path | None,
        typer.Option(
            help="Where --pseudonymize writes the map name -> pseudonym (default OUT.pseudonym-map.json)."
        ),
    ] = None,
) -> None:
    """Turn medical images (PNG/JPEG/TIFF, DICOM, NIfTI/MGH/MINC/PAR-REC, NumPy; BraTS; chest x-ray) into a
    dataset folder.

    Example: memscan prepare BraTS2020/ --out brats --test-subjects 56
    """
    from memscan.preprocess.prepare import (
        PrepareOptions,
        parse_modalities,
        parse_slice_range,
        prepare_dataset,
    )
    from memscan.report.terminal import dataset_table

    opts = PrepareOptions(
        layout=layout,
        recipe=recipe,
        size=size,
        subject_pattern=subject_pattern,
        test_subjects=test_subjects,
        seed=seed,
        modalities=parse_modalities(modalities),
        axis=axis,
        slice_range=parse_slice_range(slice_range),
        volumes=volumes,
        nan=nan,
        pseudonymize=pseudonymize,
    )
    ds = prepare_dataset(
        src, out, opts, overwrite=overwrite, pseudonym_key=pseudonym_key, pseudonym_map=pseudonym_map
    )
    console.print(dataset_table(ds))


@app.command()
@_errors_to_exit_codes
def scan(
    train: Annotated[Path, typer.Argument(help="Training dataset folder (or DATASET/SPLIT), or raw images.")],
    synthetic: Annotated[Path, typer.Argument(help="Synthetic dataset folder, or raw images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (resumes if interrupted).")],
    top_k: Annotated[int, typer.Option(help="Matches kept per synthetic item.")] = 5,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    precision: Annotated[
        str, typer.Option(help=f"Screen precision: {' | '.join(PRECISIONS)} (results are exact)")
    ] = "auto",
    flips: Annotated[bool, typer.Option("--flips", help="Also compare left-right mirrored items.")] = False,
    orientations: Annotated[
        bool,
        typer.Option(
            "--orientations",
            help="Compare all 8 axis-aligned orientations (flips, rotations, transposes; square 2D items).",
        ),
    ] = False,
    max_shift: Annotated[
        int, typer.Option(help="Tolerate shifts up to PX pixels (on re-rank candidates).")
    ] = 0,
    shift_candidates: Annotated[
        int, typer.Option(help="With --max-shift: best unshifted matches per item re-ranked under shifts.")
    ] = 20,
    resize: Annotated[
        bool, typer.Option("--resize", help="Resample SYNTHETIC/HOLDOUT to TRAIN's size when they differ.")
    ] = False,
    mask: Annotated[str, typer.Option(help="none | foreground | FILE (one mask for all items)")] = "none",
    channel: Annotated[str | None, typer.Option(help="Compare this channel only (e.g. flair).")] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="Real images of subjects NOT used for training: calibrates the flags.")
    ] = None,
    calibration: Annotated[str, typer.Option(help=f"With --holdout: {' | '.join(CALIBRATIONS)}")] = "fdr",
    fdr: Annotated[
        float, typer.Option(help="With --holdout: FDR level (or per-image level for quantile).")
    ] = 0.05,
    threshold: Annotated[
        float, typer.Option(help="Without --holdout: flag items whose max correlation exceeds R.")
    ] = 0.95,
    fail_above: Annotated[
        float | None, typer.Option(help="Exit with code 3 when the flagged fraction exceeds FRACTION.")
    ] = None,
    fail_on_leaked_subjects: Annotated[
        int | None, typer.Option(help="Exit with code 3 when at least N training subjects leaked.")
    ] = None,
    baseline_items: Annotated[
        int, typer.Option(help="Training items sampled for the train-vs-train baselines (0: none).")
    ] = 500,
    memory_budget: Annotated[str, typer.Option(help="RAM for the scan's blocks, e.g. 4GiB.")] = "4GiB",
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Write the tables only, no HTML report.")
    ] = False,
    subject_pattern: Annotated[
        str | None, typer.Option(help="Subject REGEX for raw folders prepared on the fly.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Search on a local Dask cluster of N worker processes.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Search on an existing Dask cluster, e.g. tcp://HOST:8786 (shared file system)."),
    ] = None,
    quality: Annotated[
        bool,
        typer.Option(
            "--quality",
            help="Also compute fidelity and diversity (FD, KID, precision/recall, authenticity, C_T, "
            "MS-SSIM) into RUN/quality.json.",
        ),
    ] = False,
    robust: Annotated[
        bool,
        typer.Option(
            "--robust",
            help="Also catch rotated, rescaled, cropped and warped copies: a learned screen + registered "
            "re-rank, calibrated on --holdout (needed; 2D). Flags become the combined verdict.",
        ),
    ] = False,
    encoder: Annotated[
        Path | None,
        typer.Option(
            help="With --quality: a TorchScript network FILE for the features (default: trained on TRAIN).",
        ),
    ] = None,
    encoder_steps: Annotated[
        int | None,
        typer.Option(
            help="Training steps of the encoder trained on TRAIN (--robust; --quality without --encoder). "
            "Default 300.",
        ),
    ] = None,
    encoder_size: Annotated[
        int | None,
        typer.Option(
            help="Input size (px, >= 16) of the encoder trained on TRAIN; items are resized to it. "
            "Default 48; smaller data train faster at their own size.",
        ),
    ] = None,
) -> None:
    """Exact all-pairs Pearson correlation: top-k training matches of every synthetic item.

    Example: memscan scan brats/train synthetic/ --out run --flips
    """
    from memscan.api import scan as run_scan
    from memscan.report.terminal import run_table

    result = run_scan(
        train,
        synthetic,
        out,
        holdout=holdout,
        report=not no_report,
        top_k=top_k,
        device=device,
        precision=precision,
        flips=flips,
        orientations=orientations,
        max_shift=max_shift,
        shift_candidates=shift_candidates,
        resize=resize,
        mask=mask,
        channel=channel,
        threshold=threshold,
        calibration=calibration,
        alpha=fdr,
        fail_above=fail_above,
        fail_on_leaked_subjects=fail_on_leaked_subjects,
        baseline_items=baseline_items,
        memory_budget=memory_budget,
        workers=workers,
        scheduler=scheduler,
        subject_pattern=subject_pattern,
        command="memscan " + " ".join(sys.argv[1:]),
        quality=quality,
        encoder=encoder,
        robust=robust,
        encoder_steps=encoder_steps,
        encoder_size=encoder_size,
    )
    console.print(run_table(result))
    if result.gate_failed:
        raise GateFailed(result.gate_failed)


@app.command(name="filter")
@_errors_to_exit_codes
def filter_(
    run: Annotated[Path, typer.Argument(help="Run folder written by memscan scan.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (the clean set).")],
    also_subjects: Annotated[
        bool,
        typer.Option("--also-subjects", help="Also drop every sample matched to a leaked training subject."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a dataset (and its removed list) already at --out.")
    ] = False,
    synthetic: Annotated[
        Path | None,
        typer.Option(help="The scanned synthetic dataset, if it moved since the scan."),
    ] = None,
) -> None:
    """Write the synthetic items the scan scored and did not flag as a new dataset folder (a release
    candidate), and OUT.removed.parquet beside it: the removed items, why, and their matches.

    Example: memscan filter run --out synthetic-clean --also-subjects
    """
    from memscan.api import filter as filter_run
    from memscan.report.terminal import filter_table

    result = filter_run(run, out, also_subjects=also_subjects, overwrite=overwrite, synthetic=synthetic)
    console.print(filter_table(result))


@app.command()
@_errors_to_exit_codes
def report(
    run: Annotated[Path, typer.Argument(help="Run folder written by memscan scan.")],
    max_gallery: Annotated[int, typer.Option(help="Pairs shown in the gallery (capped).")] = 48,
    per_page: Annotated[int, typer.Option(help="Pairs per gallery page.")] = 12,
) -> None:
    """(Re)write RUN/report.html, its figures and CSV exports from a finished scan.

    Example: memscan report run
    """
    from memscan.api import write_report

    path = write_report(run, max_gallery=max_gallery, per_page=per_page)
    console.print(f"report: {path}")


@app.command(cls=RegistryHelpCommand)
@_errors_to_exit_codes
def train(
    family: Annotated[str, typer.Argument(help="Model family: {model_families}")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Training dataset folder (or DATASET/SPLIT).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    config: Annotated[Path | None, typer.Option(help="JSON file of config overrides.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="The family's preset ({model_presets}; default quick).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Total training steps (default: the preset's).")] = None,
    batch: Annotated[int | None, typer.Option(help="Images per step (default: the preset's).")] = None,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue exactly from the folder's latest checkpoint.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of weights, noise and batches.")] = 0,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network (CUDA).")] = False,
    log_every: Annotated[int, typer.Option(help="Steps per log.jsonl line.")] = 50,
    checkpoint_every: Annotated[int, typer.Option(help="Steps per checkpoint (0: at the end only).")] = 1000,
    sample_every: Annotated[int, typer.Option(help="Steps per sample grid (0: at the end only).")] = 1000,
) -> None:
    """Train a generative model (DDPM or StyleGAN2, 2D or 3D) on a dataset folder.

    Example: memscan train ddpm --data brats/train --out ddpm-brats --steps 20000
    """
    from memscan.api import train as train_model

    path = train_model(
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
    console.print(f"model: {path}")


@app.command()
@_errors_to_exit_codes
def sample(
    model: Annotated[Path, typer.Argument(help="Model folder written by memscan train.")],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images to generate.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    seed: Annotated[int, typer.Option(help="Item i depends on (seed, i) only.")] = 0,
    batch: Annotated[int | None, typer.Option(help="Images generated at once.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm models: ddpm | ddim")] = None,
    sampling_steps: Annotated[
        int | None,
        typer.Option(help="ddpm models: steps (ddpm: fewer than T = the strided ancestral chain)."),
    ] = None,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a dataset already at --out.")
    ] = False,
) -> None:
    """Generate synthetic images from a trained model into a dataset folder that memscan scan reads.

    Example: memscan sample ddpm-brats --n 1000 --out synthetic
    """
    from memscan.models.sample import sample_model
    from memscan.report.terminal import dataset_table

    ds = sample_model(
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
    console.print(dataset_table(ds))


@app.command()
@_errors_to_exit_codes
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's data and results.")] = Path(
        "demo-output"
    ),
    subjects: Annotated[int, typer.Option(help="Phantom BraTS subjects (training + held-out).")] = 10,
    size: Annotated[int, typer.Option(help="Slice size in pixels (the study used 256).")] = 128,
) -> None:
    """Run the whole pipeline on built-in phantom data (nothing is downloaded) and write a report.

    Example: memscan demo --out demo-output
    """
    from memscan.demo import run_demo

    run_demo(out, n_subjects=subjects, size=size)


@app.command(cls=RegistryHelpCommand)
@_errors_to_exit_codes
def study(
    config: Annotated[str, typer.Argument(help="Study TOML file, or a preset: {study_presets}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write.")],
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue in a folder that holds a study; finished stages are kept."),
    ] = False,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP + " (training, sampling and scans)")] = "auto",
    source: Annotated[
        Path | None, typer.Option(help="Raw data folder; replaces the config's [data] source / phantom.")
    ] = None,
) -> None:
    """Train, sample and scan every (model, training-set size) cell of a study; write a table and a report.

    Example: memscan study quick --out study --device cuda
    """
    from memscan.api import run_study
    from memscan.study.pipeline import markdown_table

    result = run_study(config, out, resume=resume, device=device, source=source)
    typer.echo(markdown_table(result.table))
    typer.echo(f"results: {out / 'results.md'}\nreport: {out / 'report.html'}")


def main() -> None:
    """Entry point of the ``memscan`` console script."""
    try:
        app()
    except SystemExit as exc:  # typer/click exit codes pass through unchanged
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
