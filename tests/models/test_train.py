"""Training loop, model folder, exact resume, sampling into a dataset folder, CLI train/sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import write_items

from memscan.dataset.store import Dataset
from memscan.errors import InputError
from memscan.models.checkpoint import read_checkpoint
from memscan.models.data import DeviceData
from memscan.models.sample import sample_model
from memscan.models.train import read_log, train_model

FAST = dict(preset="tiny", device="cpu", log_every=1, sample_every=0)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Phantom BraTS slices, 5 channels, 16 x 16, uint8."""
    from memscan.phantoms import write_brats_tree
    from memscan.preprocess.prepare import PrepareOptions, prepare_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_brats_tree(root / "raw", 2, shape=(32, 32, 16))
    prepare_dataset(root / "raw", root / "ds", PrepareOptions(layout="brats", size=16))
    return root / "ds"


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "model"
    train_model(phantoms, out, "ddpm", steps=3, batch=4, checkpoint_every=2, **{**FAST, "sample_every": 2})
    return out


def test_model_folder_contents(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["family"] == "ddpm" and cfg["preset"] == "tiny" and cfg["format"] == "memscan-model"
    assert cfg["data"]["channels"] == ["t1", "t2", "t1ce", "flair", "seg"] and cfg["data"][
        "spatial_shape"
    ] == [16, 16]
    assert cfg["train"] == {"batch": 4, "seed": 0, "steps": 3, "device": "cpu"} and "memscan_version" in cfg
    assert (trained / "latest").read_text().strip() == "step_000003.safetensors"
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "step_000002.safetensors",
        "step_000003.safetensors",
    ]
    tensors, meta = read_checkpoint(
        trained / "checkpoints" / "step_000003.safetensors"
    )  # safetensors: no pickle
    assert meta["step"] == 3 and meta["extra_state"] == {"n_updates": 3}
    assert any(k.startswith("module/ema/") for k in tensors) and any(
        k.startswith("optim/adamw/") for k in tensors
    )
    assert "rng/torch_cpu" in tensors and "rng/data" in tensors
    records = read_log(trained)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "images_per_s", "elapsed_s"} <= set(records[0])
    assert sorted(p.name for p in (trained / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]


def test_a_few_steps_reduce_the_loss(phantoms):
    """Fixed evaluation batch (same x_0, t, ε) before and after 20 steps on the phantom slices."""
    from memscan.models.data import data_info as _data_info
    from memscan.models.ddpm import build
    from memscan.models.scaling import data_scaling

    torch.manual_seed(0)
    ds = Dataset.open(phantoms)
    model = build(None, _data_info(ds), preset="tiny")
    model.configure(torch.device("cpu"))
    feed = DeviceData(ds, data_scaling(ds), torch.device("cpu"), torch.device("cpu"), seed=0)
    g = torch.Generator().manual_seed(123)
    x0 = feed.batch(16)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, model.cfg.num_train_timesteps, (16,), generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            pred = model.inferer(inputs=x0, diffusion_model=model.unet, noise=noise, timesteps=t)
        return float(torch.nn.functional.mse_loss(pred, noise))

    before = eval_loss()
    for step in range(20):
        model.train_step(feed.batch(8), step)
    after = eval_loss()
    assert after < 0.85 * before, (before, after)


def test_resume_gives_the_same_next_steps(phantoms, tmp_path):
    kw = dict(batch=4, checkpoint_every=2, **FAST)
    train_model(phantoms, tmp_path / "a", "ddpm", steps=4, **kw)
    train_model(phantoms, tmp_path / "b", "ddpm", steps=2, **kw)
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # a killed run may have logged past its checkpoint
        f.write(json.dumps({"step": 3, "loss": 99.0}) + "\n")
    kw.pop("preset")
    train_model(phantoms, tmp_path / "b", "ddpm", steps=4, resume=True, **kw)
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exactly equal on the CPU


def test_sample_writes_a_scannable_dataset(trained, phantoms, tmp_path):
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan

    ds = sample_model(trained, 5, tmp_path / "s1", seed=1, batch=2, device="cpu")
    assert ds.n_items == 5 and ds.item_shape == (5, 16, 16) and ds.dtype == np.uint8
    assert list(ds.ids) == [f"sample_{i:06d}" for i in range(5)] and set(ds.subjects) == {"model"}
    assert ds.info["recipe"]["name"] == "sampled" and ds.info["recipe"]["checkpoint_step"] == 3
    again = sample_model(trained, 5, tmp_path / "s2", seed=1, batch=5, device="cpu")
    diff = np.abs(ds.read(0, 5).astype(int) - again.read(0, 5).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # batch-size invariant up to rounding
    other = sample_model(trained, 2, tmp_path / "s3", seed=2, batch=2, device="cpu")
    assert not np.array_equal(other.read(0, 2), ds.read(0, 2))
    result = scan(
        phantoms, tmp_path / "s1", tmp_path / "run", ScanOptions(top_k=1, baseline_items=0), report=False
    )
    assert len(result.synthetic) == 5


def test_sample_is_deterministic(trained, tmp_path):
    opts = dict(seed=4, device="cpu", sampler="ddim", sampling_steps=2)
    a = sample_model(trained, 2, tmp_path / "a", **opts)
    b = sample_model(trained, 2, tmp_path / "b", **opts)
    np.testing.assert_array_equal(a.read(0, 2), b.read(0, 2))
    assert a.info["recipe"]["sampler"] == "ddim" and a.info["recipe"]["sampling_steps"] == 2


def test_3d_float_multichannel(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.normal(100.0, 20.0, size=(4, 2, 8, 8, 8)).astype(np.float32)
    data = write_items(tmp_path / "vol", items, ("a", "b"))
    model = train_model(data, tmp_path / "m3", "ddpm", steps=1, batch=2, **FAST)
    ds = sample_model(model, 2, tmp_path / "s", device="cpu", sampling_steps=2)
    assert ds.item_shape == (2, 8, 8, 8) and ds.dtype == np.float32
    arr = ds.read(0, 2)
    assert arr.min() >= items.min() - 1e-3 and arr.max() <= items.max() + 1e-3


def _bad_case(case: str, phantoms: Path, tmp: Path) -> dict:
    out = tmp / "model"
    base = dict(data=phantoms, out=out, family="ddpm", preset="tiny", device="cpu", steps=2)
    if case == "steps0":
        return {**base, "steps": 0}
    if case == "batch0":
        return {**base, "batch": 0}
    if case == "missing_data":
        return {**base, "data": tmp / "nope"}
    if case == "family":
        return {**base, "family": "ddmp"}
    if case == "preset":
        return {**base, "preset": "quik"}
    if case == "not_empty":
        out.mkdir()
        (out / "x.txt").write_text("mine")
        return base
    if case == "resume_nothing":
        return {**base, "resume": True}
    if case == "config_key":
        (tmp / "cfg.json").write_text(json.dumps({"learning_rat": 1e-3}))
        return {**base, "config": tmp / "cfg.json"}
    if case == "size":
        write_items(tmp / "odd", np.zeros((2, 1, 18, 18), np.uint8) + np.arange(18, dtype=np.uint8), ("x",))
        return {**base, "data": tmp / "odd", "preset": "quick"}
    if case == "memory":
        return {**base, "batch": 10**9}
    if case == "cuda":
        return {**base, "device": "cuda"}
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "steps0",
        "batch0",
        "missing_data",
        "family",
        "preset",
        "not_empty",
        "resume_nothing",
        "config_key",
        "size",
        "memory",
        "cuda",
    ],
)
def test_bad_training_input_fails_before_any_work(case, phantoms, tmp_path):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    kwargs = _bad_case(case, phantoms, tmp_path)
    with pytest.raises(InputError):
        train_model(kwargs.pop("data"), kwargs.pop("out"), kwargs.pop("family"), **kwargs)
    out = tmp_path / "model"
    assert not out.exists() or [p.name for p in out.iterdir()] == ["x.txt"]


def test_bad_sampling_input(trained, tmp_path):
    with pytest.raises(InputError):
        sample_model(trained, 0, tmp_path / "s")
    with pytest.raises(InputError):
        sample_model(tmp_path / "nope", 2, tmp_path / "s")
    with pytest.raises(InputError):
        sample_model(trained, 2, tmp_path / "s", sampler="euler")
    with pytest.raises(InputError):
        sample_model(trained, 2, tmp_path / "s", sampling_steps=10**6, device="cpu")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "memscan", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_train_and_sample(phantoms, tmp_path):
    r = _cli("train", "ddpm", "--data", phantoms, "--out", tmp_path / "m", "--preset", "tiny", "--steps", 2)
    assert r.returncode == 0, r.stderr
    r = _cli(
        "sample", tmp_path / "m", "--n", 3, "--out", tmp_path / "s", "--device", "cpu", "--sampling-steps", 2
    )
    assert r.returncode == 0, r.stderr
    assert Dataset.open(tmp_path / "s").n_items == 3


@pytest.mark.parametrize("args", [("--steps", "0"), ("--data", "MISSING")])
def test_cli_bad_train_option_exits_2(phantoms, tmp_path, args):
    opts = {"--data": str(phantoms), "--steps": "2"}
    opts[args[0]] = args[1] if args[1] != "MISSING" else str(tmp_path / "missing")
    r = _cli(
        "train", "ddpm", "--out", tmp_path / "m", "--preset", "tiny", *[x for kv in opts.items() for x in kv]
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memscan: error:")


@pytest.mark.parametrize("shape", [(2, 16, 16), (1, 8, 8, 8)], ids=["2d", "3d"])
def test_stylegan2_trains_resumes_and_samples_through_the_loop(tmp_path, shape):
    """The shared loop with StyleGAN2, 2D and 3D: exact resume, batch-independent samples, scannable."""
    from memscan.scanning.options import ScanOptions
    from memscan.scanning.scanner import scan

    rng = np.random.default_rng(0)
    data = write_items(
        tmp_path / "data",
        rng.integers(0, 256, size=(6, *shape), dtype=np.uint8),
        tuple(f"c{i}" for i in range(shape[0])),
    )
    kw = dict(batch=2, checkpoint_every=2, **FAST)
    train_model(data, tmp_path / "a", "stylegan2", steps=4, **kw)
    train_model(data, tmp_path / "b", "stylegan2", steps=2, **kw)
    kw.pop("preset")
    train_model(data, tmp_path / "b", "stylegan2", steps=4, resume=True, **kw)
    a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss_g"] for r in a] == [r["loss_g"] for r in b] and [r["loss_d"] for r in a] == [
        r["loss_d"] for r in b
    ]
    s1 = sample_model(tmp_path / "a", 3, tmp_path / "s1", seed=3, device="cpu")
    s2 = sample_model(tmp_path / "a", 3, tmp_path / "s2", seed=3, batch=1, device="cpu")
    assert s1.item_shape == shape and s1.dtype == np.uint8
    np.testing.assert_array_equal(s1.read(0, 3), s2.read(0, 3))
    result = scan(data, s1.path, tmp_path / "run", ScanOptions(top_k=1, baseline_items=0), report=False)
    assert len(result.synthetic) == 3


def test_ddpm_resume_in_3d(tmp_path):
    rng = np.random.default_rng(1)
    data = write_items(tmp_path / "vol", rng.integers(0, 256, size=(4, 1, 8, 8, 8), dtype=np.uint8), ("t1",))
    kw = dict(batch=2, checkpoint_every=2, **FAST)
    train_model(data, tmp_path / "a", "ddpm", steps=4, **kw)
    train_model(data, tmp_path / "b", "ddpm", steps=2, **kw)
    kw.pop("preset")
    train_model(data, tmp_path / "b", "ddpm", steps=4, resume=True, **kw)
    assert [r["loss"] for r in read_log(tmp_path / "a")] == [r["loss"] for r in read_log(tmp_path / "b")]
