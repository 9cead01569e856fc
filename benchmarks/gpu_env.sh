# Sourced by the benchmarks/gpu_*.sh scripts: the environment of a GPU-machine run, from the repo root.
# Installs the wheels of .whl/ (made here by fetch_gpu_wheels.sh; nothing is downloaded there) into
# /tmp/site and runs memscan from src/ (no pip install of memscan). PYTHON overrides the interpreter.
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && [ "${QUICK:-0}" != 1 ]; then  # QUICK=1 (CPU test) uses the local environment
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
