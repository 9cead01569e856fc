"""Hostile-input sweep of ``memscan scan`` / ``memscan report`` (run folders, options, masks, damaged files).

Each case runs the real command line in a subprocess and is classified:

* **clean** — the expected exit code; on an error exactly one line on stderr, no traceback; the case's own
  check holds (e.g. the user's files are unchanged, an unscored item is reported as such);
* **traceback** — a Python traceback or exit code 1;
* **silent wrong** — exit code 0 (or the expected one) but the case's check fails;
* **lost** — a user's file changed or vanished.

Run: ``PYTHONPATH=src python benchmarks/hostile_run_folder.py`` (about 2 minutes on 2 CPU cores); prints a
table of cases and the counts recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from memscan.dataset.store import DatasetWriter
from memscan.scanning import runfolder

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def cli(
    *args: object, timeout: float = 300, quiet: bool = True, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m memscan [--quiet] ARGS`` in a subprocess (``preexec`` runs in the child first)."""
    return subprocess.run(
        [sys.executable, "-m", "memscan", *(["--quiet"] if quiet else []), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        preexec_fn=preexec,
    )


def write(path: Path, items: list[tuple[str, str, np.ndarray]]) -> None:
    shape = items[0][2].shape
    with DatasetWriter(path, shape, "uint8", ("g",), recipe={"name": "t"}) as w:
        for sid, subj, item in items:
            w.add(item, {"id": sid, "subject": subj})
        w.commit()


@dataclass
class Case:
    """One hostile invocation: ``memscan COMMAND *args(root)`` must exit ``code`` and pass ``check``.

    ``user_files``: files that must be byte-identical afterwards (else "lost"). ``run``: a custom runner
    (kills, a non-root child, resource limits) returning a ``CompletedProcess``. ``quiet``: add
    ``--quiet`` (off for cases that check a warning).
    """

    name: str
    args: Callable[[Path], list]
    code: int
    check: Callable[[Path, subprocess.CompletedProcess], bool] = lambda root, r: True
    setup: Callable[[Path], None] = lambda root: None
    user_files: Callable[[Path], list[Path]] = lambda root: []
    run: Callable[[Path, list], subprocess.CompletedProcess] | None = None
    quiet: bool = True
    timeout: float = 300


def classify(case: Case, root: Path, command: str) -> tuple[str, subprocess.CompletedProcess]:
    """Run one case and return its verdict: clean, traceback, silent wrong or lost."""
    case.setup(root)
    before = {p: p.read_bytes() for p in case.user_files(root)}
    args = [command, *case.args(root)]
    try:
        r = case.run(root, args) if case.run else cli(*args, quiet=case.quiet, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        return "silent wrong", subprocess.CompletedProcess(args, -1, "", "timed out (hang)")
    lost = any(not p.exists() or p.read_bytes() != b for p, b in before.items())
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    tb = "Traceback" in r.stderr or r.returncode == 1
    one_line = r.returncode == 0 or (len(lines) == 1 and lines[0].startswith("memscan: error:"))
    try:
        ok = case.check(root, r)
    except Exception:  # noqa: BLE001 - a failed check is a wrong result
        ok = False
    verdict = (
        "lost"
        if lost
        else "traceback"
        if tb
        else "clean"
        if r.returncode == case.code and one_line and ok
        else "silent wrong"
    )
    return verdict, r


def run_groups(root: Path, groups: list[tuple[str, list[Case]]]) -> tuple[list[tuple], dict[str, int]]:
    """Classify every case of every ``(command, cases)`` group; returns (rows, counts)."""
    counts = {"tried": 0, "clean": 0, "traceback": 0, "silent wrong": 0, "lost": 0}
    rows = []
    for command, group in groups:
        for case in group:
            verdict, r = classify(case, root, command)
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            counts["tried"] += 1
            counts[verdict] += 1
            rows.append(
                (command, case.name, case.code, r.returncode, verdict, lines[0][:90] if lines else "")
            )
    return rows, counts


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="memscan-hostile-"))
    rows, counts = run_groups(root, run_folder_groups(root))
    for row in rows:
        print(" | ".join(map(str, row)))
    print(json.dumps(counts))


