#!/usr/bin/env bash
# Block Gibbs sampling and AIS on a dense binary RBM 784-500: mrbm's `sample`
# (100 chains x 1,000 steps from noise) and `loglik` (AIS, 2,000 betas x 100
# runs) stages against numpy and, where torch imports, PyTorch CPU doing the
# same products and draws (bench/reference/sampling.py), one after the other
# in one run; prints seconds and ratios (above 1: mrbm is faster). The mrbm
# times are whole stages (loading the model, writing samples or scores),
# so the ratios slightly favour the references. Not a test.
#
#   bash bench/sampling_bench.sh        # THREADS=2
#
# Needs: cargo; python with numpy (bench/requirements-rbm.txt) and, for the
# PyTorch column, torch (bench/reference/requirements.txt): $PYTHON or the
# .venv that tools/reference-env.sh makes; the t10k files under
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
out=$("$BIN" run bench/sampling.toml --data-root "$DATA" --cache "$cache" --jobs 1 --quiet)
ref=$("$PYTHON" bench/reference/sampling.py --betas 2000 --threads "$THREADS")
printf '%s\n' "$ref"
for task in gibbs:sample ais:loglik; do
  ours=$(printf '%s\n' "$out" | awk -v id="${task##*:}" '$1 == id && $2 == "ran" {print $3; exit}')
  printf '%s\n' "$ref" | "$PYTHON" -c "
import json, sys
for d in map(json.loads, sys.stdin):
    if d.get('task') == '${task%%:*}':
        print('%-5s mrbm %.2f s, %s %.2f s: mrbm %.2fx %s' % ('${task%%:*}', $ours, d['tool'], d['seconds'], d['seconds'] / $ours, d['tool'].split()[0]))
"
done
