"""Issue 15's privacy, resource-limit, non-finite-training and permission classes, the way a user works:
real files on disk (pydicom's and nibabel's test files, PNGs) → ``memscan prepare`` → ``memscan scan``.

- pseudonyms: no identifying name in any byte of the dataset folder or the run folder; stable across
  datasets under one key; slice suffixes kept; key and map outside the dataset; identifier-name warning
  with a count and a pattern, never the value;
- DICOM: a PatientName planted inside SharedFunctionalGroupsSequence is not in the parsed object;
- resource limits: lying headers (``.nii.gz``, ``.mgz``, a ``.hdr``/``.img`` pair) fail before
  allocating (``tracemalloc`` peak far below the claim);
- a training item with NaN/Inf is an error naming it, never a silent miss;
- permissions as a non-root user (a forked child that ``setuid``\\s to ``nobody``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import stat
import tempfile
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset as DicomDataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from memscan.cli.app import app
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.errors import InputError
from memscan.io import readers
from memscan.preprocess import pseudonyms
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import scan

runner = CliRunner()
SECRETS = ("DOE", "JOHN", "5551234", "SMITH", "ANNA", "19750312")


@pytest.fixture(autouse=True)
def _memscan_logs_reach_caplog(monkeypatch):
    """The CLI stops the ``memscan`` logger from propagating; let caplog see it again."""
    monkeypatch.setattr(logging.getLogger("memscan"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("memscan"), "level", logging.NOTSET)


def invoke(*args):
    result = runner.invoke(app, ["--quiet", *map(str, args)])
    return result.exit_code, result.stderr, result.stdout


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def _assert_no_secret(folder: Path) -> None:
    blob = _all_bytes(folder)
    assert blob, folder
    for secret in SECRETS:
        assert secret.encode() not in blob, (secret, folder)


def _raw_tree(root: Path) -> Path:
    """Two subjects named like patients, each a DICOM file (pydicom's CT_small) and a NIfTI volume."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(3)
    for subj in ("DOE_JOHN_MRN5551234", "SMITH_ANNA_19750312"):
        d = root / "raw" / subj
        d.mkdir(parents=True)
        vol = (rng.random((128, 128, 3)) * 1000).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "t1.nii.gz")
        ct.PixelData = (rng.random((128, 128)) * 1000).astype(np.int16).tobytes()
        ct.save_as(d / "ct.dcm")
    return root / "raw"


# ------------------------------------------------------------------------------------------- pseudonyms


def test_pseudonymize_hides_every_name_in_dataset_and_run_and_lines_up_subjects(tmp_path):
    raw = _raw_tree(tmp_path)
    key = tmp_path / "keys" / "study.key"
    args = ["--layout", "folder", "--subject-pattern", "^([^/]+)/", "--pseudonymize", "--pseudonym-key", key]
    code, err, _ = invoke("prepare", raw, "--out", tmp_path / "train", *args)
    assert code == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    map_file = tmp_path / "train.pseudonym-map.json"
    assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
    _assert_no_secret(tmp_path / "train")

    ds = Dataset.open(tmp_path / "train")
    man = pd.read_parquet(tmp_path / "train" / "manifest.parquet")
    mapping = json.loads(map_file.read_text())
    assert (
        mapping["key_id"]
        == json.loads((tmp_path / "train" / "dataset.json").read_text())["pseudonyms"]["key_id"]
    )
    # every id is its source's pseudonym plus the slice suffix; the map gives the original back
    nifti = man[man["slice_index"].notna()]
    assert len(nifti) == 6 and nifti["id"].str.fullmatch(r"F-[0-9a-f]{16}#z00[0-2]").all()
    back = {v: k for k, v in mapping["ids"].items()}
    assert back[nifti["id"].iloc[0]].endswith("/t1.nii.gz#z000")
    assert set(man["subject"]) == set(mapping["subjects"].values()) and len(set(man["subject"])) == 2
    assert set(ds.subjects) == set(man["subject"])

    # the same key on another dataset (a synthetic set holding one subject): same subject pseudonyms
    syn_raw = tmp_path / "syn_raw"
    shutil.copytree(raw / "DOE_JOHN_MRN5551234", syn_raw / "DOE_JOHN_MRN5551234")
    code, err, _ = invoke("prepare", syn_raw, "--out", tmp_path / "syn", *args)
    assert code == 0, err
    syn_man = pd.read_parquet(tmp_path / "syn" / "manifest.parquet")
    assert set(syn_man["subject"]) == {mapping["subjects"]["DOE_JOHN_MRN5551234"]}
    assert set(syn_man["id"]) <= set(man["id"])  # same files → same pseudonyms

    # a scan of the two: copies found, and nothing identifying in any table, summary or report
    code, err, _ = invoke(
        "scan",
        tmp_path / "train",
        tmp_path / "syn",
        "--out",
        tmp_path / "run",
        "--baseline-items",
        "0",
        "--top-k",
        "1",
    )
    assert code == 0, err
    syn = pd.read_parquet(tmp_path / "run" / "synthetic.parquet")
    assert syn["flagged"].all()
    _assert_no_secret(tmp_path / "run")


