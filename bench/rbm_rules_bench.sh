#!/usr/bin/env bash
# Training time of CD-1 and PCD on a dense binary RBM 784-500 (MNIST t10k,
# 8,000 training digits, 20 epochs, batch 100): mrbm against the numpy
# reference (bench/rbm_reference.py) and, where torch imports, PyTorch CPU
# with the same sizes and draws per step (bench/reference/rbm_rules.py), one
# after the other in one run on the same machine; prints the ratios (above
# 1: mrbm is faster). Not a test.
#
#   bash bench/rbm_rules_bench.sh        # THREADS=2; TORCH=0 skips PyTorch
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
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
out=$("$BIN" run bench/rbm_rules.toml --data-root "$DATA" --cache "$cache" --jobs 1 --quiet)
ref=$(MRBM_SHARED_DATA=$DATA "$PYTHON" bench/rbm_reference.py --rules --no-ais)
if [ "${TORCH:-1}" != 0 ] && "$PYTHON" -c 'import torch' 2>/dev/null; then
  ref+=$'\n'$(MRBM_SHARED_DATA=$DATA "$PYTHON" bench/reference/rbm_rules.py --threads "$THREADS")
else
  echo "(torch does not import: numpy column only)"
fi
for rule in cd:cd1 pcd:pcd; do
  ours=$(printf '%s\n' "$out" | awk -v id="train[algorithm=${rule%%:*}]" '$1 == id && $2 == "ran" {print $3; exit}')
  printf '%s\n' "$ref" | "$PYTHON" -c "
import json, sys
for d in map(json.loads, filter(str.strip, sys.stdin)):
    if d['rule'] == '${rule##*:}':
        tool = d['impl'].split()[0]
        print('%-4s mrbm %.2f s, %s %.2f s per 20 epochs: mrbm %.2fx %s' % (d['rule'], $ours, d['impl'], d['train_seconds'], d['train_seconds'] / $ours, tool))
"
done
