#!/usr/bin/env bash
# Download (here, where pip reaches the package index) the wheels that the GPU machine lacks, into .whl/
# (git-ignored). The device machine has Python 3.12 with torch, numpy, pandas, pyarrow, matplotlib, jinja2,
# typer, rich, scipy, psutil, safetensors, pyyaml, cloudpickle, msgpack; memscan also needs these (tornado: for
# distributed, absent from the device image as listed on 2026-11-17). Versions pinned to what the CPU venv runs.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 nibabel==5.4.2 pydicom==3.0.2 \
  monai==1.6.1 dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 zict==3.0.0 tblib==3.2.2 \
  importlib_metadata==10.2.0 typing_extensions==4.16.0 einops==0.8.2 tornado==6.6.1
ls -la .whl
