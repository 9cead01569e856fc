"""``filter_run``: the scored, unflagged synthetic items as a new dataset; a re-scan of it flags nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from memscan import phantoms
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.scanning.filter import filter_run, removed_path_for
from memscan.scanning.options import ScanOptions
from memscan.scanning.runfolder import load_run, write_table
from memscan.scanning.scanner import scan


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """Phantom BraTS cohort (4 training subjects, 1 held out), 10 planted copies + 4 novel slices, scanned."""
    root = tmp_path_factory.mktemp("filter")
    phantoms.write_brats_tree(root / "raw", 5, seed=11, shape=(48, 48, 20))
    prepare_dataset(root / "raw", root / "brats", PrepareOptions(layout="brats", size=48, test_subjects=1))
    train, test = Dataset.open(root / "brats" / "train"), Dataset.open(root / "brats" / "test")
    synth = plant_copies(train, test, root / "synth", n_copies=10, n_novel=4, seed=5)
    opts = ScanOptions(top_k=2, alpha=0.2)
    res = scan(train.path, synth.path, root / "run", opts, holdout=test.path, report=False)
    return {"root": root, "train": train, "test": test, "synth": synth, "run": res, "options": opts}


def test_keeps_exactly_the_unflagged_items_with_their_pixels_and_manifest(scanned, tmp_path):
    syn = scanned["run"].synthetic
    assert 0 < syn["flagged"].sum() < len(syn)  # the fixture has both kinds
    res = filter_run(scanned["run"].run, tmp_path / "clean")
    clean = Dataset.open(tmp_path / "clean")
    expect = syn.loc[~syn["flagged"], "synthetic_id"].tolist()
    assert list(clean.ids) == expect  # source order kept
    src = scanned["synth"]
    pos = [list(src.ids).index(i) for i in expect]
    np.testing.assert_array_equal(clean.read(0, clean.n_items), src.take(pos))
    assert clean.channels == src.channels and clean.dtype == src.dtype
    m = src.manifest.set_index("id").loc[expect]
    assert list(clean.manifest["planted_transform"]) == list(m["planted_transform"])
    removed = pd.read_parquet(removed_path_for(tmp_path / "clean"))
    assert res.removed_path == tmp_path / "clean.removed.parquet"
    assert set(removed["synthetic_id"]) == set(syn.loc[syn["flagged"], "synthetic_id"])
    assert (removed["reason"] == "flagged").all()
    flagged = syn.set_index("synthetic_id").loc[removed["synthetic_id"]]
    np.testing.assert_allclose(removed["p_value"].to_numpy(float), flagged["p_value"].to_numpy(float))
    assert list(removed["nearest_train_id"]) == list(flagged["nearest_train_id"])
    info = json.loads((tmp_path / "clean" / "dataset.json").read_text())["filtered_from"]
    assert info["n_kept"] == len(expect) and info["n_removed"] == len(removed)
    assert info["removed_by_reason"]["flagged"] == len(removed) and not info["also_subjects"]
    assert not (tmp_path / "clean" / "clean.removed.parquet").exists()  # the list is not in the release


def test_rescan_of_the_filtered_set_flags_none(scanned, tmp_path):
    filter_run(scanned["run"].run, tmp_path / "clean")
    clean = Dataset.open(tmp_path / "clean")
    res = scan(
        scanned["train"].path,
        clean.path,
        tmp_path / "rerun",
        scanned["options"],
        holdout=scanned["test"].path,
        report=False,
    )
    assert res.summary["n_flagged"] == 0
    removed = set(scanned["run"].synthetic.loc[lambda d: d["flagged"], "synthetic_id"])
    planted = scanned["synth"].manifest.set_index("id")["planted_transform"]
    assert not removed & set(clean.ids)
    # every exact/rescaled/noisy planted copy was flagged, so none is in the filtered set
    assert not set(planted[planted.isin(["exact", "rescale", "noisy"])].index) & set(clean.ids)


def test_also_subjects_drops_every_item_matched_to_a_leaked_subject(scanned, tmp_path):
    run = scanned["run"]
    syn = run.synthetic
    assert run.subjects["leaked"].all()  # every training subject was copied: nothing may be released
    with pytest.raises(InputError, match="would be removed"):
        filter_run(run.run, tmp_path / "none", also_subjects=True)
    # one leaked subject only (edited copy of the run): its unflagged matches go, the rest stay
    edited = tmp_path / "run"
    shutil.copytree(run.run, edited)
    subject = syn.loc[~syn["flagged"], "nearest_subject"].iloc[0]
    subjects = run.subjects.assign(leaked=run.subjects["subject"] == subject)
    write_table(subjects, edited / "subjects.parquet", run.run_id)  # an edited table of the same run
    res = filter_run(edited, tmp_path / "clean", also_subjects=True)
    matched = syn["nearest_subject"] == subject
    assert list(res.dataset.ids) == list(syn.loc[~syn["flagged"] & ~matched, "synthetic_id"])
    dropped = set(res.removed.loc[res.removed["reason"] == "leaked_subject", "synthetic_id"])
    assert dropped == set(syn.loc[~syn["flagged"] & matched, "synthetic_id"]) and dropped


def test_an_unscored_item_is_never_kept(scanned, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scanned["run"].run, run)
    syn = pd.read_parquet(run / "synthetic.parquet")
    clean_ids = syn.loc[~syn["flagged"], "synthetic_id"].tolist()
    a, b, c = clean_ids[:3]
    syn.loc[syn["synthetic_id"] == a, "max_correlation"] = np.nan
    syn.loc[syn["synthetic_id"] == b, "p_value"] = pd.NA
    syn = syn[syn["synthetic_id"] != c]  # no row at all
    write_table(syn, run / "synthetic.parquet", scanned["run"].run_id)
    res = filter_run(run, tmp_path / "clean")
    assert not {a, b, c} & set(res.dataset.ids)
    reasons = res.removed.set_index("synthetic_id")["reason"]
    assert reasons[a] == reasons[b] == reasons[c] == "not_scored"
    assert len(res.dataset.ids) == len(clean_ids) - 3


def test_raw_png_folders_scanned_then_filtered(tmp_path):
    """The user's way: PNG folders in, ``scan`` prepares them on the fly, ``filter`` reads them."""
    from PIL import Image

    phantoms.write_folder_tree(tmp_path / "train", 3, seed=1, size=32, n_slices=4)
    phantoms.write_folder_tree(tmp_path / "other", 4, seed=2, size=32, n_slices=4)
    hold = tmp_path / "hold"
    shutil.copytree(tmp_path / "other" / "subj_000", hold / "subj_100")
    shutil.copytree(tmp_path / "other" / "subj_001", hold / "subj_101")
    synth = tmp_path / "synth" / "gen"
    synth.mkdir(parents=True)
    copied = sorted((tmp_path / "train").rglob("*.png"))[:3]
    for i, p in enumerate(copied):
        shutil.copy(p, synth / f"copy_{i}.png")
    for i, p in enumerate(sorted((tmp_path / "other" / "subj_003").glob("*.png"))):
        Image.open(p).save(synth / f"novel_{i}.png")
    # 8 held-out slices: the smallest p-value is 1/9, so control the FDR at 0.3
    opts = ScanOptions(alpha=0.3)
    res = scan(tmp_path / "train", tmp_path / "synth", tmp_path / "run", opts, holdout=hold, report=False)
    flagged = set(res.synthetic.loc[res.synthetic["flagged"], "synthetic_id"])
    assert {f"gen/copy_{i}.png" for i in range(3)} <= flagged
    out = filter_run(tmp_path / "run", tmp_path / "clean")
    assert set(out.dataset.ids) == set(res.synthetic["synthetic_id"]) - flagged
    assert all(i.startswith("gen/novel_") for i in out.dataset.ids)


