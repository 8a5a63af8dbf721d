#!/usr/bin/env bash
# Images/s of one training step (up, down, loss, gradient, Adam): mrbm (burn
# flex) vs the PyTorch reference, same machine, same thread count, in one
# run; prints the ratios. Not a test: speed is measured here, never asserted.
#
#   bash bench/train_step.sh            # THREADS=2 BATCH=128 STEPS=5 ROUNDS=3
#   THREADS=16 bash bench/train_step.sh
#
# ROUNDS rounds, each running every cell once (mrbm closed form, mrbm
# autodiff, PyTorch, stack by stack), so that a slow minute of a shared
# machine hits every tool alike; each summary line gives the medians over
# the rounds and, in brackets, the lowest and highest ratio of one round.
#
# Needs: cargo; python with bench/reference/requirements.txt (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-5}
ROUNDS=${ROUNDS:-3}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cargo build --release -q -p mrbm-core --example train_step
BIN=${CARGO_TARGET_DIR:-target}/release/examples/train_step
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
for round in $(seq "$ROUNDS"); do
  for stack in generation mnist; do
    for grad in auto autodiff; do
      "$BIN" --stack $stack --batch $BATCH --steps $STEPS --threads $THREADS --gradient $grad | tee -a /tmp/mrbm-bench.$$
    done
    "$PYTHON" bench/reference/train_step.py --stack $stack --batch $BATCH --steps $STEPS --threads $THREADS | tee -a /tmp/mrbm-bench.$$
  done
done
"$PYTHON" - /tmp/mrbm-bench.$$ <<'PY'
import json, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1])]
for stack in ("generation", "mnist"):
    ref = [r["images_per_s"] for r in rows if r["stack"] == stack and r["impl"] == "pytorch"]
    for grad in ("Auto", "Autodiff"):
        ours = [r["images_per_s"] for r in rows if r["stack"] == stack and r["impl"] == "mrbm" and r["gradient"] == grad]
        per_round = [a / b for a, b in zip(ours, ref)]
        print(f"{stack:10s} mrbm ({grad:8s}) {median(ours):8.1f} img/s   pytorch {median(ref):8.1f} img/s   "
              f"ratio {median(ours) / median(ref):.2f}x   [rounds: {min(per_round):.2f}-{max(per_round):.2f}x over {len(per_round)}]")
PY
rm -f /tmp/mrbm-bench.$$
