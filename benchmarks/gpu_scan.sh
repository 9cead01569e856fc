#!/usr/bin/env bash
# The scan's GPU check, as ONE prepared script (issue 3). On the device machine, from the repo root:
#     bash benchmarks/gpu_scan.sh            # results (markdown + JSON) under $OUT
# Before: bash benchmarks/fetch_gpu_wheels.sh here, and carry .whl. QUICK=1 shrinks every size (CPU test).
# What it measures, each in one run: the GPU exactness tests; the engine's rate against the bare bf16 and
# int8 products (8,192 x 65,536 x 128²); memscan scan end to end from dataset folders at that shape;
# the study's scale (100,000 synthetic x 30,000 training at 256², memscan alone, 48 GiB budget); and 3D
# scans of BraTS-sized volumes against the sequential read rate of their dataset files.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memscan-gpu-out}
mkdir -p "$OUT"
# The device tool brings back at most 8 files: everything goes to RES and is packed into one archive at
# exit (also when the run is cut short), with the console log beside it.
RES=$(mktemp -d)
trap 'tar czf "$OUT/gpu_scan.tar.gz" --exclude=./console.log -C "$RES" . || true; cp "$RES/console.log" "$OUT/" || true' EXIT
exec > >(tee "$RES/console.log") 2>&1
source benchmarks/gpu_env.sh
DEV=cuda
if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; S1="--nq 256 --nt 2048 --side 32"; S2="--nq 128 --nt 512 --side 64 --only-memscan"; EPAR="--quick"
  V1="--quick"; V2="--quick --dtype uint8"
else
  S1="--nq 8192 --nt 65536 --side 128"; S2="--nq 100000 --nt 30000 --side 256 --only-memscan --memory-budget 48GiB"
  EPAR="--device cuda"
  # 3D: BraTS-sized volumes (4 x 240 x 240 x 155): float32 (generic recipe) and uint8 (study recipe)
  V1="--channels 4 --shape 240,240,155 --nt 48 --nq 16 --memory-budget 32GiB"
  V2="--channels 4 --shape 240,240,155 --nt 128 --nq 32 --dtype uint8 --memory-budget 32GiB"
fi
(nvidia-smi || true) > "$RES/env.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$RES/env.txt"

# One device call may run 10 minutes: every stage gets a time limit within BUDGET seconds in all, in the
# order of what the issue needs most; a stage that fails or runs out is recorded and the next one runs.
BUDGET=${BUDGET:-560}
T_END=$(( $(date +%s) + BUDGET ))
stage() {  # stage FILE SECONDS COMMAND...
  local file=$1 limit=$2 left t0 rc
  shift 2
  left=$(( T_END - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "== $file: skipped, ${left} s left" | tee -a "$RES/$file"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  echo "== $file (limit ${limit} s): $*"
  set +e
  timeout "$limit" "$@" 2>&1 | tee -a "$RES/$file"
  rc=${PIPESTATUS[0]}
  set -e
  echo "== $file: rc $rc after $(( $(date +%s) - t0 )) s" | tee -a "$RES/$file"
}
stage gpu-tests.txt 120 $PY -m pytest -q -p no:cacheprovider tests/search/test_engine.py -k "cuda or int8 or auto"
stage scan.md 150 $PY benchmarks/bench_scan.py --device $DEV $S1 --skip-reference --pairs 50 \
  --json "$RES/scan.json" --workdir /tmp/bench1
rm -rf /tmp/bench1
stage study_scale.md 180 $PY benchmarks/bench_scan.py --device $DEV $S2 --skip-reference --pairs 20 \
  --json "$RES/study_scale.json" --workdir /tmp/bench2
rm -rf /tmp/bench2
stage scan3d.md 120 $PY benchmarks/bench_scan3d.py --device $DEV $V1 --json "$RES/scan3d_float32.json"
stage scan3d.md 90 $PY benchmarks/bench_scan3d.py --device $DEV $V2 --json "$RES/scan3d_uint8.json"
stage engine.md 90 $PY benchmarks/bench_engine.py $EPAR