def test_bad_inputs_and_overwrite(scanned, tmp_path):
    run = scanned["run"].run
    with pytest.raises(InputError, match="not a finished memscan run folder"):
        filter_run(tmp_path, tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a memscan dataset"):
        filter_run(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    filter_run(run, tmp_path / "clean")
    n_clean = int((~scanned["run"].synthetic["flagged"]).sum())
    with pytest.raises(InputError, match="--overwrite"):
        filter_run(run, tmp_path / "clean")
    # a failing overwrite (every item would go) leaves the old dataset and its removed list as they were
    old_removed = removed_path_for(tmp_path / "clean").read_bytes()
    with pytest.raises(InputError, match="would be removed"):
        filter_run(run, tmp_path / "clean", also_subjects=True, overwrite=True)
    assert Dataset.open(tmp_path / "clean").n_items == n_clean
    assert removed_path_for(tmp_path / "clean").read_bytes() == old_removed
    again = filter_run(run, tmp_path / "clean", overwrite=True)
    assert again.n_kept == n_clean
    with pytest.raises(InputError, match="scanned synthetic dataset itself"):
        filter_run(run, scanned["synth"].path, overwrite=True)
    assert Dataset.open(scanned["synth"].path).n_items == len(scanned["run"].synthetic)
    with pytest.raises(InputError, match="inside the run folder"):
        filter_run(run, run / "clean")
    with pytest.raises(InputError, match="does not exist"):
        filter_run(run, tmp_path / "c2", synthetic=tmp_path / "moved")
    # everything flagged: nothing is written, nothing left behind
    moved = tmp_path / "allflagged"
    shutil.copytree(run, moved)
    syn = pd.read_parquet(moved / "synthetic.parquet")
    syn["flagged"] = True
    write_table(syn, moved / "synthetic.parquet", load_run(run).run_id)
    with pytest.raises(InputError, match="would be removed"):
        filter_run(moved, tmp_path / "none")
    assert not (tmp_path / "none").exists() and not removed_path_for(tmp_path / "none").exists()
