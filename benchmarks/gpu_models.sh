#!/usr/bin/env bash
# The generative models' GPU check, as ONE prepared script (issue 5). On the device machine, repo root:
#     bash benchmarks/gpu_models.sh            # results under $OUT (at most 8 files: the device tool's limit)
# Before: bash benchmarks/fetch_gpu_wheels.sh here (MONAI, zarr, numcodecs, nibabel, pydicom, ... are not on
# the GPU machine; MONAI's attention blocks also need einops: add einops==0.8.2 to that list), and carry .whl.
# With a .whl folder the wheels go to /tmp/site (pip --no-index, nothing downloaded); memscan itself runs
# from src/ via PYTHONPATH (no pip install of memscan).
# QUICK=1 shrinks every size and runs on the CPU (a test of this script; ~1 minute).
#
# What it does, in one run:
#   1. benchmarks/bench_train.py: plain MONAI loop vs memscan's loop (+ torch.compile), images/s and ratio;
#      benchmarks/bench_stylegan2.py: StyleGAN2 with per-sample kernels vs memscan's modulated convolution;
#   2. phantom BraTS slices at 64x64 (one channel, t1): 32 training slices of 2 subjects, held-out slices of
#      2 other subjects;
#   3. memscan's DDPM (preset quick) trained on the 32 slices for STEPS steps (log, grids, throughput, peak
#      GPU memory via torch.cuda.max_memory_allocated);
#   4. N samples (ancestral sampler on 100 strided steps) -> sampling throughput; a grid of samples;
#   5. memscan scan TRAIN SAMPLES --holdout HOLDOUT: how many samples are flagged as copies (the study's
#      effect: a DDPM trained long enough on 32 images reproduces them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memscan-gpu-models}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
WORK=${WORK:-/tmp/memscan-models-work}
rm -rf "$WORK"; mkdir -p "$WORK"
if [ "${QUICK:-0}" = 1 ]; then
  export OMP_NUM_THREADS=1
  DEV=cpu; SIZE=16; SHAPE="32,32,24"; PRESET=tiny; STEPS=${STEPS:-20}; BATCH=8; N=${N:-16}; BENCH="--quick"
  SAMPLING="--sampling-steps 5"
else
  DEV=cuda; SIZE=64; SHAPE="128,128,80"; PRESET=quick; STEPS=${STEPS:-4000}; BATCH=32; N=${N:-512}
  BENCH="--device cuda --compile"; SAMPLING="--sampling-steps 100"
