"""Discover the items of an input: a generic folder, BraTS subject folders, or the chest x-ray folders.

Item ids (contract): an item's ``relpath`` is its path relative to the input root with POSIX separators;
a root that is a single file gives one item whose ``relpath`` is the file name. A folder holding one
DICOM series is one item. Items are sorted by ``relpath``.

Subjects (contract): the BraTS subject folder; the chest x-ray patient id parsed from the file name; for a
generic folder the first directory under the root, else the file stem. A ``subject_pattern`` regex
overrides the generic rule.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from memscan.core.validate import did_you_mean
from memscan.errors import InputError
from memscan.io.readers import (
    COMPANION_SUFFIXES,
    SUFFIXES_ALL,
    dicom_series_files,
    is_dicom_series_dir,
    suffix_of,
    supported,
)

__all__ = [
    "BRATS_MODALITIES",
    "CXR_LABELS",
    "CXR_SPLITS",
    "BratsSubject",
    "SourceItem",
    "cxr_patient_id",
    "detect_layout",
    "discover_brats",
    "discover_cxr",
    "discover_folder",
    "subject_for",
    "summarize_skipped",
]

logger = logging.getLogger(__name__)

BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "seg")
CXR_SPLITS: tuple[str, ...] = ("train", "test", "val")
CXR_LABELS: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
CXR_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".dcm")
"""Chest x-ray files read by ``--layout cxr``: the Kermany JPEGs, PNG, and DICOM (CR/DX) radiographs
(``*.dcm`` or extensionless files with the DICM preamble)."""
_NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

# Chest x-ray (Kermany et al.) file names: person1_bacteria_1, person1630_virus_2825, IM-0115-0001,
# NORMAL2-IM-1427-0001. The patient id is the part before the per-image counter.
_CXR_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-\d+$"),
)
_warned_cxr_names = False


@dataclass(frozen=True)
class SourceItem:
    """One input item: an image file, a volume file, or a DICOM series folder.

    Attributes:
        path: the file, or the folder of a DICOM series.
        relpath: path relative to the input root, POSIX separators: the base of the item id.
        subject: the subject (patient) the item belongs to.
        label: class label where the layout gives one (e.g. NORMAL / PNEUMONIA).
        split: train / test / val where the layout gives one.
    """

    path: Path
    relpath: str
    subject: str
    label: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class BratsSubject:
    """One BraTS subject folder and its modality files.

    Attributes:
        subject: the subject folder name, e.g. ``BraTS20_Training_001``.
        folder: the subject folder.
        files: modality (``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``) → file.
    """

    subject: str
    folder: Path
    files: dict[str, Path]


# ------------------------------------------------------------------------------------------------ common


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _require_dir(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError("does not exist", root)
    if not root.is_dir():
        raise InputError("is not a folder", root)
    return root


def _stem(name: str) -> str:
    """File name without its format suffix (``a.nii.gz`` → ``a``)."""
    lower = name.lower()
    for suffix in (".nii.gz",):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem if PurePosixPath(name).suffix else name


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(f"invalid subject pattern '{pattern}': {exc}") from exc


def subject_for(relpath: str, subject_pattern: str | None = None) -> str:
    """The subject of a generic-folder item.

    Args:
        relpath: the item's path relative to the input root (POSIX separators).
        subject_pattern: optional regex applied with ``re.search`` to ``relpath``; the subject is its first
            group if it has groups, else the whole match.

    Returns:
        The first directory component of ``relpath`` if it has one, else the file stem (``a.nii.gz`` →
        ``a``); or what ``subject_pattern`` extracts.

    Raises:
        InputError: the pattern is not a valid regex, does not match, or matches an empty string.
    """
    if subject_pattern is not None:
        regex = _compile(subject_pattern)
        match = regex.search(relpath)
        if match is None:
            raise InputError(f"subject pattern '{subject_pattern}' does not match '{relpath}'")
        subject = match.group(1) if regex.groups else match.group(0)
        if not subject:
            raise InputError(f"subject pattern '{subject_pattern}' gives an empty subject for '{relpath}'")
        return subject
    parts = PurePosixPath(relpath).parts
    if len(parts) > 1:
        return parts[0]
    return _stem(parts[0]) if parts else relpath


def _looked_for() -> str:
    return ", ".join(SUFFIXES_ALL) + ", DICOM series folders"


# ------------------------------------------------------------------------------------------------ detect


def _brats_file(folder: Path, modality: str) -> Path | None:
    """``<folder>/<folder name>_<modality>.nii.gz`` (or ``.nii``) if it exists: an exact suffix match."""
    for suffix in _NIFTI_SUFFIXES:
        candidate = folder / f"{folder.name}_{modality}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _is_brats_subject(folder: Path) -> bool:
    """A folder holding at least one ``<folder name>_<modality>.nii[.gz]`` file."""
    return folder.is_dir() and any(_brats_file(folder, m) is not None for m in BRATS_MODALITIES)


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    except OSError as exc:
        raise InputError(f"cannot list folder ({exc.strerror or exc})", root) from exc


def _cxr_label_dirs(root: Path) -> list[tuple[str, str, Path]]:
    """``(split, label, folder)`` for every ``root/<split>/<label>`` folder that exists."""
    found = []
    for split in CXR_SPLITS:
        for label in CXR_LABELS:
            folder = root / split / label
            if folder.is_dir():
                found.append((split, label, folder))
    return found


def detect_layout(root: Path) -> str:
    """Guess the layout of an input root.

    Args:
        root: the input folder (or file).

    Returns:
        ``'brats'`` if a subfolder is a BraTS subject (``X/X_t1.nii.gz`` etc.), ``'cxr'`` if the root holds
        ``train|test|val/NORMAL|PNEUMONIA`` folders, else ``'folder'`` (also for a single file).

    Raises:
        InputError: the root does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise InputError("does not exist", root)
    if not root.is_dir():
        return "folder"
    if any(_is_brats_subject(d) for d in _subdirs(root)):
        return "brats"
    if _cxr_label_dirs(root):
        return "cxr"
    return "folder"


