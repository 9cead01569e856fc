"""Benchmark of the exact top-k correlation search against its baselines, in ONE run.

Times, on the same image-like data (smooth random fields, uint8; a third of the queries are noisy
copies of training images): the torch bf16 matrix product alone (the physical limit), a NumPy float32
blocked product + argmax, faiss ``IndexFlatIP`` (exact float32), memscan ``search_topk`` (precision
auto and float64; its time includes normalising the raw uint8 items), and the study's per-pair method
(``scipy.stats.pearsonr`` per pair, in memory, on a sample, extrapolated; the study also re-read the
PNGs, which this leaves out). Prints a markdown table; only the ratios mean anything on a shared
machine (see BENCHMARKS.md).

    python benchmarks/bench_engine.py --quick
    python benchmarks/bench_engine.py --nq 2000 --nt 20000 --side 128 --k 5
    python benchmarks/bench_engine.py --device cuda --json gpu.json     # 8192 x 65536 x 16384
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from memscan.search.engine import item_stats, resolve_precision, search_topk

logger = logging.getLogger("bench_engine")


def make_images(
    n_train: int, n_query: int, side: int, seed: int = 0, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random fields as uint8 ``[n, side*side]``; every third query is a noisy train copy.

    ``device='cuda'`` generates them on the GPU (the GPU scripts' shapes: 130,000 images of 256² take
    minutes on a CPU); the images differ from the CPU's but have the same statistics.
    """
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    low = max(4, side // 8)

    def fields(n: int) -> np.ndarray:
        out = np.empty((n, side * side), dtype=np.uint8)
        for s in range(0, n, 2048):
            m = min(n, s + 2048) - s
            x = torch.rand(m, 1, low, low, generator=gen, device=dev)
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bicubic", align_corners=False)
            x = x + 0.05 * torch.rand(m, 1, side, side, generator=gen, device=dev)
            x = (x - x.amin(dim=(2, 3), keepdim=True)) / (
                x.amax(dim=(2, 3), keepdim=True) - x.amin(dim=(2, 3), keepdim=True)
            )
            out[s : s + m] = (x * 255).round().to(torch.uint8).reshape(m, -1).cpu().numpy()
        return out

    train = fields(n_train)
    queries = fields(n_query)
    copies = np.arange(0, n_query, 3)
    src = torch.randint(0, n_train, (len(copies),), generator=gen, device=dev).cpu().numpy()
    for s in range(0, len(copies), 2048):
        rows = torch.from_numpy(train[src[s : s + 2048]]).to(dev, torch.int16)
        noise = torch.randint(-3, 4, rows.shape, generator=gen, device=dev, dtype=torch.int16)
        queries[copies[s : s + 2048]] = (rows + noise).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return train, queries


def normalised(a: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    mean, norm = item_stats(a)
    z = (a.astype(np.float64) - mean[:, None]) / np.where(norm > 0, norm, np.inf)[:, None]
    return z.astype(dtype)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def blocks_of(t: np.ndarray, size: int) -> Callable[[], Any]:
    return lambda: ((s, t[s : s + size]) for s in range(0, len(t), size))


def torch_mm_rate(zq: torch.Tensor, zt: torch.Tensor, block: int, device: str) -> float:
    """Seconds for the bf16 product alone, train in blocks (scores discarded)."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, zt.shape[0], block):
        torch.mm(zq, zt[s : s + block].t())
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    d = args.side * args.side
    flops = 2.0 * args.nq * args.nt * d
    logger.info("generating %d train + %d query images of %dx%d", args.nt, args.nq, args.side, args.side)
    train, queries = make_images(args.nt, args.nq, args.side)
    rows: list[tuple[str, float, str]] = []
    block = 4096

    zq32, zt32 = normalised(queries), normalised(train)
    zqb, ztb = torch.from_numpy(zq32).bfloat16(), torch.from_numpy(zt32).bfloat16()
    torch.mm(zqb[:64], ztb[:64].t())  # warm-up
    t_mm, _ = timed(lambda: torch_mm_rate(zqb, ztb, block, "cpu"), args.repeat)
    rows.append(("torch bf16 matrix product alone (not exact)", t_mm, ""))
    zqb = ztb = None  # free

    def numpy_argmax() -> np.ndarray:
        best = np.full(args.nq, -np.inf, dtype=np.float32)
        arg = np.zeros(args.nq, dtype=np.int64)
        for s in range(0, args.nt, block):
            sc = zq32 @ zt32[s : s + block].T
            a = sc.argmax(axis=1)
            v = sc[np.arange(args.nq), a]
            better = v > best
            best[better], arg[better] = v[better], a[better] + s
        return arg

    t_np, np_top1 = timed(numpy_argmax, args.repeat)
    rows.append(("NumPy float32 blocked product + argmax", t_np, ""))

    t_faiss, faiss_res = None, None
    try:
        import faiss
    except ImportError:
        logger.warning("faiss is not installed: skipping IndexFlatIP (pip install faiss-cpu)")
    else:

        def faiss_search() -> tuple[np.ndarray, np.ndarray]:
            index = faiss.IndexFlatIP(d)
            index.add(zt32)
            return index.search(zq32, args.k)

        t_faiss, faiss_res = timed(faiss_search, args.repeat)
        rows.append((f"faiss IndexFlatIP exact float32, k={args.k}", t_faiss, ""))

    prec = resolve_precision("auto", "cpu", queries.dtype, queries.shape[1])
    t_ms, res = timed(
        lambda: search_topk(queries, blocks_of(train, block), args.k, precision="auto"), args.repeat
    )
    rows.append(
        (
            f"memscan search_topk, exact, screen {prec} (from raw uint8)",
            t_ms,
            f"{res.n_candidates / args.nq:.1f} candidates/query, ε={res.epsilon:.2e}",
        )
    )
    t_64, res64 = timed(
        lambda: search_topk(queries, blocks_of(train, block), args.k, precision="float64"), args.repeat
    )
    rows.append(
        (
            "memscan search_topk, exact, screen float64",
            t_64,
            f"{res64.n_candidates / args.nq:.1f} candidates/query",
        )
    )
    # int8 and float64 are two exact formulas: same ids, values equal to rounding (bitwise for bf16)
    identical = bool(
        np.array_equal(res.indices, res64.indices)
        and np.allclose(res.values, res64.values, rtol=0, atol=1e-13)
    )

    from scipy.stats import pearsonr

    rng = np.random.default_rng(1)
    n_pairs = args.pairs
    qi, ti = rng.integers(0, args.nq, n_pairs), rng.integers(0, args.nt, n_pairs)
    t0 = time.perf_counter()
    for a, b in zip(qi, ti, strict=True):
        pearsonr(queries[a].astype(np.float64), train[b].astype(np.float64))
    per_pair = (time.perf_counter() - t0) / n_pairs
    t_study = per_pair * args.nq * args.nt
    rows.append(
        (
            f"study: scipy pearsonr per pair (in memory; {per_pair * 1e6:.0f} µs/pair, extrapolated)",
            t_study,
            "",
        )
    )

    # exactness checks against the baselines where the top-1 is unambiguous (gap > float32 error)
    checks = {}
    if faiss_res is not None:
        fv, fi = faiss_res
        clear = (fv[:, 0] - fv[:, 1]) > 1e-4
        same = int((fi[clear, 0] == res.indices[clear, 0]).sum())
        checks["faiss_top1_equal"] = f"{same}/{int(clear.sum())} (queries whose float32 top-1 gap > 1e-4)"
        checks["faiss_topk_equal"] = f"{int((fi == res.indices).all(axis=1).sum())}/{args.nq}"
    checks["numpy_top1_equal"] = f"{int((np_top1 == res.indices[:, 0]).sum())}/{args.nq}"
    checks[f"{prec}_equals_float64 (ids; values within 1e-13)"] = identical

    print(
        f"\nshape n_q={args.nq} × n_t={args.nt} × d={d} ({args.side}×{args.side}), k={args.k}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| method | seconds | GFLOP/s | speed vs faiss | notes |")
    print("|---|---|---|---|---|")
    for name, sec, note in rows:
        ratio = f"{t_faiss / sec:.2f}×" if t_faiss else "—"
        print(f"| {name} | {sec:.3f} | {flops / sec / 1e9:,.0f} | {ratio} | {note} |")
    print()
    for key, val in checks.items():
        print(f"- {key}: {val}")
    print(f"- memscan auto vs bf16 product alone: {t_mm / t_ms:.0%} of the product's rate")
    print(f"- memscan auto vs study per-pair: {t_study / t_ms:,.0f}× faster")
    return {"rows": [{"method": n, "seconds": s, "note": x} for n, s, x in rows], "checks": checks}


def run_cuda(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    d = args.side * args.side
    flops = 2.0 * args.nq * args.nt * d
    train, queries = make_images(args.nt, args.nq, args.side, device="cuda")
    block = args.block
    zq = torch.from_numpy(normalised(queries[:])).to("cuda").bfloat16()
    zt = torch.empty((args.nt, d), dtype=torch.bfloat16, device="cuda")
    for s in range(0, args.nt, 8192):
        zt[s : s + 8192] = torch.from_numpy(normalised(train[s : s + 8192])).to("cuda").bfloat16()
    torch_mm_rate(zq, zt[:block], block, "cuda")
    t_mm, _ = timed(lambda: torch_mm_rate(zq, zt, block, "cuda"), args.repeat)
    zq = zt = None  # free
    torch.cuda.empty_cache()
    search_topk(queries[:256], blocks_of(train[:block], block), args.k, device="cuda")  # warm-up
    t_ms, res = timed(
        lambda: search_topk(queries, blocks_of(train, block), args.k, device="cuda"), args.repeat
    )
    out = {
        "shape": [args.nq, args.nt, d],
        "k": args.k,
        "device": torch.cuda.get_device_name(),
        "bf16_matmul_seconds": t_mm,
        "bf16_matmul_tflops": flops / t_mm / 1e12,
        "memscan_seconds": t_ms,
        "memscan_tflops": flops / t_ms / 1e12,
        "memscan_percent_of_bf16_matmul": 100.0 * t_mm / t_ms,
        "candidates_per_query": res.n_candidates / args.nq,
        "epsilon": res.epsilon,
        "n_fallback": res.n_fallback,
    }
    print("| method | seconds | TFLOP/s | % of bf16 product |")
    print("|---|---|---|---|")
    print(f"| torch bf16 product alone | {t_mm:.3f} | {out['bf16_matmul_tflops']:.0f} | 100% |")
    print(
        f"| memscan search_topk (bf16 screen, exact) | {t_ms:.3f} | {out['memscan_tflops']:.0f} | "
        f"{out['memscan_percent_of_bf16_matmul']:.0f}% |"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nq", type=int, default=None, help="queries (default 2000; cuda 8192)")
    p.add_argument("--nt", type=int, default=None, help="train items (default 20000; cuda 65536)")
    p.add_argument("--side", type=int, default=128, help="image side, d = side² (default 128)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1, help="best of N runs")
    p.add_argument("--pairs", type=int, default=300, help="pairs timed for the study's per-pair method")
    p.add_argument("--block", type=int, default=16384, help="train block size on cuda")
    p.add_argument("--quick", action="store_true", help="small shape: 500 × 5000 × 64²")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.nq, args.nt, args.side = args.nq or 500, args.nt or 5000, 64
    if args.device == "cuda":
        args.nq, args.nt = args.nq or 8192, args.nt or 65536
        out = run_cuda(args)
    else:
        args.nq, args.nt = args.nq or 2000, args.nt or 20000
        out = run_cpu(args)
    out["args"] = vars(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
