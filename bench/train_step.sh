#!/usr/bin/env bash
# Images/s of one training step (up, down, loss, gradient, Adam): mrbm (burn
# flex) vs the PyTorch reference, same machine, same thread count, in one
# run; prints the ratios. Not a test: speed is measured here, never asserted.
#
#   bash bench/train_step.sh            # THREADS=2 BATCH=128 STEPS=5
#   THREADS=16 bash bench/train_step.sh
#
# Needs: cargo; python with bench/reference/requirements.txt (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-5}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cargo build --release -q -p mrbm-core --example train_step
BIN=${CARGO_TARGET_DIR:-target}/release/examples/train_step
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
for stack in generation mnist; do
  for grad in auto autodiff; do
    "$BIN" --stack $stack --batch $BATCH --steps $STEPS --threads $THREADS --gradient $grad | tee -a /tmp/mrbm-bench.$$
  done
  "$PYTHON" bench/reference/train_step.py --stack $stack --batch $BATCH --steps $STEPS --threads $THREADS | tee -a /tmp/mrbm-bench.$$
done
"$PYTHON" - /tmp/mrbm-bench.$$ <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for stack in ("generation", "mnist"):
    ref = [r for r in rows if r["stack"] == stack and r["impl"] == "pytorch"][0]
    for r in rows:
        if r["stack"] == stack and r["impl"] == "mrbm":
            print(f"{stack:10s} mrbm ({r['gradient']:8s}) {r['images_per_s']:8.1f} img/s   pytorch {ref['images_per_s']:8.1f} img/s   ratio {r['images_per_s'] / ref['images_per_s']:.2f}x")
PY
rm -f /tmp/mrbm-bench.$$
