"""The search sharded over a Dask cluster: byte-identical tables to the single-process scan.

One module-scoped local cluster (2 worker processes under nannies, 1 thread each, loopback only) serves
every test; scans reach it through ``ScanOptions(scheduler=...)``, so the ``--scheduler`` path is the one
exercised (``--workers`` is covered by one CLI run).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from memscan import phantoms
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.scanning.options import ScanOptions
from memscan.scanning.runfolder import content_bytes
from memscan.scanning.scanner import RUN_TABLES, scan
from memscan.search import cluster as cluster_module
from memscan.search.cluster import merge_topk, open_cluster, plan_shards

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_cluster():
    """2 worker processes x 1 thread on 127.0.0.1; the nannies restart a killed worker."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield {"address": cluster.scheduler_address, "client": client}
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """2D slices (uint8, 5 channels, 32x32) with planted copies, and 3D volumes (5x32x32x16)."""
    root = tmp_path_factory.mktemp("cluster")
    phantoms.write_brats_tree(root / "raw", 4, seed=2, shape=(32, 32, 16))
    prepare_dataset(root / "raw", root / "ds", PrepareOptions(layout="brats", size=32, test_subjects=1))
    train, test = Dataset.open(root / "ds" / "train"), Dataset.open(root / "ds" / "test")
    plant_copies(train, test, root / "syn", n_copies=8, n_novel=4, seed=1)
    phantoms.write_brats_tree(root / "raw3d", 6, seed=3, shape=(32, 32, 16))
    opts3d = PrepareOptions(layout="brats", size=32, test_subjects=2, volumes=True)
    prepare_dataset(root / "raw3d", root / "vol", opts3d)
    return {
        "root": root,
        "train": root / "ds" / "train",
        "test": root / "ds" / "test",
        "syn": root / "syn",
        "vol": root / "vol",
        "vol_train": root / "vol" / "train",
    }


def _scan_both(train, synth, tmp: Path, address: str, holdout=None, **options) -> tuple[Path, Path]:
    local = tmp / "local"
    dask = tmp / "dask"
    scan(train, synth, local, ScanOptions(device="cpu", **options), holdout=holdout, report=False)
    res = scan(
        train,
        synth,
        dask,
        ScanOptions(device="cpu", scheduler=address, **options),
        holdout=holdout,
        report=False,
    )
    assert res.summary["executor"] == "dask"
    assert res.summary["options"]["scheduler"] == address
    return local, dask


def _assert_identical(local: Path, dask: Path) -> None:
    written = [name for name in RUN_TABLES if (local / name).exists()]
    assert "synthetic.parquet" in written and "matches.parquet" in written
    for name in written:
        assert content_bytes(local / name) == content_bytes(dask / name), name


@pytest.mark.parametrize("precision", ["auto", "float64"])
def test_2d_flips_holdout_baselines_identical(data, dask_cluster, tmp_path, precision):
    local, dask = _scan_both(
        data["train"],
        data["syn"],
        tmp_path,
        dask_cluster["address"],
        holdout=data["test"],
        top_k=3,
        flips=True,
        baseline_items=12,
        precision=precision,
        train_block=4,
    )
    _assert_identical(local, dask)
    for name in ("holdout.parquet", "baseline.parquet"):
        assert (dask / name).exists()


@pytest.mark.parametrize("precision", ["auto", "float64"])
def test_3d_volumes_identical(data, dask_cluster, tmp_path, precision):
    # the whole dataset (train + test volumes) against its training split: exact copies included
    local, dask = _scan_both(
        data["vol_train"],
        data["vol"],
        tmp_path,
        dask_cluster["address"],
        top_k=2,
        precision=precision,
        baseline_items=3,
    )
    _assert_identical(local, dask)


def test_shift_rerank_and_channel_identical(data, dask_cluster, tmp_path):
    local, dask = _scan_both(
        data["train"],
        data["syn"],
        tmp_path,
        dask_cluster["address"],
        top_k=2,
        max_shift=2,
        channel="t1",
        baseline_items=0,
    )
    _assert_identical(local, dask)


