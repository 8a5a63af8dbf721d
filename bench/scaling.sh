#!/usr/bin/env bash
# How the cost of one training step grows: images/s of mrbm (closed-form
# gradient where it applies, as train_step.sh's "auto") and of the PyTorch
# reference, same machine, one run, for both stacks against batch size,
# image size and thread count; prints one table with the ratios and the
# load average before and after. Not a test: speed is only measured here.
#
#   bash bench/scaling.sh                                   # the full grid
#   SIZES=28,64 BATCHES=32,128 THREADS=1,2 STEPS=1 bash bench/scaling.sh
#
# The generation stack (conv 64-128-256-256, dense 1000-500-200-100) and the
# MNIST stack (conv 32-64, dense 500) take SIZE x SIZE images (3 and 1
# channels). Needs: cargo; python with bench/reference/requirements.txt
# (PYTHON=..., else .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-28,64,128}
BATCHES=${BATCHES:-32,128,512}
THREADS=${THREADS:-1,2}
STEPS=${STEPS:-2}
STACKS=${STACKS:-generation,mnist}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cargo build --release -q -p mrbm-core --example train_step
BIN=${CARGO_TARGET_DIR:-target}/release/examples/train_step
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for stack in ${STACKS//,/ }; do
  for size in ${SIZES//,/ }; do
    for batch in ${BATCHES//,/ }; do
      for th in ${THREADS//,/ }; do
        export OMP_NUM_THREADS=$th RAYON_NUM_THREADS=$th
        # Each result also goes to stderr as it comes (a cut-short run keeps them).
        "$BIN" --stack "$stack" --size "$size" --batch "$batch" --steps "$STEPS" --threads "$th" --gradient auto | tee -a "$out" >&2
        "$PYTHON" bench/reference/train_step.py --stack "$stack" --size "$size" --batch "$batch" --steps "$STEPS" --threads "$th" | tee -a "$out" >&2
      done
    done
  done
done
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
key = lambda r: (r["stack"], r["size"], r["batch"], r["threads"])
ref = {key(r): r for r in rows if r["impl"] == "pytorch"}
print("| stack | image | batch | threads | mrbm img/s | PyTorch img/s | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if r["impl"] != "mrbm":
        continue
    p = ref[key(r)]
    print(f"| {r['stack']} | {r['size']}x{r['size']} | {r['batch']} | {r['threads']} | "
          f"{r['images_per_s']:.1f} | {p['images_per_s']:.1f} | {r['images_per_s'] / p['images_per_s']:.2f}x |")
PY