def test_a_new_key_is_written_beside_the_dataset_and_warned_about(tmp_path, caplog):
    raw = _raw_tree(tmp_path)
    with caplog.at_level(logging.INFO):
        prepare_dataset(raw, tmp_path / "ds", PrepareOptions(layout="folder", pseudonymize=True))
    assert (tmp_path / "ds.pseudonym-key").is_file() and (tmp_path / "ds.pseudonym-map.json").is_file()
    assert any("wrote a new pseudonym key" in r.getMessage() for r in caplog.records)
    _assert_no_secret(tmp_path / "ds")


def test_key_or_map_inside_the_dataset_and_a_bad_key_are_refused(tmp_path):
    raw = _raw_tree(tmp_path)
    for flag, path in (
        ("--pseudonym-key", tmp_path / "ds" / "k"),
        ("--pseudonym-map", tmp_path / "ds" / "m"),
    ):
        code, err, _ = invoke("prepare", raw, "--out", tmp_path / "ds", "--pseudonymize", flag, path)
        assert code == 2 and "kept apart from the dataset" in err, err
    bad = tmp_path / "bad.key"
    bad.write_text("not hex\n")
    code, err, _ = invoke("prepare", raw, "--out", tmp_path / "ds", "--pseudonymize", "--pseudonym-key", bad)
    assert code == 2 and "not a pseudonym key file" in err and "Traceback" not in err
    code, err, _ = invoke("prepare", raw, "--out", tmp_path / "ds", "--pseudonym-key", bad)
    assert code == 2 and "--pseudonymize" in err
    assert not (tmp_path / "ds").exists()


def test_identifier_names_are_warned_with_count_and_pattern_never_the_value(tmp_path, caplog):
    raw = _raw_tree(tmp_path)
    with caplog.at_level(logging.WARNING):
        prepare_dataset(raw, tmp_path / "ds", PrepareOptions(layout="folder", subject_pattern="^([^/]+)/"))
    msgs = [r.getMessage() for r in caplog.records if "look like identifiers" in r.getMessage()]
    assert len(msgs) == 1
    assert msgs[0].startswith("2 file/folder name part(s)") and "AAA_AAAA" in msgs[0] and "9999999" in msgs[0]
    assert not any(s in msgs[0] for s in SECRETS)
    # the heuristics, one by one (and a BraTS-style name is not flagged)
    hits = pseudonyms.identifier_hints(["Doe^Jane", "scan_2001-02-03", "acc12345678", "BraTS2021_00001"])
    assert {k: n for k, (n, _) in hits.items()} == {"name": 1, "date": 1, "digit run": 1}


