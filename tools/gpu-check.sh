#!/usr/bin/env bash
# GPU acceptance check for a machine with an NVIDIA GPU, the CUDA toolkit and
# PyTorch, but no Rust and no network. Built elsewhere (README "Devices and
# GPUs"), carried here as a folder holding:
#   mrbm         the stripped release binary built with --features cuda
#   train_step   the training benchmark (bench/train_step.rs), same features
#   train_step.py  bench/reference/train_step.py (the PyTorch reference)
# It runs `mrbm devices --check` (mrbm-core's device checks on every device,
# each against the CPU), then the training benchmark on cuda against PyTorch
# on cuda, and prints the ratios (mrbm / PyTorch images per second).
#
#   bash gpu-check.sh [DIR]           # DIR defaults to this script's folder
#   STEPS=20 BATCH=128 PYTHON=python3 bash gpu-check.sh
#
# NVRTC needs the toolkit's headers: CUDA_PATH is set to /usr/local/cuda when
# unset and it exists, and the toolkit's lib64 is added to LD_LIBRARY_PATH so
# libnvrtc is found.
set -euo pipefail
DIR=${1:-$(cd "$(dirname "$0")" && pwd)}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
DEVICE=${DEVICE:-cuda:0}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
if [ -z "${CUDA_PATH:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_PATH=/usr/local/cuda; fi
if [ -n "${CUDA_PATH:-}" ] && [ -d "$CUDA_PATH/lib64" ]; then
  export LD_LIBRARY_PATH="$CUDA_PATH/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
for f in mrbm train_step train_step.py; do
  [ -e "$DIR/$f" ] || { echo "gpu-check: $DIR/$f is missing (README: Devices and GPUs)" >&2; exit 2; }
done
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not found)"
echo "CUDA_PATH=${CUDA_PATH:-unset}"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'

echo; echo "== mrbm devices --check"
status=0
"$DIR/mrbm" devices --check || status=$?

echo; echo "== training step, $DEVICE, batch $BATCH, $STEPS steps (after $WARMUP warm-up)"
out=$(mktemp); trap 'rm -f "$out"' EXIT
for stack in generation mnist; do
  for grad in auto autodiff; do
    "$DIR/train_step" --device "$DEVICE" --stack $stack --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --gradient $grad | tee -a "$out" || status=1
  done
  "$PYTHON" "$DIR/train_step.py" --device "${DEVICE}" --stack $stack --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" | tee -a "$out" || status=1
done
echo; echo "== ratios (mrbm / PyTorch, images per second; above 1 is faster)"
"$PYTHON" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for stack in ("generation", "mnist"):
    ref = [r for r in rows if r["stack"] == stack and r["impl"] == "pytorch"]
    if not ref:
        print(f"{stack}: no PyTorch result"); continue
    ref = ref[0]
    for r in rows:
        if r["stack"] == stack and r["impl"] == "mrbm":
            print(f"{stack:10s} mrbm ({r['gradient']:10s}) {r['images_per_s']:9.1f} img/s   pytorch {ref['images_per_s']:9.1f} img/s   ratio {r['images_per_s'] / ref['images_per_s']:.2f}x")
PY
exit $status
