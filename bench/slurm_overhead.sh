#!/usr/bin/env bash
# Overhead per stage of `--executor slurm`: a chain of 10 tiny stages (a
# synthetic data set, then nine transforms, each reading the one before, so
# every stage waits for its input to be published) run locally and through
# Slurm, each on a fresh cache. Prints both wall times, the per-stage
# difference, and the planner's own line on its jobs (submit to start of
# `mrbm exec-stage` on the node; submit to published, less the stage's time).
#
#   tools/slurm-test-cluster.sh up          # or run on a Slurm login node
#   bash bench/slurm_overhead.sh            # MRBM=path to use another binary
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MRBM="${MRBM:-$ROOT/target/release/mrbm}"
STAGES="${STAGES:-10}"
[ -x "$MRBM" ] || { echo "build first: cargo build --release -p mrbm-runner (or set MRBM=path)"; exit 2; }
sinfo -h >/dev/null 2>&1 || { echo "no Slurm answers sinfo: tools/slurm-test-cluster.sh up"; exit 2; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/experiments"
{
  echo 'name = "chain"'
  echo '[stages.s0]'
  echo 'kind = "dataset"'
  echo 'params = { format = "synthetic", n = 64, size = 8, classes = 2, seed = 1 }'
  for s in $(seq 1 $((STAGES - 1))); do
    echo "[stages.s$s]"
    echo 'kind = "transform"'
    echo "inputs = { data = \"s$((s-1))\" }"
    echo "params = { subset = $((64 - 4*s)), seed = $s }"
  done
} > "$WORK/experiments/chain.toml"

cd "$WORK"
now() { date +%s.%N; }
t=$(now); "$MRBM" run experiments/chain.toml --quiet --cache "$WORK/local" > "$WORK/local.txt" 2>&1
local_s=$(echo "$(now) - $t" | bc)
t=$(now); "$MRBM" run experiments/chain.toml --quiet --executor slurm --cache "$WORK/slurm" > "$WORK/slurm.txt" 2>&1
slurm_s=$(echo "$(now) - $t" | bc)
grep -q "^$STAGES ran" "$WORK/slurm.txt" || { cat "$WORK/slurm.txt"; exit 1; }
printf 'chain of %d stages: local %.2f s, Slurm %.2f s: %.2f s more per stage\n' \
  "$STAGES" "$local_s" "$slurm_s" "$(echo "($slurm_s - $local_s) / $STAGES" | bc -l)"
grep '^Slurm: ' "$WORK/slurm.txt"