def test_pseudonyms_are_keyed_and_stable():
    a, b = pseudonyms.Pseudonymizer(b"k" * 32), pseudonyms.Pseudonymizer(b"k" * 32)
    c = pseudonyms.Pseudonymizer(b"j" * 32)
    assert a.subject("DOE_JOHN") == b.subject("DOE_JOHN") != c.subject("DOE_JOHN")
    assert a.item("x/v.nii.gz#z078", "x/v.nii.gz") == a.source("x/v.nii.gz") + "#z078"
    assert a.item("x/a.npy[3]", "x/a.npy").endswith("[3]")


# ------------------------------------------------------------------------------------------------- DICOM


def test_patient_name_nested_in_a_whitelisted_sequence_is_not_kept(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    measures = DicomDataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.PatientName = "NESTED^SECRET"
    group = DicomDataset()
    group.PixelMeasuresSequence = Sequence([measures])
    group.PatientName = "DOE^JOHN"
    group.PatientID = "MRN5551234"
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    path = tmp_path / "planted.dcm"
    ds.save_as(path)
    assert b"NESTED^SECRET" in path.read_bytes()
    parsed = readers._dcmread(path)
    keywords = [e.keyword for e in parsed.iterall()]
    assert "PatientName" not in keywords and "PatientID" not in keywords
    assert "PixelSpacing" in keywords  # the whitelisted nested element is kept
    # and prepare → dataset: nothing of it anywhere
    (tmp_path / "raw").mkdir()
    shutil.copy(path, tmp_path / "raw" / "a.dcm")
    prepare_dataset(tmp_path / "raw", tmp_path / "out", PrepareOptions(layout="folder"))
    blob = _all_bytes(tmp_path / "out")
    assert b"SECRET" not in blob and b"DOE" not in blob


# --------------------------------------------------------------------------------------- resource limits


def _liar_header(shape=(1000, 1000, 1000)) -> bytes:
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(np.float32)
    h.set_data_offset(352)
    return h.binaryblock + b"\0" * 4


@pytest.mark.parametrize("padding", [0, 8 << 20])
def test_a_lying_nii_gz_header_fails_before_allocating(tmp_path, padding):
    path = tmp_path / "liar.nii.gz"
    with gzip.open(path, "wb") as fh:  # claims 4 GB; holds 352 bytes (+ 8 MiB of zeros)
        fh.write(_liar_header() + b"\0" * padding)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="header claims .* voxels") as exc:
            readers.read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(exc.value)
    assert peak < 64 << 20, peak  # never the claimed 4 GB (nor the 8 MiB stream at once)


def test_lying_mgz_and_compressed_pair_headers_fail(tmp_path):
    mgh = nib.MGHImage(np.zeros((4, 4, 4), np.float32), np.eye(4))
    mgh.header.set_data_shape((1000, 1000, 1000))
    with gzip.open(tmp_path / "liar.mgz", "wb") as fh:
        fh.write(mgh.header.binaryblock + b"\0" * 64)
    with pytest.raises(InputError, match="header claims"):
        readers.read_image(tmp_path / "liar.mgz")
    pair = nib.Nifti1Pair(np.zeros((4, 4, 4), np.float32), np.eye(4))
    pair.header.set_data_shape((800, 800, 800))
    (tmp_path / "p.hdr").write_bytes(pair.header.binaryblock)
    (tmp_path / "p.img").write_bytes(b"\0" * 1024)
    with pytest.raises(InputError, match="header claims"):
        readers.read_image(tmp_path / "p.hdr")
    # an honest compressed volume still reads
    vol = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ok.nii.gz")
    assert readers.read_image(tmp_path / "ok.nii.gz").array.size == vol.size


