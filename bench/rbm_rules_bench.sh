#!/usr/bin/env bash
# Training time of CD-1 and PCD on a dense binary RBM 784-500 (MNIST t10k,
# 8,000 training digits, 20 epochs, batch 100): mrbm against the numpy
# reference (bench/rbm_reference.py), one after the other in one run on the
# same machine; prints the ratio (above 1: mrbm is faster). Not a test.
#
#   bash bench/rbm_rules_bench.sh        # THREADS=2
#
# Needs: cargo; python with bench/requirements-rbm.txt ($PYTHON, or the
# .venv that tools/reference-env.sh makes); the t10k files under
# $MRBM_SHARED_DATA/mnist or ../shared/data/mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${MRBM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
cargo build --release -q -p mrbm-runner
BIN=${CARGO_TARGET_DIR:-target}/release/mrbm
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
out=$("$BIN" run bench/rbm_rules.toml --data-root "$DATA" --cache "$cache" --jobs 1 --quiet)
ref=$(MRBM_SHARED_DATA=$DATA "$PYTHON" bench/rbm_reference.py --rules --no-ais)
for rule in cd:cd1 pcd:pcd; do
  ours=$(printf '%s\n' "$out" | awk -v id="train[algorithm=${rule%%:*}]" '$1 == id && $2 == "ran" {print $3; exit}')
  theirs=$(printf '%s\n' "$ref" | "$PYTHON" -c "import json,sys; [print(d['train_seconds']) for d in map(json.loads, sys.stdin) if d['rule'] == '${rule##*:}']")
  awk -v r="${rule##*:}" -v a="$ours" -v b="$theirs" 'BEGIN { printf "%-4s mrbm %.2f s, numpy %.2f s per 20 epochs: mrbm %.2fx numpy\n", r, a, b, b / a }'
done