# ------------------------------------------------------------------------------------------------ folder


def _companion_of(path: Path) -> Path | None:
    """The header file a data file belongs to (``x.REC`` → ``x.PAR``), if that header exists beside it."""
    suffix = suffix_of(path)
    for header_suffix in COMPANION_SUFFIXES.get(suffix, ()):
        stem = path.name[: -len(suffix)]
        for name in (stem + header_suffix, stem + header_suffix.upper()):
            if (path.parent / name).is_file():
                return path.parent / name
    return None


def summarize_skipped(skipped: list[tuple[str, str]]) -> str:
    """One line counting skipped files by reason with one example each, e.g. ``3 file(s) skipped: 2
    unsupported file type '.txt' (e.g. a/notes.txt); 1 DICOM object without an image (...)``."""
    counts: dict[str, int] = {}
    example: dict[str, str] = {}
    for rel, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
        example.setdefault(reason, rel)
    parts = [
        f"{n} {reason} (e.g. {example[reason]})"
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return f"{len(skipped)} file(s) skipped: " + "; ".join(parts)


def _walk_error(exc: OSError) -> None:
    """os.walk's error hook: a folder that cannot be listed is an error, never silently skipped."""
    where = getattr(exc, "filename", None)
    raise InputError(f"cannot read folder ({exc.strerror or exc}); its images would be missed", where)


def discover_folder(
    root: Path, subject_pattern: str | None = None, skipped: list[tuple[str, str]] | None = None
) -> list[SourceItem]:
    """Every supported image under a folder (recursively), or the single file given.

    Hidden files and folders are skipped (logged at debug level). Unsupported files and anything that is
    not a regular file (pipes, sockets) are skipped and counted: appended to ``skipped`` when given, else
    reported in one summary warning. A data file read with its header (``.REC`` of a ``.PAR``, ``.img`` of
    a ``.hdr``, ``.BRIK`` of a ``.HEAD``) is part of that item. A folder holding one DICOM series is one
    item; its slice files are not listed separately. A folder that cannot be listed is an error.

    Args:
        root: a folder, or a single image file.
        subject_pattern: optional regex for subjects, see :func:`subject_for`.
        skipped: if given, receives ``(relpath, reason)`` for every skipped file.

    Returns:
        Items sorted by ``relpath``.

    Raises:
        InputError: missing root, unreadable folder, nothing supported found, unsupported single file, bad
            subject pattern.
    """
    root = Path(root)
    if subject_pattern is not None:
        _compile(subject_pattern)  # fail on a bad regex before walking the tree
    if not root.exists():
        raise InputError("does not exist", root)
    if root.is_file():
        if not supported(root):
            raise InputError(f"not a supported image file (looked for {_looked_for()})", root)
        return [SourceItem(path=root, relpath=root.name, subject=subject_for(root.name, subject_pattern))]
    if is_dicom_series_dir(root):
        return [SourceItem(path=root, relpath=root.name, subject=subject_for(root.name, subject_pattern))]

    found: list[tuple[str, Path]] = []
    passed = skipped
    skipped = [] if skipped is None else skipped
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        here = Path(dirpath)
        for name in sorted(d for d in dirnames if _hidden(d)):
            logger.debug("skipping hidden folder %s", here / name)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        series_files: set[str] = set()
        if here != root and is_dicom_series_dir(here):
            found.append((here.relative_to(root).as_posix(), here))
            series_files = {p.name for p in dicom_series_files(here)}
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            suffix = suffix_of(name)
            if _hidden(name):
                logger.debug("skipping hidden file %s", path)
            elif name in series_files:
                continue
            elif not path.is_file():
                skipped.append((rel, "not a regular file (pipe, socket, device or broken link)"))
            elif suffix in SUFFIXES_ALL or (suffix == "" and supported(path)):
                found.append((rel, path))
            elif suffix in COMPANION_SUFFIXES:
                if _companion_of(path) is None:
                    heads = "/".join(COMPANION_SUFFIXES[suffix])
                    skipped.append((rel, f"data file without its header ({heads}) beside it"))
            else:
                skipped.append((rel, f"unsupported file type {suffix or '(no suffix)'!r}"))
    if passed is None and skipped:
        logger.warning("%s (under %s)", summarize_skipped(skipped), root)
    if not found:
        raise InputError(f"no supported images found (looked for {_looked_for()})", root)
    found.sort(key=lambda item: item[0])
    return [SourceItem(path=p, relpath=rel, subject=subject_for(rel, subject_pattern)) for rel, p in found]


# ------------------------------------------------------------------------------------------------- BraTS


def discover_brats(root: Path, modalities: tuple[str, ...] = BRATS_MODALITIES) -> list[BratsSubject]:
    """The BraTS subject folders under a root, with their modality files.

    A subject folder is any folder ``X`` holding ``X_<modality>.nii.gz`` (or ``.nii``) files, e.g.
    ``BraTS20_Training_001`` or ``BraTS2021_00000``. Modality suffixes match exactly (``_t1`` never matches
    ``_t1ce``). Other subfolders are skipped with a debug message.

    Args:
        root: the folder holding the subject folders (e.g. ``MICCAI_BraTS2020_TrainingData``).
        modalities: modalities every subject must have, from ``t1, t1ce, t2, flair, seg``.

    Returns:
        Subjects sorted by name.

    Raises:
        InputError: missing root, unknown modality, no subject folders, or a subject missing a modality.
    """
    modalities = tuple(modalities)
    if not modalities:
        raise InputError(f"no BraTS modalities requested (choose from {', '.join(BRATS_MODALITIES)})")
    for mod in modalities:
        if mod not in BRATS_MODALITIES:
            raise InputError(
                f"unknown BraTS modality {mod!r} (choose from {', '.join(BRATS_MODALITIES)})"
                f"{did_you_mean(mod, BRATS_MODALITIES)}"
            )
    root = _require_dir(root)
    subjects: list[BratsSubject] = []
    for folder in _subdirs(root):
        if not _is_brats_subject(folder):
            logger.debug("skipping %s: not a BraTS subject folder", folder)
            continue
        files: dict[str, Path] = {}
        for mod in modalities:
            path = _brats_file(folder, mod)
            if path is None:
                present = sorted(p.name for p in folder.iterdir() if suffix_of(p) in _NIFTI_SUFFIXES)
                raise InputError(
                    f"BraTS subject {folder.name} has no {folder.name}_{mod}.nii.gz (or .nii) for modality "
                    f"{mod!r}; NIfTI files there: {', '.join(present) or 'none'}",
                    folder,
                )
            files[mod] = path
        subjects.append(BratsSubject(subject=folder.name, folder=folder, files=files))
    if not subjects:
        raise InputError(
            "no BraTS subject folders found (expected folders like BraTS20_Training_001 holding "
            "BraTS20_Training_001_t1.nii.gz, _t1ce, _t2, _flair, _seg)",
            root,
        )
    return subjects


# -------------------------------------------------------------------------------------------- chest x-ray


def cxr_patient_id(filename: str) -> str:
    """The patient id in a chest x-ray file name (Kermany et al. pediatric pneumonia set).

    ``person1_bacteria_1.jpeg`` → ``person1``; ``person1630_virus_2825.jpeg`` → ``person1630``;
    ``IM-0115-0001.jpeg`` → ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427``. Any other
    name gives its file stem (a warning is logged once per process).

    Args:
        filename: a file name (a path is accepted; only its last component is used).

    Returns:
        The patient id.
    """
    global _warned_cxr_names
    stem = _stem(PurePosixPath(filename.replace("\\", "/")).name)
    for pattern in _CXR_PATTERNS:
        match = pattern.search(stem)
        if match:
            return match.group(1)
    if not _warned_cxr_names:
        _warned_cxr_names = True
        logger.warning(
            "chest x-ray file name %r does not follow the personN_... / IM-NNNN-NNNN patterns; using the "
            "file stem as its patient id (and likewise for any other such names)",
            filename,
        )
    return stem


def discover_cxr(root: Path, skipped: list[tuple[str, str]] | None = None) -> list[SourceItem]:
    """The images of the chest x-ray layout ``{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg|.jpg|.png|.dcm``.

    DICOM radiographs (CR/DX; ``*.dcm`` or extensionless with the DICM preamble) are read too. Other files
    are skipped and counted (appended to ``skipped`` when given, else one summary warning).

    Args:
        root: the folder holding ``train``/``test``/``val`` (e.g. ``chest_xray``).
        skipped: if given, receives ``(relpath, reason)`` for every skipped file.

    Returns:
        Items sorted by ``relpath``, with ``split`` and ``label`` from the folders and the patient id from
        the file name (:func:`cxr_patient_id`) as subject.

    Raises:
        InputError: missing root, no split/label folders, or no images in them.
    """
    root = _require_dir(root)
    label_dirs = _cxr_label_dirs(root)
    if not label_dirs:
        raise InputError(
            f"no chest x-ray folders found (expected {{{','.join(CXR_SPLITS)}}}/{{{','.join(CXR_LABELS)}}})",
            root,
        )
    items: list[SourceItem] = []
    passed = skipped
    skipped = [] if skipped is None else skipped
    for split, label, folder in label_dirs:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise InputError(f"cannot list folder ({exc.strerror or exc})", folder) from exc
        for path in entries:
            rel = f"{split}/{label}/{path.name}"
            if _hidden(path.name):
                logger.debug("skipping %s", path)
                continue
            if not path.is_file():
                what = (
                    "folder" if path.is_dir() else "not a regular file (pipe, socket, device or broken link)"
                )
                skipped.append((rel, what if what != "folder" else "folder inside a label folder"))
                continue
            suffix = suffix_of(path)
            if suffix not in CXR_SUFFIXES and not (suffix == "" and supported(path)):
                skipped.append((rel, f"unsupported file type {suffix or '(no suffix)'!r}"))
                continue
            items.append(
                SourceItem(
                    path=path,
                    relpath=f"{split}/{label}/{path.name}",
                    subject=cxr_patient_id(path.name),
                    label=label,
                    split=split,
                )
            )
    if passed is None and skipped:
        logger.warning("%s (under %s)", summarize_skipped(skipped), root)
    if not items:
        raise InputError(
            f"no chest x-ray images found (looked for {', '.join(CXR_SUFFIXES)} in "
            f"{{{','.join(CXR_SPLITS)}}}/{{{','.join(CXR_LABELS)}}})",
            root,
        )
    items.sort(key=lambda item: item.relpath)
    return items