def run_folder_groups(root: Path) -> list[tuple[str, list[Case]]]:
    """The scan / report cases, with their data written under ``root``."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (16, 1, 12, 12), dtype=np.uint8)
    write(root / "train", [(f"t{i}", f"s{i % 4}", train[i]) for i in range(16)])
    write(
        root / "hold",
        [(f"h{i}", f"h{i % 2}", rng.integers(0, 256, (1, 12, 12), dtype=np.uint8)) for i in range(8)],
    )
    write(
        root / "syn",
        [
            ("=HYPERLINK(1)", "m", train[0]),
            ("c1", "m", train[1]),
            ("blank", "m", np.full((1, 12, 12), 9, np.uint8)),
        ]
        + [(f"n{i}", "m", rng.integers(0, 256, (1, 12, 12), dtype=np.uint8)) for i in range(3)],
    )
    write(
        root / "rect", [(f"r{i}", "a", rng.integers(0, 256, (1, 12, 10), dtype=np.uint8)) for i in range(3)]
    )
    write(
        root / "rect_t", [(f"q{i}", "b", rng.integers(0, 256, (1, 12, 10), dtype=np.uint8)) for i in range(3)]
    )
    base = [root / "train", root / "syn"]
    no_base = ["--baseline-items", "0"]
    assert cli("scan", *base, "--out", root / "good", *no_base).returncode == 0
    assert cli("scan", *base, "--out", root / "other", *no_base).returncode == 0

    def user_folder(r: Path) -> None:
        (r / "U" / "figures").mkdir(parents=True)
        (r / "U" / "figures" / "mine.png").write_bytes(b"precious")
        (r / "U" / "summary.json").write_text("{}")

    def copy_good(name: str) -> Callable[[Path], None]:
        def setup(r: Path) -> None:
            import shutil

            shutil.copytree(r / "good", r / name)

        return setup

    def damage(name: str, victim: str, data: bytes | None = None) -> Callable[[Path], None]:
        def setup(r: Path) -> None:
            copy_good(name)(r)
            p = r / name / victim
            p.write_bytes(p.read_bytes()[:25] if data is None else data)

        return setup

    def mixed(r: Path) -> None:
        copy_good("mixed")(r)
        (r / "mixed" / "matches.parquet").write_bytes((r / "other" / "matches.parquet").read_bytes())

    def masks(r: Path) -> None:
        np.save(r / "wrong.npy", np.ones((5, 5), bool))
        np.save(r / "ok.npy", np.ones((12, 12), bool))
        (r / "trunc.npy").write_bytes((r / "ok.npy").read_bytes()[:70])
        with open(r / "pickled.npy", "wb") as fh:
            np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        (r / "pickle.npy").write_bytes(pickle.dumps({"x": 1}))

    def synthetic_row(r: Path, run: str, sid: str) -> pd.Series:
        return pd.read_parquet(r / run / "synthetic.parquet").set_index("synthetic_id").loc[sid]

    def torn_state(r: Path) -> None:
        work = runfolder.work_folder(r / "torn")
        (work / runfolder.STATE_DIR).mkdir(parents=True)
        (work / runfolder.STATE_DIR / "state.json").write_text('{"key": ')
        (work / runfolder.STATE_DIR / "synthetic-000000000-000000006.npz").write_bytes(b"")

    def holdout_first(r: Path) -> None:
        assert cli("scan", *base, "--out", r / "rescan", "--holdout", r / "hold", *no_base).returncode == 0

    cases = [
        Case(
            "out is a user's folder with summary.json",
            lambda r: [*base, "--out", r / "U"],
            2,
            setup=user_folder,
            user_files=lambda r: [r / "U" / "figures" / "mine.png", r / "U" / "summary.json"],
        ),
        Case("out is a file", lambda r: [*base, "--out", r / "train" / "dataset.json"], 2),
        Case("out's parent is missing", lambda r: [*base, "--out", r / "nope" / "run"], 2),
        Case("--top-k 0", lambda r: [*base, "--out", r / "x1", "--top-k", "0"], 2),
        Case("--top-k above the training set", lambda r: [*base, "--out", r / "x2", "--top-k", "999"], 2),
        Case("--precision int4", lambda r: [*base, "--out", r / "x3", "--precision", "int4"], 2),
        Case("--max-shift 100", lambda r: [*base, "--out", r / "x4", "--max-shift", "100"], 2),
        Case("--max-shift 11 on 12x12", lambda r: [*base, "--out", r / "x5", "--max-shift", "11"], 2),
        Case("--mask missing file", lambda r: [*base, "--out", r / "x6", "--mask", r / "none.npy"], 2),
        Case(
            "--mask wrong shape",
            lambda r: [*base, "--out", r / "x7", "--mask", r / "wrong.npy"],
            2,
            setup=masks,
        ),
        Case("--mask truncated .npy", lambda r: [*base, "--out", r / "x8", "--mask", r / "trunc.npy"], 2),
        Case("--mask object .npy", lambda r: [*base, "--out", r / "x9", "--mask", r / "pickled.npy"], 2),
        Case(
            "--mask a pickle named .npy", lambda r: [*base, "--out", r / "x10", "--mask", r / "pickle.npy"], 2
        ),
        Case(
            "--channel typo",
            lambda r: [*base, "--out", r / "x11", "--channel", "gg"],
            2,
            check=lambda r, p: "did you mean" in p.stderr,
        ),
        Case(
            "--orientations on 12x10 items",
            lambda r: [r / "rect_t", r / "rect", "--out", r / "x12", "--orientations", "--top-k", "1"],
            2,
            check=lambda r, p: "square" in p.stderr,
        ),
        Case("--memory-budget lots", lambda r: [*base, "--out", r / "x13", "--memory-budget", "lots"], 2),
        Case("--fdr 0", lambda r: [*base, "--out", r / "x14", "--fdr", "0"], 2),
        Case(
            "--workers with --scheduler",
            lambda r: [*base, "--out", r / "x15", "--workers", "1", "--scheduler", "tcp://x:1"],
            2,
        ),
        Case("TRAIN missing", lambda r: [r / "missing", r / "syn", "--out", r / "x16"], 2),
        Case("holdout = training set", lambda r: [*base, "--out", r / "x17", "--holdout", r / "train"], 2),
        Case(
            "constant synthetic image",
            lambda r: [*base, "--out", r / "u1", *no_base],
            0,
            check=lambda r, p: bool(synthetic_row(r, "u1", "blank")["unscored"]) and "NOT SCORED" in p.stdout,
        ),
        Case(
            "gate with an unscored item",
            lambda r: [*base, "--out", r / "u2", "--fail-above", "0.99", *no_base],
            3,
            check=lambda r, p: "could not be scored" in p.stderr,
        ),
        Case(
            "formula id in CSV export",
            lambda r: [*base, "--out", r / "csv", *no_base],
            0,
            check=lambda r, p: "'=HYPERLINK(1)" in (r / "csv" / "synthetic.csv").read_text(),
        ),
        Case(
            "re-scan without holdout after one with",
            lambda r: [*base, "--out", r / "rescan", *no_base],
            0,
            setup=holdout_first,
            check=lambda r, p: not (r / "rescan" / "holdout.parquet").exists(),
        ),
        Case(
            "torn state.json + zero-byte checkpoint",
            lambda r: [*base, "--out", r / "torn", *no_base],
            0,
            setup=torn_state,
            check=lambda r, p: (r / "torn" / "synthetic.parquet").exists(),
        ),
    ]
    report_cases = [
        Case("report on a non-run folder", lambda r: [r / "train"], 2),
        Case(
            "report on truncated synthetic.parquet",
            lambda r: [r / "d1"],
            2,
            setup=damage("d1", "synthetic.parquet"),
        ),
        Case("report on truncated summary.json", lambda r: [r / "d2"], 2, setup=damage("d2", "summary.json")),
        Case(
            "report on summary.json = []", lambda r: [r / "d3"], 2, setup=damage("d3", "summary.json", b"[]")
        ),
        Case(
            "report on empty matches.parquet",
            lambda r: [r / "d4"],
            2,
            setup=damage("d4", "matches.parquet", b""),
        ),
        Case("report on tables of two runs", lambda r: [r / "mixed"], 2, setup=mixed),
    ]
    return [("scan", cases), ("report", report_cases)]


if __name__ == "__main__":
    main()
