#!/usr/bin/env bash
# The study's GPU run (issue 6), as ONE prepared script. On the device machine, from the repo root:
#     bash benchmarks/gpu_study.sh            # results under $OUT (at most 8 files)
# Before: bash benchmarks/fetch_gpu_wheels.sh here, and carry .whl. QUICK=1 runs the `tiny` preset on the
# CPU instead (the test suite does, to check this script).
# What it does: `memscan study quick --out $OUT/study --device cuda` (phantom brain slices at 64x64, DDPM
# and StyleGAN2 at 1, 4 and 16 training subjects, ~8 minutes on one H200; see
# src/memscan/study/presets/quick.toml for the budget), then copies to $OUT: results.md, results.csv,
# report.html (self-contained: every figure is embedded), figures.tar.gz (the same figures as PNG files),
# and study.log (the command, the measured training rates of every cell and the tail of the log).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memscan-gpu-out}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
if [ "${QUICK:-0}" = 1 ]; then
  PRESET=tiny; DEV=cpu; STUDY=$(mktemp -d)/study
else
  PRESET=quick; DEV=cuda; STUDY=${STUDY:-/tmp/memscan-study}
fi
ARGS="study $PRESET --out $STUDY --device $DEV --resume"
LOG=$OUT/study.log
{
  echo "command: PYTHONPATH=src python -m memscan $ARGS"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 || true)
} > "$LOG" 2>&1
start=$(date +%s)
# shellcheck disable=SC2086
# under the device tool's 10 minutes a call; cut short, a second call within the machine's idle window
# (--resume) continues from the finished stages
rc=0
timeout "${T_STUDY:-560}" $PY -m memscan $ARGS >> "$LOG" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
  echo "study: not finished (rc $rc); run this script again to resume" >> "$LOG"
  tail -40 "$LOG"
  exit 1
fi
echo "wall time: $(( $(date +%s) - start )) s" >> "$LOG"
$PY - "$STUDY" >> "$LOG" 2>&1 <<'PYEOF'
import json, pathlib, sys
for log in sorted(pathlib.Path(sys.argv[1]).glob("cells/*/model/log.jsonl")):
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if rows:
        rate = sorted(r["images_per_s"] for r in rows)[len(rows) // 2]
        print(f"{log.parent.parent.name}: {rows[-1]['step']} steps, {rows[-1]['elapsed_s']:.1f} s, "
              f"median {rate:.0f} images/s")
PYEOF
tail -30 "$LOG"
cp "$STUDY/results.md" "$STUDY/results.csv" "$STUDY/report.html" "$OUT/"
# every figure (histograms, flagged vs size, best pairs, sample strips) in one archive: the tool returns 8 files
tar -czf "$OUT/figures.tar.gz" -C "$STUDY" figures
ls "$OUT"
if [ "${QUICK:-0}" = 1 ]; then rm -rf "$(dirname "$STUDY")"; fi