def test_worker_killed_mid_scan_identical(data, dask_cluster, tmp_path, monkeypatch):
    """Slow tasks (test hook), kill one worker process during the scan: tasks rerun, same tables."""
    client = dask_cluster["client"]
    slow = functools.partial(cluster_module.DaskSearch, shard_items=2, delay=0.15)
    monkeypatch.setattr(cluster_module, "DaskSearch", slow)
    opts = {"top_k": 3, "flips": True, "baseline_items": 0}
    scan(data["train"], data["syn"], tmp_path / "local", ScanOptions(device="cpu", **opts), report=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            scan(
                data["train"],
                data["syn"],
                tmp_path / "dask",
                ScanOptions(device="cpu", scheduler=dask_cluster["address"], **opts),
                report=False,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert thread.is_alive(), "the scan finished before a worker could be killed; make tasks slower"
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    _assert_identical(tmp_path / "local", tmp_path / "dask")
    client.wait_for_workers(2, timeout=30)  # the nanny restarted it, for the tests that follow
    assert pids[victim] not in client.run(os.getpid).values()


def test_workers_cache_their_shards_between_calls(data, dask_cluster):
    """The second search of a scan reads every shard from the worker that kept it (same results), and
    release() empties the workers' caches."""
    from memscan.scanning.scanner import Features
    from memscan.search.engine import search_topk

    client = dask_cluster["client"]
    client.wait_for_workers(2, timeout=30)
    train = Dataset.open(data["train"])
    feats = Features(None, None)
    queries = feats(Dataset.open(data["syn"]).read(0, 6))
    search = cluster_module.DaskSearch(
        client, os.path.abspath(train.path), feats, train.n_items, 8, "auto", shard_items=16
    )
    first = search(queries, 3)
    n_shards = search.n_tasks
    assert n_shards >= 2 and search.n_cache_hits == 0
    second = search(queries, 3)
    assert search.n_cache_hits == n_shards
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.values, second.values)
    rows = feats(train.read(0, train.n_items))
    local = search_topk(queries, lambda: iter([(0, rows)]), 3)
    np.testing.assert_array_equal(second.indices, local.indices)
    np.testing.assert_array_equal(second.values, local.values)
    assert sum(client.run(lambda: cluster_module._CACHE.nbytes).values()) > 0
    search.release()
    assert sum(client.run(lambda: cluster_module._CACHE.nbytes).values()) == 0
    no_cache = cluster_module.DaskSearch(
        client, os.path.abspath(train.path), feats, train.n_items, 8, "auto", shard_items=16, cache=False
    )
    no_cache(queries, 3)
    no_cache(queries, 3)
    assert no_cache.n_cache_hits == 0


def test_merge_topk_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(6, 40)).astype(np.float64) / 4  # many exact ties
    values[0] = np.nan  # a query without matches
    values[1, 5:] = np.nan  # fewer valid items than k
    k = 7
    parts = []
    for a, b in ((0, 9), (9, 10), (10, 27), (27, 40)):
        v = values[:, a:b]
        order = np.lexsort(
            (np.broadcast_to(np.arange(a, b), v.shape), -np.nan_to_num(v, nan=-np.inf)), axis=-1
        )
        order = order[:, : min(k, b - a)]
        pv = np.take_along_axis(v, order, axis=1)
        pi = np.where(np.isnan(pv), -1, order + a)
        parts.append((pv, pi))
    got_v, got_i = merge_topk(parts, k)
    for q in range(len(values)):
        valid = np.flatnonzero(~np.isnan(values[q]))
        ref = valid[np.lexsort((valid, -values[q, valid]))][:k]
        ref = np.concatenate([ref, np.full(k - len(ref), -1)])
        np.testing.assert_array_equal(got_i[q], ref)
        np.testing.assert_array_equal(got_v[q], np.where(ref >= 0, values[q, np.maximum(ref, 0)], np.nan))


def test_plan_shards_cover_contiguously_in_whole_blocks():
    shards, block = plan_shards(1000, 64, n_threads=4)
    assert shards[0][0] == 0 and shards[-1][1] == 1000
    assert all(a == b for (_, a), (b, _) in zip(shards[:-1], shards[1:], strict=True))
    assert all((b - a) % block == 0 for a, b in shards[:-1])
    assert 4 <= len(shards) <= 4 * 4
    small, block = plan_shards(10, 64, n_threads=2)
    assert len(small) >= 2 and block <= 10


def test_options_validation():
    with pytest.raises(InputError, match="not both"):
        ScanOptions(workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(InputError, match="workers must be >= 1"):
        ScanOptions(workers=0)


def test_bad_scheduler_address_is_input_error(data, tmp_path):
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        open_cluster(None, "tcp://127.0.0.1:1")
    with pytest.raises(InputError, match="expects an address"):
        open_cluster(None, "no-scheme-here")
    with pytest.raises(InputError, match="cannot reach"):
        scan(
            data["train"],
            data["syn"],
            tmp_path / "run",
            ScanOptions(scheduler="tcp://127.0.0.1:1"),
            report=False,
        )


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memscan", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_cli_bad_scheduler_exit_2_one_line(data, tmp_path):
    r = _cli(
        "scan", data["train"], data["syn"], "--out", tmp_path / "run", "--scheduler", "tcp://127.0.0.1:1"
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tcp://127.0.0.1:1" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_local_cluster_from_workers_option_identical(data, tmp_path):
    """``--workers 1``: memscan starts (and closes) its own local cluster, 1 process x 2 threads here."""
    opts = {"top_k": 2, "baseline_items": 0, "device": "cpu"}
    scan(data["train"], data["syn"], tmp_path / "local", ScanOptions(**opts), report=False)
    res = scan(data["train"], data["syn"], tmp_path / "dask", ScanOptions(workers=1, **opts), report=False)
    assert res.summary["executor"] == "dask" and res.summary["options"]["workers"] == 1
    _assert_identical(tmp_path / "local", tmp_path / "dask")