fi
{
  (nvidia-smi || true)
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

  echo "== 1. training throughput: plain MONAI loop vs memscan =="
  # time limits (one device call may run 10 minutes): a stage that runs out is recorded, the next runs
  timeout "${T_BENCH:-170}" $PY benchmarks/bench_train.py $BENCH --json "$OUT/bench_train.json" \
    || echo "bench_train: rc $? (timed out or failed)"

  echo "== 1b. StyleGAN2 training throughput: per-sample kernels vs memscan's modulated convolution =="
  timeout "${T_SG2:-90}" $PY benchmarks/bench_stylegan2.py $BENCH --json "$OUT/bench_stylegan2.json" \
    || echo "bench_stylegan2: rc $? (timed out or failed)"

  echo "== 2-4. phantoms, training, sampling =="
  rc=0
  timeout "${T_TRAIN:-270}" $PY - "$WORK" "$OUT" "$DEV" "$SIZE" "$SHAPE" "$PRESET" "$STEPS" "$BATCH" "$N" \
    $SAMPLING <<'EOF' || rc=$?
import json, shutil, sys, time
from pathlib import Path

import numpy as np
import torch

from memscan.phantoms import write_brats_tree
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.dataset.store import Dataset, DatasetWriter
from memscan.models.sample import sample_model
from memscan.models.grids import write_grid
from memscan.models.scaling import to_model_range
from memscan.models.train import read_log, train_model

work, out, dev, size, shape, preset, steps, batch, n = sys.argv[1:10]
sampling_steps = int(sys.argv[11])
work, out, size, steps, batch, n = Path(work), Path(out), int(size), int(steps), int(batch), int(n)
shape = tuple(int(s) for s in shape.split(","))

write_brats_tree(work / "raw", 4, shape=shape)
full = prepare_dataset(work / "raw", work / "all", PrepareOptions(layout="brats", size=size, modalities=("t1",)))
subjects = sorted(set(full.subjects))


def subset(name: str, keep: list[str], limit: int | None) -> Path:
    pos = [i for i, s in enumerate(full.subjects) if s in keep][:limit]
    items = full.take(pos)
    with DatasetWriter(work / name, full.item_shape, str(full.dtype), full.channels, recipe={"name": name}) as w:
        for i, p in enumerate(pos):
            w.add(items[i], {"id": full.ids[p], "subject": full.subjects[p], "source": "phantom"})
        w.commit()
    return work / name


train = subset("train32", subjects[:2], 32)
holdout = subset("holdout", subjects[2:], None)
print("training slices:", Dataset.open(train).n_items, "held-out slices:", Dataset.open(holdout).n_items)

if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
train_model(train, work / "model", "ddpm", preset=preset, steps=steps, batch=batch, device=dev,
            log_every=max(1, steps // 40), checkpoint_every=max(1, steps // 4), sample_every=max(1, steps // 4))
train_s = time.perf_counter() - t0
peak_train = torch.cuda.max_memory_allocated() if dev == "cuda" else None
log = read_log(work / "model")
steady = [r["images_per_s"] for r in log[len(log) // 4:]] or [log[-1]["images_per_s"]]

if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
ds = sample_model(work / "model", n, work / "samples", seed=0, batch=min(n, 512), device=dev,
                  sampler="ddpm", sampling_steps=sampling_steps)
sample_s = time.perf_counter() - t0
peak_sample = torch.cuda.max_memory_allocated() if dev == "cuda" else None
grid = to_model_range(torch.from_numpy(ds.read(0, 16)), {"lo": 0.0, "hi": 255.0})
write_grid(grid, out / "samples_grid.png")
grids = sorted((work / "model" / "samples").glob("*.png"))
shutil.copy(grids[-1], out / "train_grid_last.png")
shutil.copy(work / "model" / "log.jsonl", out / "train_log.jsonl")
result = {
    "device": dev,
    "gpu": torch.cuda.get_device_name() if dev == "cuda" else None,
    "image_size": size, "preset": preset, "train_items": 32, "steps": steps, "batch": batch,
    "train_seconds": train_s,
    "train_images_per_s_steady_median": float(np.median(steady)),
    "final_loss": log[-1]["loss"],
    "peak_gpu_memory_train_bytes": peak_train,
    "samples": n, "sampling_steps": sampling_steps, "sample_seconds": sample_s,
    "sample_images_per_s": n / sample_s,
    "peak_gpu_memory_sample_bytes": peak_sample,
}
(work / "result.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
EOF
  if [ "$rc" != 0 ]; then  # cut short: keep what the training wrote so far
    echo "training/sampling: rc $rc (timed out or failed)"
    cp "$WORK/model/log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null || true
  fi

  echo "== 5. memscan scan: samples against the 32 training slices, calibrated on held-out subjects =="
  $PY -m memscan --quiet scan "$WORK/train32" "$WORK/samples" --out "$WORK/run" --holdout "$WORK/holdout" \
    --top-k 1 --device "$DEV" --baseline-items 0 || echo "scan exit code $?"
  $PY - "$WORK" "$OUT" <<'EOF' || echo "results.json: rc $? (an earlier stage did not finish)"
import json, sys
from pathlib import Path

import pandas as pd

work, out = Path(sys.argv[1]), Path(sys.argv[2])
result = json.loads((work / "result.json").read_text())
summary = json.loads((work / "run" / "summary.json").read_text())
syn = pd.read_parquet(work / "run" / "synthetic.parquet")
result["scan"] = {k: summary.get(k) for k in ("n_train", "n_synthetic", "n_holdout", "threshold",
                                             "threshold_source", "n_flagged", "flagged_fraction",
                                             "subjects_leaked", "seconds")}
result["scan"]["fraction_above_0.95"] = float((syn["max_correlation"] > 0.95).mean())
result["scan"]["max_correlation_quantiles"] = syn["max_correlation"].quantile([0.5, 0.9, 0.99]).tolist()
(out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result["scan"], indent=2))
EOF
} 2>&1 | tee "$OUT/console.log"
ls -la "$OUT"