# ------------------------------------------------------------------------------------ non-finite training


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_training_item_is_an_error_naming_it(tmp_path, bad):
    rng = np.random.default_rng(1)
    items = rng.random((6, 1, 8, 8)).astype(np.float32)
    items[4, 0, 3, 3] = bad
    with DatasetWriter(tmp_path / "train", (1, 8, 8), "float32", ("g",), recipe={"name": "t"}) as w:
        for i, item in enumerate(items):
            w.add(item, {"id": f"t{i}", "subject": f"s{i}"})
        w.commit()
    with DatasetWriter(tmp_path / "syn", (1, 8, 8), "float32", ("g",), recipe={"name": "t"}) as w:
        w.add(np.nan_to_num(items[4], posinf=0.0), {"id": "copy-of-t4", "subject": "m"})
        w.add(items[1], {"id": "copy-of-t1", "subject": "m"})
        w.commit()
    with pytest.raises(InputError, match="training item 't4' holds NaN or infinite values"):
        scan(tmp_path / "train", tmp_path / "syn", tmp_path / "run", ScanOptions(top_k=1, baseline_items=0))
    code, err, _ = invoke(
        "scan", tmp_path / "train", tmp_path / "syn", "--out", tmp_path / "run2", "--baseline-items", "0"
    )
    assert code == 2 and "'t4'" in err and "Traceback" not in err
    assert not (tmp_path / "run2" / "synthetic.parquet").exists()


# ------------------------------------------------------------------------------ permissions as non-root

NOBODY = 65534


def _as_nobody(fn) -> tuple[int, str]:
    """Run ``fn()`` in a forked child after ``setuid(nobody)``; (exit code, message) as the CLI maps them."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code, msg = 1, ""
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        except InputError as exc:
            code, msg = 2, str(exc)
        except OSError as exc:
            code, msg = 2, f"OSError: {exc}"
        except BaseException as exc:  # noqa: BLE001 — report any other failure to the parent
            code, msg = 1, f"{type(exc).__name__}: {exc}"
        os.write(w, f"{code}\n{msg}".encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    code, _, msg = out.partition("\n")
    return int(code), msg


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to switch to nobody")
def test_unreadable_inputs_and_read_only_outputs_as_a_non_root_user():
    root = Path(tempfile.mkdtemp(prefix="memscan-nobody-"))
    try:
        os.chmod(root, 0o777)
        rng = np.random.default_rng(0)
        for subj in ("a", "b"):
            (root / "raw" / subj).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                root / "raw" / subj / "x.png"
            )
        for p in [root / "raw", *(root / "raw").iterdir()]:
            os.chmod(p, 0o755)
            for f in p.iterdir():
                if f.is_file():
                    os.chmod(f, 0o644)
        opts = PrepareOptions(layout="folder")
        # warm every import as root (the child cannot read root's interpreter folder)
        prepare_dataset(root / "raw", root / "warm", opts)
        shutil.rmtree(root / "warm")

        os.chmod(root / "raw" / "b", 0o000)
        code, msg = _as_nobody(lambda: prepare_dataset(root / "raw", root / "out1", opts))
        assert code == 2 and "raw/b" in msg and "Traceback" not in msg, msg
        assert not (root / "out1").exists()

        os.chmod(root / "raw" / "b", 0o755)
        (root / "ro").mkdir()
        os.chmod(root / "ro", 0o555)
        code, msg = _as_nobody(lambda: prepare_dataset(root / "raw", root / "ro" / "ds", opts))
        assert code == 2 and "ro" in msg, msg
        code, msg = _as_nobody(lambda: prepare_dataset(root / "raw", root / "ok", opts))
        assert code == 0, msg
        assert Dataset.open(root / "ok").n_items == 2
    finally:
        for p in root.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o755)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------- prepare: kills, one writer


def _png_tree(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(2)
    for i in range(n):
        d = root / "raw" / f"s{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f"x{i}.png")
    return root / "raw"


def test_kill_9_mid_prepare_leaves_no_dataset_and_the_next_run_cleans_up(tmp_path):
    import subprocess
    import sys
    import textwrap

    raw = _png_tree(tmp_path)
    src = Path(__file__).resolve().parents[2] / "src"
    code = textwrap.dedent(
        f"""
        import os, signal
        from memscan.dataset import store
        from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
        add, n = store.DatasetWriter.add, [0]
        def dying_add(self, *a, **k):
            n[0] += 1
            if n[0] == 4:
                self._flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return add(self, *a, **k)
        store.DatasetWriter.add = dying_add
        prepare_dataset({str(raw)!r}, {str(tmp_path / "ds")!r}, PrepareOptions(layout="folder"))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(src)})
    assert r.returncode == -9
    assert not (tmp_path / "ds").exists()
    assert len(list(tmp_path.glob(".ds.tmp-*"))) == 1  # the killed run's leftover
    (tmp_path / ".ds.tmp-mine").mkdir()
    (tmp_path / ".ds.tmp-mine" / "notes.txt").write_text("a user's")  # not ours: must survive
    ds = prepare_dataset(raw, tmp_path / "ds", PrepareOptions(layout="folder"))
    assert ds.n_items == 6
    assert [p.name for p in tmp_path.glob(".ds.tmp-*")] == [".ds.tmp-mine"]
    assert (tmp_path / ".ds.tmp-mine" / "notes.txt").read_text() == "a user's"


