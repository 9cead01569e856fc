#!/usr/bin/env bash
# The scan's GPU check, as ONE prepared script (issue 3). On the device machine, from the repo root:
#     bash benchmarks/gpu_scan.sh            # results (markdown + JSON) under $OUT
# Before: bash benchmarks/fetch_gpu_wheels.sh here, and carry .whl. QUICK=1 shrinks every size (CPU test).
# What it measures, each in one run: the GPU exactness tests; the engine's rate against the bare bf16 and
# int8 products (8,192 x 65,536 x 128²); memscan scan end to end from dataset folders at that shape;
# and the study's scale (100,000 synthetic x 30,000 training at 256², memscan alone, 48 GiB budget).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memscan-gpu-out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
DEV=cuda
if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; S1="--nq 256 --nt 2048 --side 32"; S2="--nq 128 --nt 512 --side 64 --only-memscan"; EPAR="--quick"
else
  S1="--nq 8192 --nt 65536 --side 128"; S2="--nq 100000 --nt 30000 --side 256 --only-memscan --memory-budget 48GiB"
  EPAR="--device cuda"
fi
(nvidia-smi || true) > "$OUT/env.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/env.txt"
$PY -m pytest -q -p no:cacheprovider tests/search/test_engine.py -k "cuda or int8" 2>&1 | tail -5 | tee "$OUT/gpu-tests.txt"
$PY benchmarks/bench_engine.py $EPAR 2>&1 | tee "$OUT/engine.md"   # at most 8 files come back: 7 here
$PY benchmarks/bench_scan.py --device $DEV $S1 --skip-reference --pairs 50 --json "$OUT/scan.json" \
  --workdir /tmp/bench1 2>&1 | tee "$OUT/scan.md"
rm -rf /tmp/bench1
$PY benchmarks/bench_scan.py --device $DEV $S2 --skip-reference --pairs 20 --json "$OUT/study_scale.json" \
  --workdir /tmp/bench2 2>&1 | tee "$OUT/study_scale.md"

