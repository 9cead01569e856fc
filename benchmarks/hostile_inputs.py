"""Hostile-input sweep over every class of issue 15: data loss, silent wrong results, tracebacks, privacy.

Extends ``hostile_run_folder.py`` (its 31 scan/report cases run first) with the input side and the fault
injections, each through the real command line:

* **data loss** — ``prepare --out`` onto a user's folder or another dataset, a full disk (``RLIMIT_FSIZE``,
  the kernel's per-process file-size limit: writes past it fail with ``EFBIG`` like a full disk) under
  ``prepare --overwrite``, ``scan`` and ``report`` over a previous whole result, ``kill -9`` of ``prepare``
  and of ``scan`` the moment they start writing (then the same command again), two scans at once;
* **silent wrong** — float64 beyond float32, NaN, a training item with NaN/Inf, duplicate ids and null
  subjects in a manifest, a FIFO named ``x.png``, unreadable folders and files (as the user ``nobody``);
* **tracebacks** — lying, truncated, zero-byte and garbage files of every reader family, a 144-megapixel
  PNG header, a truncated Zarr chunk, a manifest index out of range, a torn ``dataset.json``, read-only
  output folders for prepare, scan and report (as ``nobody``);
* **privacy** — ``prepare --pseudonymize`` (no identifying byte in the dataset, the run folder or the HTML
  report; key and map apart, owner-only), the identifier-name warning (count and pattern, never the
  value), a PatientName nested in ``SharedFunctionalGroupsSequence``, a key file inside the dataset.

Verdicts as in ``hostile_run_folder.py`` (clean / traceback / silent wrong / lost; a hang is "silent
wrong"). Permission cases run in a forked child that switches to ``nobody`` (the sweep must run as root
for that; as another user they run as that user).

Run: ``PYTHONPATH=src python benchmarks/hostile_inputs.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from hostile_run_folder import ENV, Case, cli, run_folder_groups, run_groups, write

from memscan.dataset.store import DatasetWriter
from memscan.scanning import runfolder

SECRETS = (b"DOE", b"JOHN", b"5551234", b"SMITH", b"ANNA", b"19750312", b"NESTED")
NOBODY = 65534


# ------------------------------------------------------------------------------------------ fault tools


def file_size_limit(nbytes: int):
    """``preexec_fn``: writes past ``nbytes`` fail with EFBIG (a full disk, per process)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def limited(nbytes: int):
    def run(root: Path, args: list) -> subprocess.CompletedProcess:
        return cli(*args, preexec=file_size_limit(nbytes))

    return run


def as_nobody(root: Path, args: list) -> subprocess.CompletedProcess:
    """The command in a forked child running as ``nobody`` (through Typer's runner: the interpreter under
    root's home cannot be executed by nobody, so imports are warmed in the parent before forking)."""
    if os.geteuid() != 0:
        return cli(*args)
    from typer.testing import CliRunner

    from memscan.cli.app import app

    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r_fd)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            res = CliRunner().invoke(app, ["--quiet", *map(str, args)])
            out = json.dumps([res.exit_code, res.stdout, res.stderr])
        except BaseException as exc:  # noqa: BLE001 - reported as a traceback-class failure
            out = json.dumps([1, "", f"Traceback (child): {exc!r}"])
        os.write(w_fd, out.encode())
        os._exit(0)
    os.close(w_fd)
    with os.fdopen(r_fd) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    code, stdout, stderr = json.loads(data)
    return subprocess.CompletedProcess(args, code, stdout, stderr)