def test_a_second_prepare_into_the_same_dataset_refuses(tmp_path):
    import fcntl

    raw = _png_tree(tmp_path)
    fd = os.open(tmp_path / ".ds.prepare-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another prepare holds it
        with pytest.raises(InputError, match="another memscan prepare is writing this dataset"):
            prepare_dataset(raw, tmp_path / "ds", PrepareOptions(layout="folder"))
    finally:
        os.close(fd)
    assert prepare_dataset(raw, tmp_path / "ds", PrepareOptions(layout="folder")).n_items == 6


def test_a_full_disk_under_prepare_overwrite_keeps_the_old_dataset(tmp_path):
    """A real EFBIG (``RLIMIT_FSIZE``: writes past 4 KiB fail, as on a full disk) in a subprocess."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    small = _png_tree(tmp_path / "a", n=4)
    big = tmp_path / "b" / "raw"
    rng = np.random.default_rng(9)
    for i in range(40):
        (big / f"s{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(big / f"s{i % 2}" / f"{i}.png")
    prepare_dataset(small, tmp_path / "ds", PrepareOptions(layout="folder"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir() if p.is_file()}
    src = Path(__file__).resolve().parents[2] / "src"
    r = subprocess.run(
        [sys.executable, "-m", "memscan", "--quiet", "prepare", big, "--out", tmp_path / "ds", "--overwrite"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(tmp_path / "ds") in lines[0] and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_a_png_header_claiming_144_megapixels_is_one_error_and_no_warning(tmp_path, recwarn):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "huge.png"
    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="144 megapixels exceeds"):
        readers.read_image(path)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_pseudonymized_brats_keeps_split_and_slice_suffixes(tmp_path):
    from memscan import phantoms

    names = phantoms.write_brats_tree(tmp_path / "raw", 3, shape=(24, 24, 12))
    plain = prepare_dataset(
        tmp_path / "raw", tmp_path / "plain", PrepareOptions(layout="brats", size=16, test_subjects=1)
    )
    ds = prepare_dataset(
        tmp_path / "raw",
        tmp_path / "ds",
        PrepareOptions(layout="brats", size=16, test_subjects=1, pseudonymize=True),
        pseudonym_key=tmp_path / "k",
    )
    a = pd.read_parquet(tmp_path / "plain" / "manifest.parquet")
    b = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
    assert ds.n_items == plain.n_items and list(a["split"]) == list(b["split"])  # same split, same order
    assert list(a["id"].str.extract(r"(#z\d{3})$")[0]) == list(b["id"].str.extract(r"(#z\d{3})$")[0])
    assert b["id"].str.fullmatch(r"F-[0-9a-f]{16}#z\d{3}").all()
    assert (
        a.groupby("subject").size().sort_values().values == b.groupby("subject").size().sort_values().values
    ).all()
    blob = _all_bytes(tmp_path / "ds")
    assert not any(n.encode() in blob for n in names) and b"BraTS" not in blob
    assert np.array_equal(ds.read(0, ds.n_items), plain.read(0, plain.n_items))  # pixels untouched
