"""StyleGAN2 training throughput: the modulated convolution as per-sample kernels vs memscan's form, ONE run.

The model is memscan's StyleGAN2 (``quick`` preset, or ``--channel-base``/``--channel-max``) on smooth random
single-channel images, driven like ``memscan.models.train``: data kept on the device, no synchronisation per
step, bf16 autocast and fused Adam on CUDA, lazy R1 every ``r1_interval`` steps, ADA on.

* **per-sample kernels** — the modulated convolution as StyleGAN2's Eq. 1–3 read literally: a
  ``[B, out, in, k, k]`` kernel per image, demodulated, run as one grouped convolution (``groups = B``).
  The benchmark swaps this ``forward`` into every ``ModulatedConv``; nothing else changes.
* **memscan** — the same arithmetic as scaled activations, one shared-weight convolution and scaled outputs
  (``memscan.models.stylegan2.ModulatedConv``); at batch 32, at a large batch and (``--compile``) with the
  discriminator compiled for its non-R1 passes.

Each variant is timed over whole R1 cycles (``r1_interval`` steps, one of them with the R1 double
backward), so images/s is what a long training run gets. Prints a markdown table and the ratio to the
per-sample-kernel form; only ratios mean anything on a shared machine (BENCHMARKS.md).

    python benchmarks/bench_stylegan2.py --quick                 # CPU, tiny sizes (a smoke test)
    python benchmarks/bench_stylegan2.py --side 32 --channel-base 1024 --channel-max 128   # CPU, 32x32
    python benchmarks/bench_stylegan2.py --device cuda --compile --json sg2.json
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _sync, add_common_options, finish, guarded, make_dataset, setup  # noqa: E402

from memscan.models.stylegan2 import resolve_config  # noqa: E402

logger = logging.getLogger("bench_stylegan2")


def per_sample_kernel_forward(self: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``ModulatedConv.forward`` with explicit per-sample kernels and a grouped convolution (reference)."""
    if self.up:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    batch, in_ch = x.shape[:2]
    out_ch, kernel_dims = self.weight.shape[0], self.weight.ndim - 2
    styles = self.affine(w)
    weight = self.weight[None] * self.weight_gain * styles.view(batch, 1, in_ch, *[1] * kernel_dims)
    if self.demodulate:
        weight = weight * torch.rsqrt(
            weight.square().sum(dim=tuple(range(2, weight.ndim)), keepdim=True) + 1e-8
        )
    out = self.conv(
        x.reshape(1, batch * in_ch, *x.shape[2:]),
        weight.reshape(batch * out_ch, in_ch, *weight.shape[3:]),
        padding=self.padding,
        groups=batch,
    )
    return out.reshape(batch, out_ch, *out.shape[2:])


def run_variant(
    data_path: Path, args: argparse.Namespace, device: torch.device, batch: int, grouped: bool, compile: bool
) -> float:
    """Images/s over ``args.cycles`` R1 cycles."""
    from memscan.dataset.store import Dataset
    from memscan.models.data import DeviceData
    from memscan.models.data import data_info as _data_info
    from memscan.models.scaling import data_scaling
    from memscan.models.stylegan2 import ModulatedConv, build

    torch.manual_seed(0)
    ds = Dataset.open(data_path)
    config = {"channel_base": args.channel_base, "channel_max": args.channel_max, "batch_size": batch}
    model = build(config, _data_info(ds), preset="quick")
    if grouped:
        for net in (model.G, model.D, model.G_ema):
            for module in net.modules():
                if isinstance(module, ModulatedConv):
                    module.forward = types.MethodType(per_sample_kernel_forward, module)
    amp = torch.bfloat16 if device.type == "cuda" else None
    model.configure(device, amp=amp, compile=compile)
    feed = DeviceData(ds, data_scaling(ds), device, device, seed=0)
    cycle = model.config.r1_interval
    step = 1
    out: dict[str, Any] = {}
    for _ in range(args.warmup * (3 if compile else 1)):  # steps 1.. (no R1) then one R1 step
        out = model.train_step(feed.batch(batch), step)
        step += 1
    out = model.train_step(feed.batch(batch), 0)  # an R1 step in the warm-up too
    float(out["loss_d"])
    _sync(device)
    t0 = time.perf_counter()
    for s in range(cycle * args.cycles):  # whole cycles: exactly one R1 step per cycle
        out = model.train_step(feed.batch(batch), cycle + s)
    float(out["loss_d"])
    _sync(device)
    return batch * cycle * args.cycles / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, big_batch_default=256)
    p.add_argument("--side", type=int, default=None, help="image side (default 64; --quick 16)")
    p.add_argument("--channel-base", type=int, default=None, help="default: the quick preset's 4096")
    p.add_argument("--channel-max", type=int, default=None, help="default: the quick preset's 256")
    p.add_argument("--cycles", type=int, default=None, help="timed R1 cycles per variant")
    args = p.parse_args()
    device = setup(args)
    cuda = device.type == "cuda"
    if args.quick:
        args.side = args.side or 16
        args.channel_base, args.channel_max = args.channel_base or 256, args.channel_max or 32
        args.batch, args.big_batch = 8, args.big_batch or 16
        args.cycles, args.warmup = args.cycles or 1, args.warmup or 2
    else:
        args.side = args.side or 64
        args.channel_base, args.channel_max = args.channel_base or 4096, args.channel_max or 256
        args.batch, args.big_batch = 32, args.big_batch or (256 if cuda else 64)
        args.cycles, args.warmup = args.cycles or (4 if cuda else 1), args.warmup or (5 if cuda else 1)
    if args.side < 4 or args.side & (args.side - 1):
        p.error("--side must be a power of two >= 4")

    variants: list[tuple[str, int, bool, bool]] = [
        ("per-sample kernels (grouped conv)", args.batch, True, False),
        ("memscan", args.batch, False, False),
        ("memscan", args.big_batch, False, False),
    ]
    if args.compile:
        variants.append(("memscan + torch.compile (D)", args.big_batch, False, True))
    rows: list[tuple[str, int, float]] = []
    cycle = resolve_config(None, "quick").r1_interval
    with tempfile.TemporaryDirectory() as tmp:
        data_path = make_dataset(Path(tmp), max(256, 2 * args.big_batch), args.side)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for name, b, grouped, comp in variants:
            run = functools.partial(run_variant, data_path, args, device, b, grouped, comp)
            rows.append((name, b, guarded(name, b, run)))

    finish(
        args,
        device,
        f"StyleGAN2 training, {args.side}x{args.side} x1, channel_base {args.channel_base}, channel_max "
        f"{args.channel_max}, {args.cycles} R1 cycle(s) of {cycle} steps per variant",
        ("modulated convolution", "per-sample kernels"),
        rows,
        {"side": args.side, "channel_base": args.channel_base, "channel_max": args.channel_max},
    )


if __name__ == "__main__":
    main()
