#!/usr/bin/env bash
# The scan's GPU check, as ONE prepared script (issue 3). On the device machine, from the repo root:
#     bash benchmarks/gpu_scan.sh            # results (markdown + JSON) under $OUT
# Before: bash benchmarks/fetch_gpu_wheels.sh here, and carry .whl. QUICK=1 shrinks every size (CPU test).
# What it measures, each in one run: the GPU exactness tests; the engine's rate against the bare bf16 and
# int8 products (8,192 x 65,536 x 128²); memscan scan end to end from dataset folders at that shape;
# and a study-scale slice (20,000 synthetic x 30,000 training at 256²), extrapolated linearly (stated).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memscan-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  ${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
DEV=cuda
PY=${PYTHON:-python3}
if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; S1="--nq 256 --nt 2048 --side 32"; S2="--nq 128 --nt 512 --side 64"; EPAR="--quick"
else
  S1="--nq 8192 --nt 65536 --side 128"; S2="--nq 20000 --nt 30000 --side 256"; EPAR="--device cuda"
fi
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee "$OUT/torch.txt"
$PY -m pytest -q -p no:cacheprovider tests/search/test_engine.py -k "cuda or int8" 2>&1 | tail -5 | tee "$OUT/gpu-tests.txt"
$PY benchmarks/bench_engine.py $EPAR --json "$OUT/engine.json" 2>&1 | tee "$OUT/engine.md"
$PY benchmarks/bench_scan.py --device $DEV $S1 --skip-reference --pairs 50 --json "$OUT/scan.json" \
  --workdir /tmp/bench1 2>&1 | tee "$OUT/scan.md"
rm -rf /tmp/bench1
$PY benchmarks/bench_scan.py --device $DEV $S2 --skip-reference --pairs 20 --json "$OUT/study_slice.json" \
  --workdir /tmp/bench2 2>&1 | tee "$OUT/study_slice.md"
echo "study scale (100,000 x 30,000) extrapolated linearly from the 20,000 x 30,000 slice: x5" | tee -a "$OUT/study_slice.md"
