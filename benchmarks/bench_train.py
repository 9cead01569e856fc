"""DDPM training throughput: a plain MONAI loop against memscan's loop, same model and data, in ONE run.

The model is the one of BENCHMARKS.md's anchor: ``DiffusionModelUNet`` with channels 64/128/128, 2 residual
blocks, attention at the two lower levels, 64 x 64 single-channel images, T = 1000, AdamW.

* **plain** — what a MONAI tutorial does: data in a CPU ``DataLoader`` (batch 32, shuffled), copied to the
  device per batch, bf16 autocast (CUDA), ``loss.item()`` every step, unfused AdamW, eager attention.
* **memscan** — ``memscan.models.ddpm.DDPM`` driven like ``memscan.models.train``: the data kept on the
  device (uint8) with a device-side batch sampler, no synchronisation per step, SDPA attention, fused AdamW
  and channels-last on CUDA, EMA update included (the plain loop has none); at batch 32, at a large batch,
  and (``--compile``) with ``torch.compile``.

Prints a markdown table of images/s and the ratio to the plain loop; only ratios mean anything on a shared
machine (BENCHMARKS.md).

    python benchmarks/bench_train.py --quick                 # CPU, tiny sizes (a smoke test of the script)
    python benchmarks/bench_train.py --device cuda --compile --json train.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("bench_train")


def make_dataset(folder: Path, n: int, side: int, seed: int = 0) -> Path:
    """Smooth random uint8 images ``[n, 1, side, side]`` written as a memscan dataset folder."""
    from memscan.dataset.store import DatasetWriter

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, max(4, side // 8), max(4, side // 8), generator=gen)
    x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    items = (x * 255).round().to(torch.uint8).numpy()
    path = folder / "bench-data"
    with DatasetWriter(path, items.shape[1:], "uint8", ("image",), recipe={"name": "bench"}) as w:
        for i, item in enumerate(items):
            w.add(item, {"id": f"img{i}", "subject": f"s{i}"})
        w.commit()
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(
    items: np.ndarray, args: argparse.Namespace, device: torch.device, batch: int, steps: int
) -> float:
    """A plain MONAI training loop; returns images/s over ``steps`` timed steps (after warm-up)."""
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    torch.manual_seed(0)
    model = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=args.channels,
        attention_levels=(False, True, True),
        num_res_blocks=2,
        num_head_channels=args.head_channels,
        norm_num_groups=args.groups,
    ).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.from_numpy(items).float() / 127.5 - 1.0
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True
    )
    amp = device.type == "cuda"

    def run(n_steps: int) -> None:
        done = 0
        while done < n_steps:
            for (images,) in loader:
                images = images.to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    noise = torch.randn_like(images)
                    t = torch.randint(0, 1000, (images.shape[0],), device=device).long()
                    pred = inferer(inputs=images, diffusion_model=model, noise=noise, timesteps=t)
                    loss = F.mse_loss(pred.float(), noise.float())
                loss.backward()
                optimizer.step()
                loss.item()
                done += 1
                if done >= n_steps:
                    return

    run(args.warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(steps)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def memscan_loop(
    data_path: Path,
    args: argparse.Namespace,
    device: torch.device,
    batch: int,
    steps: int,
    compile: bool | str,
) -> float:
    """memscan's DDPM + device-resident data; returns images/s over ``steps`` timed steps."""
    from memscan.dataset.store import Dataset
    from memscan.models.data import DeviceData
    from memscan.models.data import data_info as _data_info
    from memscan.models.ddpm import build
    from memscan.models.scaling import data_scaling

    torch.manual_seed(0)
    ds = Dataset.open(data_path)
    config = {
        "channels": list(args.channels),
        "num_res_blocks": 2,
        "attention_resolutions": [args.side // 2, args.side // 4],
        "num_head_channels": args.head_channels,
        "norm_num_groups": args.groups,
        "num_train_timesteps": 1000,
        "lr": 1e-4,
    }
    model = build(config, _data_info(ds), preset="quick")
    assert model.levels == (False, True, True), model.levels
    amp = torch.bfloat16 if device.type == "cuda" else None
    model.configure(device, amp=amp, compile=compile, channels_last=device.type == "cuda")
    feed = DeviceData(ds, data_scaling(ds), device, device, seed=0)
    loss = None
    warmup = args.warmup * (5 if compile else 1)
    for s in range(warmup):
        loss = model.train_step(feed.batch(batch), s)["loss"]
    float(loss)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(steps):
        loss = model.train_step(feed.batch(batch), s)["loss"]
    float(loss)  # one synchronisation at the end, as the training loop does per log interval
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def add_common_options(p: argparse.ArgumentParser, big_batch_default: int) -> None:
    """The options every training benchmark takes (this one and bench_stylegan2.py)."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="tiny CPU sizes: checks that the script runs")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    p.add_argument(
        "--big-batch", type=int, default=None, help=f"the large batch (default {big_batch_default} on CUDA)"
    )
    p.add_argument("--compile", action="store_true", help="also time memscan with torch.compile")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (--quick: 1; a shared CPU thrashes)"
    )


def setup(args: argparse.Namespace) -> torch.device:
    """Logging, the device (``auto``: CUDA when present) and the CPU thread count (``--quick``: 1)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    return device


def guarded(name: str, batch: int, run: Any) -> float:
    """``run()`` (images/s), logged; NaN when it fails: one variant failing must not cost the others."""
    try:
        rate = float(run())
    except Exception as exc:  # noqa: BLE001
        logger.info("%s batch %d failed: %s", name, batch, exc)
        return float("nan")
    logger.info("%s batch %d: %.1f images/s", name, batch, rate)
    return rate


def finish(
    args: argparse.Namespace,
    device: torch.device,
    title: str,
    names: tuple[str, str],
    rows: list[tuple[str, int, float]],
    info: dict[str, Any],
) -> None:
    """Print the markdown table (images/s and the ratio to the first row) and write ``--json``.

    ``names``: the column title of the variants and the short name of the first row (the baseline).
    """
    column, baseline = names
    base = rows[0][2]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    threads = torch.get_num_threads()
    print(f"\n{title}, device {device.type} ({gpu}, {threads} threads), torch {torch.__version__}\n")
    print(f"| {column} | batch | images/s | vs {baseline} |")
    print("|---|---|---|---|")
    for label, b, rate in rows:
        print(f"| {label} | {b} | {rate:,.1f} | {rate / base:.2f}x |")
    result: dict[str, Any] = {
        "device": device.type,
        **info,
        "rows": [{column: n, "batch": b, "images_per_s": r, "vs_first": r / base} for n, b, r in rows],
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        print(f"\npeak GPU memory: {result['peak_memory_bytes'] / 2**30:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, big_batch_default=512)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    args = p.parse_args()
    device = setup(args)
    if args.quick:
        args.side, args.channels, args.head_channels, args.groups = 16, (16, 32, 32), 16, 8
        args.n_images, args.batch = 64, 8
        args.steps = args.steps or 10
        args.warmup = args.warmup or 3
        args.big_batch = args.big_batch or 32
    else:
        args.side, args.channels, args.head_channels, args.groups = 64, (64, 128, 128), 64, 32
        args.n_images, args.batch = 1024, 32
        args.steps = args.steps or (50 if device.type == "cuda" else 4)
        args.warmup = args.warmup or (10 if device.type == "cuda" else 1)
        args.big_batch = args.big_batch or (512 if device.type == "cuda" else 64)

    with tempfile.TemporaryDirectory() as tmp:
        data_path = make_dataset(Path(tmp), args.n_images, args.side)
        from memscan.dataset.store import Dataset

        items = Dataset.open(data_path).read(0, args.n_images)
        rows: list[tuple[str, int, float]] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(("plain MONAI loop", args.batch, plain_loop(items, args, device, args.batch, args.steps)))
        logger.info("plain: %.1f images/s", rows[-1][2])
        variants: list[tuple[str, int, bool | str]] = [
            ("memscan", args.batch, False),
            ("memscan", args.big_batch, False),
        ]
        if args.compile:
            variants.append(("memscan + torch.compile", args.big_batch, True))
            if device.type == "cuda":  # the small batch is launch-bound: CUDA graphs replay it in one call
                variants.append(("memscan + torch.compile, CUDA graphs", args.batch, "reduce-overhead"))
        for name, b, comp in variants:
            # the same images as the batch-32 runs, but at least 10 timed steps (a few steps time poorly)
            steps = (
                max(10 if device.type == "cuda" else 2, args.steps * args.batch // b)
                if b > args.batch
                else args.steps
            )
            run = functools.partial(memscan_loop, data_path, args, device, b, steps, comp)
            rows.append((name, b, guarded(name, b, run)))

    finish(
        args,
        device,
        f"DDPM training, {args.side}x{args.side} x1, U-Net {'/'.join(map(str, args.channels))}",
        ("loop", "plain"),
        rows,
        {"side": args.side, "channels": list(args.channels)},
    )


if __name__ == "__main__":
    main()
