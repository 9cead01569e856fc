from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memscan.dataset.store import Dataset, DatasetWriter, check_output_folder, is_dataset
from memscan.errors import InputError


def _write(out, n=10, shape=(2, 4, 5), dtype="float32", chunk_items=3, split=True):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(n, *shape)).astype(dtype)
    with DatasetWriter(
        out, item_shape=shape, dtype=dtype, channels=("a", "b"), recipe={"name": "t"}, chunk_items=chunk_items
    ) as w:
        for i in range(n):
            w.add(
                items[i],
                {
                    "id": f"img{i:02d}.png",
                    "subject": f"s{i // 3}",
                    "split": ("train" if i < 7 else "test") if split else None,
                },
            )
        ds = w.commit()
    return items, ds


def test_round_trip(tmp_path):
    items, ds = _write(tmp_path / "ds")
    assert is_dataset(tmp_path / "ds")
    assert ds.n_items == 10 and ds.item_shape == (2, 4, 5) and ds.spatial_dims == 2
    np.testing.assert_array_equal(ds.read(0, 10), items)
    np.testing.assert_array_equal(ds.take([7, 1, 4]), items[[7, 1, 4]])
    blocks = list(ds.iter_blocks(4))
    assert [b[0] for b in blocks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), items)
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["item_shape"] == [2, 4, 5] and info["channels"] == ["a", "b"] and info["dtype"] == "float32"
    assert info["recipe"] == {"name": "t"} and info["splits"] == {"test": 3, "train": 7}
    assert list(ds.ids[:2]) == ["img00.png", "img01.png"]
    assert ds.array.chunks[0] == 3


def test_compression_only_where_it_pays(tmp_path):
    """Blosc-LZ4 for images with a background (it shrinks them), none for noise (decoding would only cost)."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(8, 1, 32, 32), dtype=np.uint8)
    slices = np.zeros((8, 1, 32, 32), dtype=np.uint8)
    slices[:, :, 8:24, 8:24] = noise[:, :, :16, :16]
    for name, items in (("noise", noise), ("slices", slices)):
        with DatasetWriter(
            tmp_path / name, item_shape=(1, 32, 32), dtype="uint8", channels=("g",), recipe={"name": "t"}
        ) as w:
            for i, item in enumerate(items):
                w.add(item, {"id": f"i{i}", "subject": f"s{i}"})
            ds = w.commit()
        np.testing.assert_array_equal(ds.read(0, 8), items)
        meta = json.loads((tmp_path / name / "images.zarr" / "zarr.json").read_text())
        codecs = [c["name"] for c in meta["codecs"]]
        assert codecs == (["bytes"] if name == "noise" else ["bytes", "blosc"]), codecs
        if name == "slices":
            assert meta["codecs"][1]["configuration"]["cname"] == "lz4"


def test_datasets_written_with_zstd_still_read(tmp_path):
    """Folders written before the switch to Blosc-LZ4 (zarr's default zstd) read unchanged."""
    import zarr

    items, _ = _write(tmp_path / "ds")
    arr = tmp_path / "ds" / "images.zarr"
    shutil.rmtree(arr)
    z = zarr.create_array(str(arr), shape=items.shape, chunks=(3, *items.shape[1:]), dtype=items.dtype)
    z[:] = items
    assert json.loads((arr / "zarr.json").read_text())["codecs"][1]["name"] == "zstd"
    np.testing.assert_array_equal(Dataset.open(tmp_path / "ds").read(0, len(items)), items)


def test_split_view(tmp_path):
    items, _ = _write(tmp_path / "ds")
    test = Dataset.open(tmp_path / "ds" / "test")
    assert test.n_items == 3
    np.testing.assert_array_equal(test.read(0, 3), items[7:])
    np.testing.assert_array_equal(test.take([2, 0]), items[[9, 7]])
    with pytest.raises(InputError, match="no such split 'val'"):
        Dataset.open(tmp_path / "ds" / "val")


def test_interrupted_write_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, item_shape=(1, 2, 2), dtype="uint8", channels=("g",), recipe={}) as w:
            w.add(np.ones((1, 2, 2), np.uint8), {"id": "a", "subject": "a"})
            raise RuntimeError("killed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_old_dataset(tmp_path):
    items, _ = _write(tmp_path / "ds")
    with pytest.raises(InputError, match="differs from the dataset's"):
        with DatasetWriter(
            tmp_path / "ds",
            item_shape=(2, 4, 5),
            dtype="float32",
            channels=("a", "b"),
            recipe={},
            overwrite=True,
        ) as w:
            w.add(np.zeros((2, 4, 5), np.float32), {"id": "x", "subject": "x"})
            w.add(np.zeros((2, 4, 6), np.float32), {"id": "y", "subject": "y"}, source_path="y.png")
    np.testing.assert_array_equal(Dataset.open(tmp_path / "ds").read(0, 10), items)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_output_folder_checks(tmp_path):
    _write(tmp_path / "ds")
    with pytest.raises(InputError, match="already holds a different dataset"):
        check_output_folder(tmp_path / "ds", overwrite=False, fingerprint="other")
    assert check_output_folder(tmp_path / "ds", overwrite=True, fingerprint="other") is False
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f.txt").write_text("x")
    with pytest.raises(InputError, match="not a memscan dataset"):
        check_output_folder(tmp_path / "junk", overwrite=True)
    with pytest.raises(InputError, match="parent folder does not exist"):
        check_output_folder(tmp_path / "a" / "b", overwrite=False)


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Dataset.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a memscan dataset"):
        Dataset.open(tmp_path / "plain")


def test_duplicate_ids_rejected(tmp_path):
    with pytest.raises(InputError, match="duplicate item id"):
        with DatasetWriter(
            tmp_path / "ds", item_shape=(1, 2, 2), dtype="uint8", channels=("g",), recipe={}
        ) as w:
            w.add(np.ones((1, 2, 2), np.uint8), {"id": "a", "subject": "a"})
            w.add(np.ones((1, 2, 2), np.uint8), {"id": "a", "subject": "a"})
            w.commit()
    assert not (tmp_path / "ds").exists()