def kill_when(appears: str, *, then_again: bool = True):
    """Start the command, SIGKILL it as soon as a path matching ``appears`` (glob under root) exists,
    then (``then_again``) run the same command to completion and return that run."""

    def run(root: Path, args: list) -> subprocess.CompletedProcess:
        p = subprocess.Popen(
            [sys.executable, "-m", "memscan", "--quiet", *map(str, args)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while p.poll() is None and not list(root.glob(appears)) and time.monotonic() < deadline:
            time.sleep(0.005)
        killed = p.poll() is None
        p.kill()
        p.wait()
        (root / f"killed-{abs(hash(appears))}").write_text("yes" if killed else "finished first")
        return cli(*args) if then_again else subprocess.CompletedProcess(args, p.returncode, "", "")

    return run


def locked(folder: Path) -> bool:
    """True once some process holds ``flock`` on ``folder`` (read from ``/proc/locks``, so the probe never
    takes the lock itself)."""
    try:
        ino = os.stat(folder).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    return any(
        len(f) > 5 and f[1] == "FLOCK" and f[5].split(":")[-1] == str(ino)
        for f in (ln.split() for ln in lines)
    )


def two_at_once(root: Path, args: list) -> subprocess.CompletedProcess:
    """A second identical scan while the first holds the run's lock (the first is paused with SIGSTOP
    the moment its work folder exists, so the race is certain); returns the second, and notes in its
    stderr if the first then failed to finish."""
    first = subprocess.Popen(
        [sys.executable, "-m", "memscan", "--quiet", *map(str, args)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = Path(args[args.index("--out") + 1])
    while first.poll() is None and not locked(runfolder.work_folder(out)):
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli(*args)
    finally:
        first.send_signal(signal.SIGCONT)
    first.wait()
    if first.returncode != 0 or not (out / "synthetic.parquet").exists():
        second.stderr += f"\nfirst scan failed ({first.returncode})"
    return second


# --------------------------------------------------------------------------------------------- the data


def png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width × height`` with a tiny IDAT (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def nifti_liar(path: Path, shape=(1000, 1000, 1000), compressed: bool = False) -> None:
    import nibabel as nib

    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(np.float32)
    h.set_data_offset(352)
    raw = h.binaryblock + b"\0" * 4
    if compressed:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def names_tree(root: Path) -> Path:
    """Subjects named like patients; a DICOM (pydicom's CT_small) with a PatientName planted inside
    SharedFunctionalGroupsSequence, and a PNG, per subject."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence

    rng = np.random.default_rng(4)
    for subj in ("DOE_JOHN_MRN5551234", "SMITH_ANNA_19750312"):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PixelData = (rng.random((128, 128)) * 1000).astype(np.int16).tobytes()
        pm = DicomDataset()
        pm.PixelSpacing = [0.5, 0.5]
        pm.PatientName = "NESTED^SECRET"
        grp = DicomDataset()
        grp.PixelMeasuresSequence = Sequence([pm])
        ds.SharedFunctionalGroupsSequence = Sequence([grp])
        (root / "names" / subj).mkdir(parents=True)
        ds.save_as(root / "names" / subj / "ct.dcm")
    return root / "names"


def no_secret(*folders: Path) -> bool:
    for folder in folders:
        blob = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
        if not blob or any(s in blob for s in SECRETS):
            return False
    return True


def rewrite_manifest(src: Path, dst: Path, edit) -> None:
    shutil.copytree(src, dst)
    man = pd.read_parquet(dst / "manifest.parquet")
    edit(man).to_parquet(dst / "manifest.parquet", index=False)


def build(root: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(6):
        png(root / "pngs" / f"s{i % 2}" / f"x{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    for i in range(400):
        png(root / "many" / f"s{i % 8}" / f"x{i:03d}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    names_tree(root)
    bad = root / "bad"
    bad.mkdir()
    nifti_liar(bad / "liar.nii")
    nifti_liar(bad / "liar.nii.gz", compressed=True)
    import nibabel as nib

    mgh = nib.MGHImage(np.zeros((4, 4, 4), np.float32), np.eye(4))
    mgh.header.set_data_shape((1000, 1000, 1000))
    with gzip.open(bad / "liar.mgz", "wb") as fh:
        fh.write(mgh.header.binaryblock + b"\0" * 64)
    good = bad / "good.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((16, 16, 16)).astype(np.float32), np.eye(4)), good)
    (bad / "trunc.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (bad / "empty.nii").write_bytes(b"")
    png_header_only(bad / "huge.png", 12000, 12000)
    png(bad / "ok.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    (bad / "trunc.png").write_bytes((bad / "ok.png").read_bytes()[:60])
    (bad / "garbage.dcm").write_bytes(os.urandom(2048))
    (bad / "garbage.jpg").write_bytes(os.urandom(512))
    f64 = rng.random((16, 16))
    f64[3, 3] = 1e300
    np.save(bad / "f64.npy", f64)
    nan = rng.random((16, 16)).astype(np.float32)
    nan[2, 2] = np.nan
    np.save(bad / "nan.npy", nan)
    (bad / "pickle.npy").write_bytes(b"\x80\x04\x95" + os.urandom(40))
    fifo = root / "fifo"
    fifo.mkdir()
    png(fifo / "ok.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    os.mkfifo(fifo / "x.png")

    # float training set with one NaN item and one Inf item; synthetic copies of them (finite)
    items = rng.random((8, 1, 12, 12)).astype(np.float32)
    items[3, 0, 1, 1], items[6, 0, 2, 2] = np.nan, np.inf
    with DatasetWriter(root / "ftrain", (1, 12, 12), "float32", ("g",), recipe={"name": "t"}) as w:
        for i, item in enumerate(items):
            w.add(item, {"id": f"f{i}", "subject": f"s{i}"})
        w.commit()
    with DatasetWriter(root / "fsyn", (1, 12, 12), "float32", ("g",), recipe={"name": "t"}) as w:
        w.add(np.nan_to_num(items[3], nan=0.5), {"id": "copy-f3", "subject": "m"})
        w.commit()
    # a bigger pair (slow enough to be killed or raced)
    big = rng.integers(0, 256, (6000, 1, 48, 48), dtype=np.uint8)
    write(root / "big", [(f"b{i}", f"s{i % 50}", big[i]) for i in range(len(big))])
    write(root / "bigsyn", [(f"q{i}", "m", big[i * 7]) for i in range(300)])

    # damaged copies of the scan fixture's training set
    train = root / "train"
    rewrite_manifest(train, root / "dup_ids", lambda m: m.assign(id=["same"] * 2 + list(m["id"][2:])))
    rewrite_manifest(train, root / "null_subj", lambda m: m.assign(subject=[None] + list(m["subject"][1:])))
    rewrite_manifest(train, root / "bad_index", lambda m: m.assign(index=list(m["index"][:-1]) + [10_000]))
    shutil.copytree(train, root / "torn_info")
    (root / "torn_info" / "dataset.json").write_text('{"format": "memscan-dataset", "n_it')
    shutil.copytree(train, root / "bad_chunk")
    chunks = sorted(
        p for p in (root / "bad_chunk" / "images.zarr").rglob("*") if p.is_file() and "c" in p.parts
    )
    chunks[0].write_bytes(chunks[0].read_bytes()[:10])

    # for the permission cases: an input tree and output folders nobody can or cannot use
    perm = root / "perm"
    shutil.copytree(root / "pngs", perm / "raw")
    shutil.copytree(root / "pngs", perm / "raw_file")
    (perm / "ro").mkdir()
    (perm / "rw").mkdir()
    for p in [perm, *perm.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(perm / "rw", 0o777)
    os.chmod(perm / "ro", 0o555)
    os.chmod(perm / "raw" / "s1", 0o000)
    os.chmod(perm / "raw_file" / "s0" / "x0.png", 0o000)


def secret_in(text: str) -> bool:
    return any(s.decode() in text for s in SECRETS)


def input_groups(root: Path) -> list[tuple[str, list[Case]]]:
    """The prepare-side and fault-injection cases (data under ``root``, after :func:`build`)."""
    bad = root / "bad"
    no_base = ["--baseline-items", "0"]

    def prep(src: Path, out: str, *extra: object) -> Callable:
        return lambda r: [src, "--out", r / out, "--layout", "folder", *extra]

    def user_folder(r: Path) -> None:
        (r / "U2").mkdir()
        (r / "U2" / "notes.txt").write_text("precious")

    def other_dataset(r: Path) -> None:
        assert cli("prepare", r / "pngs", "--out", r / "D1", "--layout", "folder").returncode == 0

    def old_dataset(name: str) -> Callable[[Path], None]:
        def setup(r: Path) -> None:
            assert cli("prepare", r / "pngs", "--out", r / name, "--layout", "folder").returncode == 0

        return setup

    def dataset_files(name: str) -> Callable[[Path], list[Path]]:
        return lambda r: [r / name / "dataset.json", r / name / "manifest.parquet"]

    def copy_run(name: str) -> Callable[[Path], None]:
        return lambda r: shutil.copytree(r / "good", r / name)

    def run_files(name: str) -> Callable[[Path], list[Path]]:
        return lambda r: sorted(p for p in (r / name).glob("*.*") if p.is_file())

    def same_tables(a: str, b: str) -> Callable:
        def check(r: Path, p) -> bool:
            ta = {q.name: runfolder.content_bytes(q) for q in sorted((r / a).glob("*.parquet"))}
            tb = {q.name: runfolder.content_bytes(q) for q in sorted((r / b).glob("*.parquet"))}
            return bool(ta) and ta == tb

        return check

    def killed_prepare_ok(r: Path, p) -> bool:
        from memscan.dataset.store import Dataset

        return Dataset.open(r / "K1").n_items == 400 and not list(r.glob(".K1.tmp-*"))

    def pseudonymized(r: Path, p) -> bool:
        key, mp = r / "keys" / "k", r / "P1.pseudonym-map.json"
        owner_only = all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in (key, mp))
        return owner_only and no_secret(r / "P1") and b"DOE_JOHN" in mp.read_bytes()

    def scan_pseudonymized(r: Path) -> None:
        assert (
            cli(
                "prepare",
                r / "names",
                "--out",
                r / "P2",
                "--layout",
                "folder",
                "--subject-pattern",
                "^([^/]+)/",
                "--pseudonymize",
                "--pseudonym-key",
                r / "keys" / "k2",
            ).returncode
            == 0
        )

    def report_after(run: str) -> Callable:
        def check(r: Path, p) -> bool:
            return cli("report", r / run).returncode == 0 and no_secret(r / run)

        return check

    def read_only_run(r: Path) -> None:
        shutil.copytree(r / "good", r / "perm" / "rorun")
        for q in [r / "perm" / "rorun", *(r / "perm" / "rorun").rglob("*")]:
            os.chmod(q, 0o755 if q.is_dir() else 0o644)

    prepare_cases = [
        # data loss
        Case(
            "prepare --out onto a user's folder",
            prep(root / "pngs", "U2"),
            2,
            setup=user_folder,
            user_files=lambda r: [r / "U2" / "notes.txt"],
        ),
        Case(
            "prepare --out onto another dataset, no --overwrite",
            prep(root / "many", "D1"),
            2,
            setup=other_dataset,
            user_files=dataset_files("D1"),
        ),
        Case(
            "prepare --overwrite with a full disk (EFBIG)",
            prep(root / "many", "D2", "--overwrite"),
            2,
            setup=old_dataset("D2"),
            user_files=dataset_files("D2"),
            run=limited(4096),
        ),
        Case(
            "kill -9 of prepare as it writes, then again",
            prep(root / "many", "K1"),
            0,
            run=kill_when(".K1.tmp-*"),
            check=killed_prepare_ok,
        ),
        # silent wrong
        Case("float64 1e300 in .npy", prep(bad / "f64.npy", "x1"), 2),
        Case("NaN in .npy (default --nan error)", prep(bad / "nan.npy", "x2"), 2),
        Case(
            "NaN in .npy with --nan zero: counted",
            prep(bad / "nan.npy", "x3", "--nan", "zero"),
            0,
            check=lambda r, p: (
                json.loads((r / "x3" / "dataset.json").read_text())["nan"]["values_zeroed"] == 1
            ),
        ),
        Case(
            "FIFO named x.png",
            prep(root / "fifo", "x4"),
            0,
            timeout=60,
            check=lambda r, p: (
                "x.png" in json.dumps(json.loads((r / "x4" / "dataset.json").read_text())["skipped"])
            ),
        ),
        Case(
            "unreadable subfolder (as nobody)",
            prep(root / "perm" / "raw", "perm/rw/x5"),
            2,
            run=as_nobody,
            check=lambda r, p: "s1" in p.stderr,
        ),
        Case(
            "unreadable file (as nobody)",
            prep(root / "perm" / "raw_file", "perm/rw/x6"),
            2,
            run=as_nobody,
            check=lambda r, p: "x0.png" in p.stderr,
        ),
        # tracebacks
        Case("read-only output folder (as nobody)", prep(root / "pngs", "perm/ro/x7"), 2, run=as_nobody),
        Case(
            "NIfTI header claims 1000^3, 356-byte file",
            prep(bad / "liar.nii", "x8"),
            2,
            check=lambda r, p: "header claims" in p.stderr,
        ),
        Case(
            "NIfTI.gz header claims 1000^3",
            prep(bad / "liar.nii.gz", "x9"),
            2,
            check=lambda r, p: "header claims" in p.stderr,
        ),
        Case(
            "MGZ header claims 1000^3",
            prep(bad / "liar.mgz", "x10"),
            2,
            check=lambda r, p: "header claims" in p.stderr,
        ),
        Case("truncated .nii.gz", prep(bad / "trunc.nii.gz", "x11"), 2),
        Case("zero-byte .nii", prep(bad / "empty.nii", "x12"), 2),
        Case("PNG header claiming 144 megapixels", prep(bad / "huge.png", "x13"), 2),
        Case("truncated PNG", prep(bad / "trunc.png", "x14"), 2),
        Case("random bytes named .dcm", prep(bad / "garbage.dcm", "x15"), 2),
        Case("random bytes named .jpg", prep(bad / "garbage.jpg", "x16"), 2),
        Case("a pickle named .npy", prep(bad / "pickle.npy", "x17"), 2),
        Case("source missing", prep(root / "nope", "x18"), 2),
        Case("--out's parent missing", prep(root / "pngs", "nope/x19"), 2),
        # privacy
        Case(
            "--pseudonymize: no name in the dataset; key/map apart, 0600",
            lambda r: [
                r / "names",
                "--out",
                r / "P1",
                "--layout",
                "folder",
                "--subject-pattern",
                "^([^/]+)/",
                "--pseudonymize",
                "--pseudonym-key",
                r / "keys" / "k",
            ],
            0,
            check=pseudonymized,
        ),
        Case(
            "identifier-like names: warned with count and pattern only",
            lambda r: [
                r / "names",
                "--out",
                r / "P0",
                "--layout",
                "folder",
                "--subject-pattern",
                "^([^/]+)/",
            ],
            0,
            quiet=False,
            check=lambda r, p: (
                "look like identifiers" in p.stderr
                and not secret_in(p.stderr)
                and b"NESTED" not in b"".join(q.read_bytes() for q in (r / "P0").rglob("*") if q.is_file())
            ),
        ),
        Case(
            "pseudonym key inside the dataset folder",
            lambda r: [r / "names", "--out", r / "P3", "--pseudonymize", "--pseudonym-key", r / "P3" / "k"],
            2,
        ),
        Case(
            "--pseudonym-key without --pseudonymize",
            lambda r: [r / "names", "--out", r / "P4", "--pseudonym-key", r / "keys" / "k"],
            2,
        ),
    ]
    scan_cases = [
        Case(
            "full disk during a re-scan (EFBIG)",
            lambda r: [r / "train", r / "syn", "--out", r / "fd", *no_base],
            2,
            setup=copy_run("fd"),
            user_files=run_files("fd"),
            run=limited(2048),
        ),
        Case(
            "kill -9 of scan as it starts, then again: same tables",
            lambda r: [r / "train", r / "syn", "--out", r / "k2", *no_base],
            0,
            run=kill_when(".k2.scan-work"),
            check=same_tables("k2", "good"),
        ),
        Case(
            "two scans into one folder at once",
            lambda r: [r / "big", r / "bigsyn", "--out", r / "race", *no_base],
            2,
            run=two_at_once,
            check=lambda r, p: "another memscan scan" in p.stderr,
        ),
        Case(
            "training items with NaN and Inf",
            lambda r: [r / "ftrain", r / "fsyn", "--out", r / "s1", *no_base],
            2,
            check=lambda r, p: "'f3'" in p.stderr,
        ),
        Case("duplicate ids in a manifest", lambda r: [r / "dup_ids", r / "syn", "--out", r / "s2"], 2),
        Case("a null subject in a manifest", lambda r: [r / "null_subj", r / "syn", "--out", r / "s3"], 2),
        Case("manifest index out of range", lambda r: [r / "bad_index", r / "syn", "--out", r / "s4"], 2),
        Case("torn dataset.json", lambda r: [r / "torn_info", r / "syn", "--out", r / "s5"], 2),
        Case("truncated Zarr chunk", lambda r: [r / "bad_chunk", r / "syn", "--out", r / "s6", *no_base], 2),
        Case(
            "read-only run folder parent (as nobody)",
            lambda r: [r / "train", r / "syn", "--out", r / "perm" / "ro" / "run", *no_base],
            2,
            run=as_nobody,
        ),
        Case(
            "pseudonymised datasets: no name in the run folder or the HTML report",
            lambda r: [r / "P2", r / "P2", "--out", r / "prun", *no_base, "--top-k", "1"],
            0,
            setup=scan_pseudonymized,
            check=report_after("prun"),
        ),
    ]
    report_cases = [
        Case(
            "report with a full disk (EFBIG)",
            lambda r: [r / "fdr"],
            2,
            setup=copy_run("fdr"),
            user_files=run_files("fdr"),
            run=limited(2048),
        ),
        Case(
            "report into a read-only run folder (as nobody)",
            lambda r: [r / "perm" / "rorun"],
            2,
            setup=read_only_run,
            run=as_nobody,
        ),
    ]
    return [("prepare", prepare_cases), ("scan", scan_cases), ("report", report_cases)]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="memscan-hostile-inputs-"))
    os.chmod(root, 0o755)
    groups = run_folder_groups(root)  # writes train, syn, hold, good, ...
    build(root)
    if os.geteuid() == 0:  # warm every import in this process before forking children as nobody
        from typer.testing import CliRunner

        from memscan.cli.app import app

        for args in (
            ["prepare", root / "pngs", "--out", root / "warm", "--layout", "folder"],
            ["scan", root / "train", root / "syn", "--out", root / "warmrun", "--baseline-items", "0"],
            ["report", root / "warmrun"],
        ):
            assert CliRunner().invoke(app, ["--quiet", *map(str, args)]).exit_code == 0
    t0 = time.time()
    rows, counts = run_groups(root, groups + input_groups(root))
    for row in rows:
        print(" | ".join(map(str, row)))
    killed = {p.name: p.read_text() for p in root.glob("killed-*")}
    print("kills:", json.dumps(sorted(killed.values())))
    print(
        json.dumps(counts),
        f"({time.time() - t0:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
    )
    for p in root.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
