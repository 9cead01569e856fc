"""End-to-end scans on phantom data: planted copies found, contract tables, resume, determinism, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from memscan import phantoms
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.scanning import queries as queries_module
from memscan.scanning import runfolder
from memscan.scanning.options import ScanOptions
from memscan.scanning.scanner import load_run
from memscan.scanning.scanner import scan as _scan


def scan(*args, **kwargs):
    """The scan without its HTML report (covered in tests/report), to keep these tests fast."""
    kwargs.setdefault("report", False)
    return _scan(*args, **kwargs)


SYNTH_COLUMNS = [*runfolder.SYNTHETIC_COLUMNS]  # the contract's columns, then "unscored"
assert SYNTH_COLUMNS[:7] == [
    "synthetic_id",
    "max_correlation",
    "nearest_train_id",
    "nearest_subject",
    "transform",
    "p_value",
    "flagged",
]
MATCH_COLUMNS = ["synthetic_id", "rank", "train_id", "train_subject", "correlation", "transform"]
SUBJECT_COLUMNS = ["subject", "n_items", "n_synthetic_matched", "max_correlation", "leaked"]
SUMMARY_KEYS = [
    "n_train",
    "n_synthetic",
    "n_holdout",
    "top_k",
    "threshold",
    "threshold_source",
    "n_flagged",
    "flagged_fraction",
    "subjects_total",
    "subjects_leaked",
    "device",
    "precision",
    "seconds",
    "memscan_version",
    "options",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    phantoms.write_brats_tree(root / "raw", 5, seed=11, shape=(48, 48, 20))
    ds = prepare_dataset(
        root / "raw", root / "brats", PrepareOptions(layout="brats", size=48, test_subjects=1)
    )
    train = Dataset.open(root / "brats" / "train")
    test = Dataset.open(root / "brats" / "test")
    synth = plant_copies(train, test, root / "synth", n_copies=10, n_novel=4, seed=5)
    return {"root": root, "dataset": ds, "train": train, "test": test, "synth": synth}


def _truth(synth: Dataset) -> pd.DataFrame:
    return synth.manifest.set_index("id")


def test_planted_copies_found_with_source_and_transform(data, tmp_path):
    res = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "run",
        # 40 shift candidates: with the phantoms in the PLS frame, 2 of the planted 3-pixel shifts drop their
        # source below the 20 best unshifted matches of 55 training items (candidate-based shifts).
        ScanOptions(top_k=3, flips=True, max_shift=3, shift_candidates=40),
    )
    truth = _truth(data["synth"])
    planted = truth[truth["planted_transform"] != "novel"]
    got = res.synthetic.set_index("synthetic_id").loc[planted.index]
    assert (got["nearest_train_id"] == planted["planted_train_id"]).all()
    assert (got["transform"] == planted["expected_transform"]).all()
    assert (got["max_correlation"] > 0.97).all() and got["flagged"].all()
    exact = planted[planted["planted_transform"].isin(["exact", "flip", "shift"])].index
    assert (got.loc[exact, "max_correlation"] == 1.0).all()


def test_contract_tables_and_summary(data, tmp_path):
    res = scan(data["train"].path, data["synth"].path, tmp_path / "run", ScanOptions(top_k=4))
    run = tmp_path / "run"
    syn = pd.read_parquet(run / "synthetic.parquet")
    mat = pd.read_parquet(run / "matches.parquet")
    sub = pd.read_parquet(run / "subjects.parquet")
    items = pd.read_parquet(run / "train_items.parquet")
    assert list(syn.columns) == SYNTH_COLUMNS
    assert list(mat.columns) == MATCH_COLUMNS
    assert all(c in sub.columns for c in SUBJECT_COLUMNS)
    summary = json.loads((run / "summary.json").read_text())
    assert all(k in summary for k in SUMMARY_KEYS)
    n_s, n_t = data["synth"].n_items, data["train"].n_items
    assert summary["n_synthetic"] == len(syn) == n_s and summary["n_train"] == n_t
    assert len(mat) == 4 * n_s and mat["rank"].tolist() == [1, 2, 3, 4] * n_s
    assert mat["correlation"].dtype == np.float64
    assert summary["threshold_source"] == "fixed" and summary["threshold"] == 0.95
    assert summary["n_flagged"] == int((syn["max_correlation"] > 0.95).sum()) == int(syn["flagged"].sum())
    assert summary["precision"] == "int8"  # uint8 study data take the exact integer path
    # rank-1 of matches is the synthetic table's nearest item
    first = mat[mat["rank"] == 1].set_index("synthetic_id")
    assert (first.loc[syn["synthetic_id"], "train_id"].to_numpy() == syn["nearest_train_id"].to_numpy()).all()
    # subject roll-up and per-item counts are consistent
    assert sub["n_synthetic_matched"].sum() == n_s == items["n_synthetic_nearest"].sum()
    assert set(sub["subject"]) == set(data["train"].subjects)
    leaked = set(syn.loc[syn["flagged"], "nearest_subject"])
    assert set(sub.loc[sub["leaked"], "subject"]) == leaked
    assert summary["subjects_leaked"] == len(leaked)
    assert isinstance(res.summary["seconds"], float)
    loaded = load_run(run)
    pd.testing.assert_frame_equal(loaded.matches, res.matches)


def test_correlations_match_float64_brute_force(data, tmp_path):
    res = scan(data["train"].path, data["synth"].path, tmp_path / "run", ScanOptions(top_k=5))
    t = data["train"].read(0, data["train"].n_items).reshape(data["train"].n_items, -1).astype(np.float64)
    q = data["synth"].read(0, data["synth"].n_items).reshape(data["synth"].n_items, -1).astype(np.float64)
    t = (t - t.mean(1, keepdims=True)) / np.linalg.norm(t - t.mean(1, keepdims=True), axis=1, keepdims=True)
    q = (q - q.mean(1, keepdims=True)) / np.linalg.norm(q - q.mean(1, keepdims=True), axis=1, keepdims=True)
    full = q @ t.T
    order = np.lexsort((np.tile(np.arange(t.shape[0]), (q.shape[0], 1)), -full), axis=1)[:, :6]
    ids = data["train"].ids
    mat = res.matches
    for i, sid in enumerate(data["synth"].ids):
        rows = mat[mat["synthetic_id"] == sid]
        gap = full[i, order[i, 4]] - full[i, order[i, 5]]
        if gap > 1e-12:
            assert rows["train_id"].tolist() == [ids[j] for j in order[i, :5]]
        np.testing.assert_allclose(rows["correlation"].to_numpy(), full[i, order[i, :5]], atol=1e-6, rtol=0)


def _tables(run):
    return {
        n: runfolder.content_bytes(run / f"{n}.parquet")
        for n in ("synthetic", "matches", "subjects", "train_items")
    }


def test_block_sizes_and_precision_change_nothing(data, tmp_path):
    base = scan(data["train"].path, data["synth"].path, tmp_path / "a", ScanOptions(top_k=3, flips=True))
    small = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "b",
        ScanOptions(top_k=3, flips=True, query_block=3, train_block=7),
    )
    assert _tables(tmp_path / "a") == _tables(tmp_path / "b")
    exact = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "c",
        ScanOptions(top_k=3, flips=True, precision="exact", train_block=11),
    )
    assert exact.summary["precision"] == "float64"
    pd.testing.assert_series_equal(exact.matches["train_id"], base.matches["train_id"])
    np.testing.assert_allclose(exact.matches["correlation"], base.matches["correlation"], atol=1e-12, rtol=0)
    bf16 = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "d",
        ScanOptions(top_k=3, flips=True, precision="bf16", query_block=5),
    )
    assert bf16.summary["precision"] == "bf16" and bf16.summary["n_rerank_pairs"] > 0
    assert _tables(tmp_path / "c") == _tables(tmp_path / "d")  # both use the float64 exact routine
    assert small.summary["query_block"] == 3


def test_shift_groups_change_nothing(data, tmp_path, monkeypatch):
    """Shift re-rank with candidate groups of the smallest size (many reads, many banks): same tables."""
    opts = ScanOptions(top_k=3, flips=True, max_shift=2, shift_candidates=6, baseline_items=20)
    scan(data["train"].path, data["synth"].path, tmp_path / "big", opts)
    calls: list[int] = []
    bank = queries_module.variants.ShiftCandidates

    def counted(items, *args, **kwargs):
        calls.append(len(items))
        return bank(items, *args, **kwargs)

    monkeypatch.setattr(queries_module.variants, "ShiftCandidates", counted)
    scan(data["train"].path, data["synth"].path, tmp_path / "one", opts)
    few = len(calls)
    monkeypatch.setattr(queries_module, "SHIFT_BANK_SHARE", 2**62)  # groups of 16 candidates at most
    calls.clear()
    scan(data["train"].path, data["synth"].path, tmp_path / "small", opts)
    assert len(calls) > few and max(calls) <= 16  # a group closes before its candidates pass 16
    assert _tables(tmp_path / "big") == _tables(tmp_path / "small") == _tables(tmp_path / "one")


def test_resume_after_interruption_is_identical_and_skips_done_blocks(data, tmp_path, monkeypatch):
    opts = ScanOptions(top_k=3, query_block=4, baseline_items=0)
    scan(data["train"].path, data["synth"].path, tmp_path / "ref", opts)
    calls = {"n": 0}
    real = queries_module.search_query_block

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(queries_module, "search_query_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        scan(data["train"].path, data["synth"].path, tmp_path / "run", opts)
    assert not (tmp_path / "run" / "summary.json").exists()
    state = runfolder.work_folder(tmp_path / "run") / runfolder.STATE_DIR
    assert len(list(state.glob("synthetic-*.npz"))) == 2
    calls["n"] = 10  # no more failures; count the blocks actually computed
    scan(data["train"].path, data["synth"].path, tmp_path / "run", opts)
    n_blocks = -(-data["synth"].n_items // 4)
    assert calls["n"] - 10 == n_blocks - 2
    assert _tables(tmp_path / "run") == _tables(tmp_path / "ref")
    assert not state.exists() and not runfolder.work_folder(tmp_path / "run").exists()
    assert not (tmp_path / "run" / runfolder.STATE_DIR).exists()


def test_release_gate_writes_outputs_then_fails(data, tmp_path):
    res = scan(data["train"].path, data["synth"].path, tmp_path / "run", ScanOptions(fail_above=0.1))
    assert res.gate_failed and "release gate failed" in res.gate_failed and "fail_above" in res.gate_failed
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / "synthetic.parquet").exists()
    ok = scan(data["train"].path, data["synth"].path, tmp_path / "run2", ScanOptions(fail_above=0.99))
    assert ok.gate_failed is None


def test_masks_channels_and_raw_inputs(data, tmp_path):
    res = scan(data["train"].path, data["synth"].path, tmp_path / "fg", ScanOptions(mask="foreground"))
    assert res.summary["feature_dim"] < int(np.prod(data["train"].item_shape))
    flair = scan(data["train"].path, data["synth"].path, tmp_path / "ch", ScanOptions(channel="flair"))
    assert flair.summary["feature_dim"] == 48 * 48
    mask = np.zeros((48, 48), bool)
    mask[8:40, 8:40] = True
    np.save(tmp_path / "mask.npy", mask)
    boxed = scan(
        data["train"].path, data["synth"].path, tmp_path / "box", ScanOptions(mask=str(tmp_path / "mask.npy"))
    )
    assert boxed.summary["feature_dim"] == 5 * 32 * 32
    with pytest.raises(InputError, match="did you mean 'flair'"):
        scan(data["train"].path, data["synth"].path, tmp_path / "x", ScanOptions(channel="fliar"))
    np.save(tmp_path / "bad.npy", np.ones((10, 10), bool))
    with pytest.raises(InputError, match=r"mask shape \[10, 10\]"):
        scan(
            data["train"].path,
            data["synth"].path,
            tmp_path / "y",
            ScanOptions(mask=str(tmp_path / "bad.npy")),
        )


def test_raw_folder_inputs_are_prepared_on_the_fly(tmp_path):
    phantoms.write_folder_tree(tmp_path / "train_png", 3, seed=2, size=32)
    phantoms.write_folder_tree(tmp_path / "synth_png", 1, seed=2, size=32)  # subject 0 again: copies
    res = scan(tmp_path / "train_png", tmp_path / "synth_png", tmp_path / "run", ScanOptions(top_k=1))
    assert (res.synthetic["max_correlation"] > 0.999).all()
    assert (res.synthetic["nearest_subject"] == "subj_000").all()
    assert (tmp_path / "run" / ".prepared" / "train" / "dataset.json").exists()


def test_3d_volumes(tmp_path):
    phantoms.write_brats_tree(tmp_path / "raw", 3, seed=4, shape=(24, 24, 16))
    ds = prepare_dataset(
        tmp_path / "raw",
        tmp_path / "vol",
        PrepareOptions(layout="brats", volumes=True, size=24, modalities=("t1", "flair")),
    )
    flipped = ds.read(1, 2)[:, :, :, ::-1].copy()  # mirrored along Y: left-right in the PLS frame
    with DatasetWriter(
        tmp_path / "syn", item_shape=ds.item_shape, dtype="uint8", channels=ds.channels, recipe={}
    ) as w:
        w.add(ds.read(2, 3)[0], {"id": "copy", "subject": "model"})
        w.add(flipped[0], {"id": "mirror", "subject": "model"})
        w.commit()
    res = scan(ds.path, tmp_path / "syn", tmp_path / "run", ScanOptions(top_k=2, flips=True))
    syn = res.synthetic.set_index("synthetic_id")
    assert syn.loc["copy", "nearest_train_id"] == ds.ids[2] and syn.loc["copy", "max_correlation"] == 1.0
    assert syn.loc["mirror", "nearest_train_id"] == ds.ids[1] and syn.loc["mirror", "transform"] == "flip"
    with pytest.raises(InputError, match="2D images only"):
        scan(ds.path, tmp_path / "syn", tmp_path / "run2", ScanOptions(top_k=2, max_shift=1))


def test_resize_brings_synthetic_to_the_training_size(data, tmp_path):
    """Synthetic items made at 96x96 from training slices (48x48) are found again with --resize."""
    from memscan.dataset.resample import resize_items

    train = data["train"]
    picks = [3, 11, 20]
    big = resize_items(train.take(picks), (96, 96))
    assert big.dtype == np.uint8 and big.shape[1:] == (5, 96, 96)
    with DatasetWriter(
        tmp_path / "big", item_shape=big.shape[1:], dtype="uint8", channels=train.channels, recipe={}
    ) as w:
        for i, item in enumerate(big):
            w.add(item, {"id": f"sample_{i:06d}", "subject": "model"})
        w.commit()
    with pytest.raises(InputError, match=r"item shapes differ.*\[5, 48, 48\].*\[5, 96, 96\].*--resize"):
        scan(train.path, tmp_path / "big", tmp_path / "r0")
    res = scan(train.path, tmp_path / "big", tmp_path / "run", ScanOptions(top_k=1, resize=True))
    syn = res.synthetic.set_index("synthetic_id")
    assert list(syn["nearest_train_id"]) == list(train.ids[picks])
    assert (syn["max_correlation"] > 0.97).all()
    resized = Dataset.open(tmp_path / "run" / ".prepared" / "synthetic-resized")
    assert resized.item_shape == train.item_shape and list(resized.ids) == list(syn.index)
    assert res.summary["synthetic"] == str(resized.path)  # what was compared, for the report
    # a second scan reuses the resampled copy
    before = (resized.path / "dataset.json").stat().st_mtime_ns
    scan(train.path, tmp_path / "big", tmp_path / "run", ScanOptions(top_k=1, resize=True))
    assert (resized.path / "dataset.json").stat().st_mtime_ns == before
    # channels cannot be resized
    one = DatasetWriter(tmp_path / "one", item_shape=(1, 48, 48), dtype="uint8", channels=("g",), recipe={})
    one.add(big[0, :1, :48, :48], {"id": "x", "subject": "m"})
    one.commit()
    with pytest.raises(InputError, match="not the channels"):
        scan(train.path, tmp_path / "one", tmp_path / "r1", ScanOptions(resize=True))


def test_bad_inputs(data, tmp_path):
    phantoms.write_folder_tree(tmp_path / "png", 1, seed=0, size=16)
    with pytest.raises(InputError, match=r"item shapes differ.*\[5, 48, 48\].*\[1, 16, 16\]"):
        scan(data["train"].path, tmp_path / "png", tmp_path / "r1")
    with pytest.raises(InputError, match="larger than the training set"):
        scan(data["train"].path, data["synth"].path, tmp_path / "r2", ScanOptions(top_k=10_000))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            scan(data["train"].path, data["synth"].path, tmp_path / "r3", ScanOptions(device="cuda"))
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a memscan run folder"):
        scan(data["train"].path, data["synth"].path, tmp_path / "notrun")
    assert (tmp_path / "notrun" / "thesis.tex").read_text() == "precious"
    with pytest.raises(InputError, match="does not exist"):
        scan(tmp_path / "missing", data["synth"].path, tmp_path / "r4")
    with pytest.raises(InputError, match="no such split"):
        scan(data["root"] / "brats" / "validation", data["synth"].path, tmp_path / "r5")


def test_holdout_calibration_and_baselines(data, tmp_path):
    # one held-out subject only: the smallest p-value is 1/(n+1) ~ 0.06, so test at FDR 0.2
    res = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "run",
        ScanOptions(top_k=2, baseline_items=30, alpha=0.2),
        holdout=data["test"].path,
    )
    s = res.summary
    assert s["threshold_source"] == "holdout" and s["n_holdout"] == data["test"].n_items
    assert s["calibration"]["method"] == "fdr" and s["calibration"]["n_null"] == data["test"].n_items
    truth = _truth(data["synth"])
    syn = res.synthetic.set_index("synthetic_id")
    copies = truth.index[truth["planted_transform"].isin(["exact", "rescale", "noisy"])]
    assert syn.loc[copies, "flagged"].all()
    assert syn["p_value"].notna().all() and (syn["p_value"] > 0).all()
    hold = pd.read_parquet(tmp_path / "run" / "holdout.parquet")
    assert len(hold) == data["test"].n_items and hold["max_correlation"].between(-1, 1).all()
    base = pd.read_parquet(tmp_path / "run" / "baseline.parquet")
    assert len(base) == 30
    assert (base["nn_id_any"] != base["train_id"]).all()  # never itself
    subj_of = dict(zip(data["train"].ids, data["train"].subjects, strict=True))
    assert all(subj_of[a] != b for a, b in zip(base["nn_id_other_subject"], base["subject"], strict=True))
    # neighbouring slices of the same subject are closer than other subjects' slices
    assert (base["nn_correlation_any"] >= base["nn_correlation_other_subject"]).all()
    assert s["baseline"]["any"]["median"] > s["baseline"]["other_subject"]["median"]
    with pytest.raises(InputError, match="must not be in the training set"):
        scan(data["train"].path, data["synth"].path, tmp_path / "bad", holdout=data["train"].path)


def test_leaked_subject_gate(data, tmp_path):
    res = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "run",
        ScanOptions(fail_on_leaked_subjects=1, baseline_items=0),
    )
    assert "training subjects leaked" in res.gate_failed
    assert (tmp_path / "run" / "subjects.parquet").exists()


def test_option_validation():
    from memscan.scanning.options import parse_bytes

    assert parse_bytes("4GiB") == 4 * 2**30 and parse_bytes("512MB") == 512 * 10**6
    with pytest.raises(InputError, match="at least 256MiB"):
        ScanOptions(memory_budget=parse_bytes("64MiB"))
    with pytest.raises(InputError, match="as a size"):
        parse_bytes("lots")
    for bad in (
        dict(top_k=0),
        dict(device="tpu"),
        dict(precision="int4"),
        dict(max_shift=-1),
        dict(threshold=1.5),
        dict(fail_above=2.0),
        dict(alpha=0.0),
        dict(calibration="bonferroni"),
    ):
        with pytest.raises(InputError):
            ScanOptions(**bad)


def test_encoder_settings_are_validated_and_need_the_trained_encoder():
    from memscan.embed import EncoderConfig
    from memscan.scanning.options import MIN_ENCODER_SIZE

    with pytest.raises(InputError, match="encoder_steps must be >= 1"):
        ScanOptions(quality=True, encoder_steps=0)
    with pytest.raises(InputError, match=f"encoder_size must be >= {MIN_ENCODER_SIZE}"):
        ScanOptions(robust=True, encoder_size=8)
    with pytest.raises(InputError, match=f"input_size must be >= {MIN_ENCODER_SIZE}"):
        EncoderConfig(input_size=MIN_ENCODER_SIZE - 1)  # the same bound as the encoder's own
    EncoderConfig(input_size=MIN_ENCODER_SIZE)
    for off in (dict(), dict(quality=True, encoder="net.pt")):  # no encoder is trained: refused, not ignored
        with pytest.raises(InputError, match="encoder_steps .* neither is on"):
            ScanOptions(encoder_steps=5, **off)
    assert ScanOptions(quality=True, encoder_steps=5, encoder_size=16).trains_encoder
    assert ScanOptions(robust=True).trains_encoder and not ScanOptions().trains_encoder
    assert ScanOptions().encoder_steps is None  # plain runs keep the encoder's defaults


def test_encoder_settings_reach_the_trained_encoder_and_change_no_table(data, tmp_path):
    opts = dict(baseline_items=0, flips=True)
    plain = scan(
        data["train"].path, data["synth"].path, tmp_path / "p", ScanOptions(**opts), holdout=data["test"].path
    )
    q = scan(
        data["train"].path,
        data["synth"].path,
        tmp_path / "q",
        ScanOptions(**opts, quality=True, encoder_steps=3, encoder_size=16),
        holdout=data["test"].path,
    )
    config = q.quality["encoder"]["parts"][0]["config"]  # the embedding, beside the image statistics
    assert config["steps"] == 3 and config["input_size"] == 16
    cached = list((tmp_path / "q" / runfolder.ENCODER_DIR).glob("encoder-*/config.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["config"]["steps"] == 3
    pd.testing.assert_frame_equal(plain.synthetic, q.synthetic)
    assert q.summary.to_dict()["options"]["encoder_steps"] == 3


def test_auto_switch_to_float32_is_kept_for_later_query_blocks(monkeypatch):
    """Once 'auto' finds its bf16 screen too loose for the data, later searches of the scan start in
    float32 instead of probing bf16 again."""
    from memscan.search import precision

    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)
    base = np.linspace(0.0, 1.0, 400, dtype=np.float32)
    t = np.stack([base + 1e-3 * np.sin(i + np.arange(400, dtype=np.float32)) for i in range(64)])
    q = t[:8] + 1e-4

    def stream():
        yield 0, t[:32]
        yield 32, t[32:]

    search = queries_module.LocalSearch(stream, "auto", "cpu")
    first = search(q, 2)
    assert (first.switched_from, first.precision, search.precision) == ("bf16", "float32", "float32")
    second = search(q, 2)
    assert (second.switched_from, second.precision) == (None, "float32")
    np.testing.assert_array_equal(first.indices, second.indices)


def test_query_blocks_sized_for_the_largest_query_set(tmp_path):
    """The train-vs-train baselines (here 30 items) are often more than the synthetic items (5): the query
    blocks are sized for the largest set, so they take one pass over the training set, not six; the
    tables do not depend on it."""
    rng = np.random.default_rng(4)
    for name, n in (("train", 40), ("syn", 5)):
        with DatasetWriter(tmp_path / name, (1, 8, 8), "uint8", ("g",), recipe={"name": "t"}) as w:
            for i in range(n):
                w.add(
                    rng.integers(0, 256, (1, 8, 8), dtype=np.uint8),
                    {"id": f"{name}{i}", "subject": f"s{i % 7}"},
                )
            w.commit()
    res = scan(tmp_path / "train", tmp_path / "syn", tmp_path / "run", ScanOptions(baseline_items=30))
    assert res.summary["query_block"] == 30
    small = scan(
        tmp_path / "train", tmp_path / "syn", tmp_path / "run5", ScanOptions(baseline_items=30, query_block=5)
    )
    assert small.summary["query_block"] == 5
    for table in ("matches.parquet", "synthetic.parquet", "baseline.parquet"):
        assert pd.read_parquet(tmp_path / "run" / table).equals(pd.read_parquet(tmp_path / "run5" / table))
