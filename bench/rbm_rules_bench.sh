#!/usr/bin/env bash
# Training time of CD-1 and PCD on a dense binary RBM 784-500 (MNIST t10k,
# 8,000 training digits, 20 epochs, batch 100): mrbm against the numpy
# reference (bench/rbm_reference.py) and, where torch imports, PyTorch CPU
# with the same sizes and draws per step (bench/reference/rbm_rules.py), one
# after the other in one run on the same machine; prints the ratios (above
# 1: mrbm is faster). Not a test.
#
#   bash bench/rbm_rules_bench.sh        # THREADS=2 ROUNDS=3; TORCH=0 skips PyTorch
#
# Needs: cargo; python with bench/requirements-rbm.txt and, for the PyTorch
# column, torch (bench/reference/requirements.txt) ($PYTHON, or the .venv
# that tools/reference-env.sh makes); the t10k files under
# $MRBM_SHARED_DATA/mnist or ../shared/data/mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${MRBM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
# MRBM=path/to/mrbm times another binary (e.g. an older build) instead.
if [ -n "${MRBM:-}" ]; then
  BIN=$MRBM
else
  cargo build --release -q -p mrbm-runner
  BIN=${CARGO_TARGET_DIR:-target}/release/mrbm
fi
ROUNDS=${ROUNDS:-3}
cache=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$cache" "$log"' EXIT
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
torch=0
if [ "${TORCH:-1}" != 0 ] && "$PYTHON" -c 'import torch' 2>/dev/null; then
  torch=1
else
  echo "(torch does not import: numpy column only)"
fi
# ROUNDS rounds, each running every tool once (mrbm from an empty cache),
# so that a slow minute of a shared machine hits every tool alike; the
# lines give medians and, in brackets, the lowest and highest ratio of one
# round, and the ratio of each tool's fastest round (a shared machine's
# noise only ever slows a run down).
for round in $(seq "$ROUNDS"); do
  rm -rf "$cache"; mkdir -p "$cache"
  "$BIN" run bench/rbm_rules.toml --data-root "$DATA" --cache "$cache" --jobs 1 --quiet |
    awk -v r="$round" '$2 == "ran" && $1 ~ /^train\[algorithm=/ {
      rule = $1; sub(/^train\[algorithm=/, "", rule); sub(/\]$/, "", rule)
      if (rule == "cd") rule = "cd1"
      printf "{\"round\": %d, \"rule\": \"%s\", \"impl\": \"mrbm\", \"train_seconds\": %s}\n", r, rule, $3
    }' >> "$log"
  MRBM_SHARED_DATA=$DATA "$PYTHON" bench/rbm_reference.py --rules --no-ais | sed "s/^{/{\"round\": $round, /" >> "$log"
  if [ $torch = 1 ]; then
    MRBM_SHARED_DATA=$DATA "$PYTHON" bench/reference/rbm_rules.py --threads "$THREADS" | sed "s/^{/{\"round\": $round, /" >> "$log"
  fi
done
"$PYTHON" - "$log" <<'PY'
import json, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
for rule in ("cd1", "pcd"):
    ours = {r["round"]: r["train_seconds"] for r in rows if r["rule"] == rule and r["impl"] == "mrbm"}
    for impl in dict.fromkeys(r["impl"] for r in rows if r["impl"] != "mrbm"):
        ref = {r["round"]: r["train_seconds"] for r in rows if r["rule"] == rule and r["impl"] == impl}
        both = sorted(set(ours) & set(ref))
        if not both:
            continue
        a, b = median(ours[k] for k in both), median(ref[k] for k in both)
        per = [ref[k] / ours[k] for k in both]
        best = min(ref[k] for k in both) / min(ours[k] for k in both)
        tool = impl.split()[0]
        print("%-4s mrbm %.2f s, %s %.2f s per 20 epochs: mrbm %.2fx %s   [rounds: %.2f-%.2fx over %d; best of each: %.2fx]"
              % (rule, a, impl, b, b / a, tool, min(per), max(per), len(both), best))
PY
