#!/usr/bin/env bash
# Plan time against DAG size: a chain of N transform stages (N = 1k, 10k,
# 100k) behind one synthetic dataset, timed with `mrbm plan` (parse,
# validate, expand, key every stage). Prints seconds per size. Not a test.
#
#   bash bench/dag_scale.sh            # SIZES="1000 10000 100000"
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000 10000 100000}
cargo build --release -q -p mrbm-runner
BIN=$(pwd)/${CARGO_TARGET_DIR:-target}/release/mrbm
[ -x "$BIN" ] || BIN=${CARGO_TARGET_DIR}/release/mrbm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/experiments"
for n in $SIZES; do
  f=$work/experiments/chain$n.toml
  {
    printf '[stages.s0]\nkind = "dataset"\nparams = { format = "synthetic", n = 8, size = 4, classes = 2, seed = 0 }\n'
    for ((i = 1; i < n; i++)); do
      printf '[stages.s%d]\nkind = "transform"\ninputs = { data = "s%d" }\nparams = { seed = %d }\n' "$i" $((i - 1)) "$i"
    done
  } > "$f"
  t0=$(date +%s.%N)
  (cd "$work" && "$BIN" plan "experiments/chain$n.toml" > /dev/null)
  t1=$(date +%s.%N)
  awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%7d stages: plan in %.2f s\n", n, b - a }'
done
