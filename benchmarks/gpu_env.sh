# Sourced by the benchmarks/gpu_*.sh scripts: the environment of a GPU-machine run, from the repo root.
# Installs the wheels of .whl/ (made here by fetch_gpu_wheels.sh; nothing is downloaded there) into
# /tmp/site and runs memscan from src/ (no pip install of memscan). PYTHON overrides the interpreter.
# A rehearsal here of the device's environment (Python 3.12, torch 2.11, numpy 2.5, the carried wheels):
#     PYTHON=/path/to/py312-venv/bin/python QUICK=1 WHEELS=1 bash benchmarks/gpu_models.sh
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# QUICK=1 (the CPU test) uses the local environment, unless WHEELS=1
if [ -d .whl ] && { [ "${QUICK:-0}" != 1 ] || [ "${WHEELS:-0}" = 1 ]; }; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
