"""Reliability of the run folder (issue 15): one whole run or the previous one, ours only, one writer, one
run id, resume through kills and torn state, no silent "not a copy", spreadsheet-safe CSV exports.

Each test injects one class of fault: a patched write (full disk), a kill between writes (subprocess,
SIGKILL), a held lock (concurrent run), torn or zero-byte state files, a user's folder in the way.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memscan.dataset.store import DatasetWriter
from memscan.errors import InputError
from memscan.scanning import queries, runfolder, state
from memscan.scanning.options import ScanOptions
from memscan.scanning.runfolder import content_bytes, load_run, work_folder
from memscan.scanning.scanner import scan

SRC = Path(__file__).resolve().parents[2] / "src"


def _smooth(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A smooth-ish uint8 image ``[1, size, size]`` (so that different images correlate moderately)."""
    base = rng.normal(size=(size // 4, size // 4))
    img = np.kron(base, np.ones((4, 4))) + 0.3 * rng.normal(size=(size, size))
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.round().astype(np.uint8)[None]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """30 training items (6 subjects); 8 synthetic: 3 exact copies, a rot90 copy, 3 fresh, 1 constant."""
    root = tmp_path_factory.mktemp("rel")
    rng = np.random.default_rng(7)
    train = [_smooth(rng) for _ in range(30)]
    with DatasetWriter(root / "train", (1, 16, 16), "uint8", ("g",), recipe={"name": "t"}) as w:
        for i, item in enumerate(train):
            w.add(item, {"id": f"t{i:02d}", "subject": f"s{i % 6}"})
        w.commit()
    with DatasetWriter(root / "hold", (1, 16, 16), "uint8", ("g",), recipe={"name": "t"}) as w:
        for i in range(12):
            w.add(_smooth(rng), {"id": f"h{i:02d}", "subject": f"h{i % 3}"})
        w.commit()
    synth = [
        ('=HYPERLINK("http://x")', train[3]),
        ("copy-5", train[5]),
        ("@copy-9", train[9]),
        ("rot-11", np.rot90(train[11], k=3, axes=(1, 2))),  # rot90 of it is train[11]
        ("fresh-0", _smooth(rng)),
        ("fresh-1", _smooth(rng)),
        ("fresh-2", _smooth(rng)),
        ("blank", np.full((1, 16, 16), 17, dtype=np.uint8)),  # constant: no correlation exists
    ]
    with DatasetWriter(root / "synth", (1, 16, 16), "uint8", ("g",), recipe={"name": "t"}) as w:
        for sid, item in synth:
            w.add(np.ascontiguousarray(item), {"id": sid, "subject": "model"})
        w.commit()
    return root


OPTS = ScanOptions(top_k=2, baseline_items=0, query_block=2)


def _contents(run: Path) -> dict[str, bytes]:
    return {p.name: content_bytes(p) for p in sorted(run.glob("*.parquet"))}


# ---------------------------------------------------------------------------------------------- ours only


def test_a_users_folder_is_refused_and_left_untouched(data, tmp_path):
    """A folder holding a summary.json (but not memscan's marker) is not taken for a run folder."""
    user = tmp_path / "U"
    (user / "figures").mkdir(parents=True)
    (user / "figures" / "mine.png").write_bytes(b"precious")
    (user / "summary.json").write_text('{"mine": true}')
    (user / "report.html").write_text("my report")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="not a memscan run folder"):
        scan(data / "train", data / "synth", user, OPTS)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    assert not work_folder(user).exists()


def test_an_empty_folder_and_our_own_run_are_accepted(data, tmp_path):
    (tmp_path / "run").mkdir()
    first = scan(data / "train", data / "synth", tmp_path / "run", OPTS)
    marker = json.loads((tmp_path / "run" / runfolder.MARKER_FILE).read_text())
    assert marker["format"] == runfolder.RUN_FORMAT and marker["run_id"] == first.run_id
    second = scan(data / "train", data / "synth", tmp_path / "run", OPTS)
    assert second.run_id != first.run_id and load_run(tmp_path / "run").run_id == second.run_id


# ---------------------------------------------------------------------------------------------- one whole run


def test_a_rescan_never_keeps_tables_of_the_previous_run(data, tmp_path):
    run = tmp_path / "run"
    scan(data / "train", data / "synth", run, OPTS, holdout=data / "hold")
    assert (run / "holdout.parquet").exists()
    res = scan(data / "train", data / "synth", run, OPTS)
    assert not (run / "holdout.parquet").exists() and res.summary.threshold_source == "fixed"
    assert load_run(run).holdout is None


def test_full_disk_between_table_writes_keeps_the_previous_run_whole(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = scan(data / "train", data / "synth", run, OPTS)
    before = _contents(run)
    real = runfolder.write_table
    calls = {"n": 0}

    def full_disk(df, path, run_id):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(df, path, run_id)

    monkeypatch.setattr(runfolder, "write_table", full_disk)
    with pytest.raises(OSError):
        scan(data / "train", data / "synth", run, ScanOptions(top_k=1, baseline_items=0))
    assert _contents(run) == before and load_run(run).run_id == first.run_id


def test_tables_of_two_runs_are_refused_by_load_run(data, tmp_path):
    scan(data / "train", data / "synth", tmp_path / "a", OPTS)
    scan(data / "train", data / "synth", tmp_path / "b", OPTS)
    (tmp_path / "a" / "matches.parquet").write_bytes((tmp_path / "b" / "matches.parquet").read_bytes())
    with pytest.raises(InputError, match="mixes two runs"):
        load_run(tmp_path / "a")


def test_stale_temporaries_of_killed_runs_are_cleaned(data, tmp_path):
    run = tmp_path / "run"
    stale_sibling = tmp_path / f".run{'.tmp-'}deadbeef"
    stale_sibling.mkdir()
    (stale_sibling / "x.parquet").write_bytes(b"half")
    work = work_folder(run)
    work.mkdir()
    (work / ".synthetic.parquet.tmp-0badc0de").write_bytes(b"half")
    scan(data / "train", data / "synth", run, OPTS)
    assert not stale_sibling.exists() and not work.exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------- one writer


def test_a_second_scan_into_the_same_folder_refuses(data, tmp_path):
    run = tmp_path / "run"
    with runfolder.RunWriter(run):  # another scan holds the folder
        with pytest.raises(InputError, match="another memscan scan is writing"):
            scan(data / "train", data / "synth", run, OPTS)
    scan(data / "train", data / "synth", run, OPTS)  # free again


def test_concurrent_scan_from_the_command_line_exits_2(data, tmp_path):
    run = tmp_path / "run"
    with runfolder.RunWriter(run):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "memscan",
                "--quiet",
                "scan",
                data / "train",
                data / "synth",
                "--out",
                run,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            timeout=300,
        )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "another memscan scan" in lines[0], r.stderr


# ---------------------------------------------------------------------------------------------- resume


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from memscan.scanning import queries
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan

    real = queries.search_query_block
    calls = {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    queries.search_query_block = killed
    scan(sys.argv[1], sys.argv[2], sys.argv[3], ScanOptions(top_k=2, baseline_items=0, query_block=2,
         mask=sys.argv[5]))
    """
)


def _killed_scan(data: Path, run: Path, after_blocks: int, mask: str = "none") -> None:
    r = subprocess.run(
        [sys.executable, "-c", _KILLER, data / "train", data / "synth", run, str(after_blocks + 1), mask],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]


def test_kill_9_mid_scan_then_resume_gives_identical_tables(data, tmp_path, monkeypatch):
    scan(data / "train", data / "synth", tmp_path / "ref", OPTS)
    run = tmp_path / "run"
    _killed_scan(data, run, after_blocks=2)
    assert not run.exists()  # nothing committed
    done = sorted((work_folder(run) / runfolder.STATE_DIR).glob("synthetic-*.npz"))
    assert len(done) == 2
    calls = {"n": 0}
    real = queries.search_query_block

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "search_query_block", counted)
    scan(data / "train", data / "synth", run, OPTS)
    assert calls["n"] == 4 - 2  # 8 items in blocks of 2: the two saved blocks were not recomputed
    assert _contents(run) == _contents(tmp_path / "ref")


def test_torn_state_and_empty_checkpoints_are_discarded_with_a_warning(data, tmp_path, caplog):
    scan(data / "train", data / "synth", tmp_path / "ref", OPTS)
    run = tmp_path / "run"
    _killed_scan(data, run, after_blocks=3)
    st = work_folder(run) / runfolder.STATE_DIR
    ckpts = sorted(st.glob("synthetic-*.npz"))
    ckpts[0].write_bytes(b"")  # zero-byte checkpoint
    ckpts[1].write_bytes(ckpts[1].read_bytes()[:40])  # torn checkpoint
    with caplog.at_level("WARNING", logger="memscan"):
        scan(data / "train", data / "synth", run, OPTS)
    assert "discarding unreadable checkpoint" in caplog.text
    assert _contents(run) == _contents(tmp_path / "ref")
    # a torn state.json: starts over, never blocks
    _killed_scan(data, tmp_path / "run2", after_blocks=2)
    (work_folder(tmp_path / "run2") / runfolder.STATE_DIR / state.STATE_FILE).write_text('{"key": "ab')
    caplog.clear()
    with caplog.at_level("WARNING", logger="memscan"):
        scan(data / "train", data / "synth", tmp_path / "run2", OPTS)
    assert "discarding unreadable resume state" in caplog.text
    assert _contents(tmp_path / "run2") == _contents(tmp_path / "ref")


def test_resume_state_is_keyed_on_the_masks_content(data, tmp_path):
    mask_file = tmp_path / "mask.npy"
    full = np.ones((16, 16), dtype=bool)
    half = full.copy()
    half[:, 8:] = False
    np.save(mask_file, full)
    _killed_scan(data, tmp_path / "run", after_blocks=2, mask=str(mask_file))
    np.save(mask_file, half)  # the mask changes between the kill and the resume
    resumed = scan(
        data / "train",
        data / "synth",
        tmp_path / "run",
        ScanOptions(**{**OPTS.to_dict(), "mask": str(mask_file)}),
    )
    fresh = scan(
        data / "train",
        data / "synth",
        tmp_path / "fresh",
        ScanOptions(**{**OPTS.to_dict(), "mask": str(mask_file)}),
    )
    assert _contents(tmp_path / "run") == _contents(tmp_path / "fresh")
    assert resumed.summary.feature_dim == fresh.summary.feature_dim == 128


# ---------------------------------------------------------------------------------------------- verdicts


def test_an_item_that_cannot_be_scored_is_never_reported_as_not_a_copy(data, tmp_path):
    res = scan(data / "train", data / "synth", tmp_path / "run", OPTS)
    syn = res.synthetic.set_index("synthetic_id")
    assert bool(syn.loc["blank", "unscored"]) and not bool(syn.loc["blank", "flagged"])
    assert not syn.drop(index="blank")["unscored"].any()
    assert res.summary.n_unscored == 1 and res.gate_failed is None
    gated = scan(
        data / "train",
        data / "synth",
        tmp_path / "gated",
        ScanOptions(top_k=2, baseline_items=0, fail_above=0.99),
    )
    assert gated.gate_failed and "could not be scored" in gated.gate_failed


def test_orientations_find_a_rotated_copy(data, tmp_path):
    plain = scan(data / "train", data / "synth", tmp_path / "plain", OPTS).synthetic.set_index("synthetic_id")
    assert plain.loc["rot-11", "max_correlation"] < 0.99
    opts = ScanOptions(top_k=2, baseline_items=0, orientations=True, max_shift=1)
    res = scan(data / "train", data / "synth", tmp_path / "rot", opts)
    syn = res.synthetic.set_index("synthetic_id")
    assert syn.loc["rot-11", "transform"] == "rot90" and syn.loc["rot-11", "nearest_train_id"] == "t11"
    assert syn.loc["rot-11", "max_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert syn.loc["copy-5", "transform"] == "none"  # identity wins ties


def test_orientations_refuse_non_square_items(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("t", "s"):
        with DatasetWriter(tmp_path / name, (1, 8, 12), "uint8", ("g",), recipe={"name": "t"}) as w:
            for i in range(4):
                w.add(rng.integers(0, 256, (1, 8, 12), dtype=np.uint8), {"id": f"{name}{i}", "subject": "a"})
            w.commit()
    with pytest.raises(InputError, match="square"):
        scan(tmp_path / "t", tmp_path / "s", tmp_path / "run", ScanOptions(top_k=1, orientations=True))


def test_csv_exports_neutralise_formulas(data, tmp_path):
    from memscan.report.html import write_report

    run = tmp_path / "run"
    scan(data / "train", data / "synth", run, OPTS)
    write_report(run)
    cells = pd.read_csv(run / "synthetic.csv", dtype=str, keep_default_na=False)["synthetic_id"].tolist()
    assert '\'=HYPERLINK("http://x")' in cells and "'@copy-9" in cells and "copy-5" in cells
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    corr = pd.read_csv(run / "matches.csv")["correlation"]
    assert pd.api.types.is_float_dtype(corr)  # numbers stay numbers
