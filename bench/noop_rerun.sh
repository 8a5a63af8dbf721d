#!/usr/bin/env bash
# No-op rerun of a 50-stage DAG: `mrbm run` against `dvc repro` on the
# equivalent dvc.yaml, same machine, one run. Prints both times and the ratio.
#
#   bash bench/noop_rerun.sh            # needs dvc: pip install -r bench/requirements-dvc.txt
#
# The DAG: 10 independent chains of 5 stages (a synthetic data set, then four
# transforms, each a seeded subset of the one before). The dvc pipeline has
# the same shape, each stage a command that copies its input to its output.
# Both are run once to fill their caches; then each no-op rerun is timed
# (best of REPEAT).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MRBM="${MRBM:-$ROOT/target/release/mrbm}"
DVC="${DVC:-dvc}"
REPEAT="${REPEAT:-5}"
[ -x "$MRBM" ] || { echo "build first: cargo build --release -p mrbm-runner (or set MRBM=path)"; exit 2; }
command -v "$DVC" >/dev/null || { echo "dvc not found: pip install -r bench/requirements-dvc.txt (or set DVC=path)"; exit 2; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/mrbm/experiments" "$WORK/dvc"

# --- mrbm experiment
EXP="$WORK/mrbm/experiments/dag50.toml"
{
  echo 'name = "dag50"'
  for c in $(seq 0 9); do
    echo "[stages.c${c}s0]"
    echo 'kind = "dataset"'
    echo "params = { format = \"synthetic\", n = 64, size = 8, classes = 2, seed = $c }"
    for s in 1 2 3 4; do
      echo "[stages.c${c}s${s}]"
      echo 'kind = "transform"'
      echo "inputs = { data = \"c${c}s$((s-1))\" }"
      echo "params = { subset = $((64 - 8*s)), seed = $s }"
    done
  done
} > "$EXP"

# --- dvc pipeline of the same shape
cd "$WORK/dvc"
git init -q . && "$DVC" init -q
python3 - <<'EOF'
lines = ["stages:"]
for c in range(10):
    lines += [f"  c{c}s0:", f"    cmd: python3 -c \"open('c{c}s0.txt','w').write('{c}')\"", f"    outs: [c{c}s0.txt]"]
    for s in range(1, 5):
        lines += [f"  c{c}s{s}:", f"    cmd: cp c{c}s{s-1}.txt c{c}s{s}.txt", f"    deps: [c{c}s{s-1}.txt]", f"    outs: [c{c}s{s}.txt]"]
open("dvc.yaml", "w").write("\n".join(lines) + "\n")
EOF
"$DVC" repro -q >/dev/null

cd "$WORK/mrbm"
"$MRBM" run experiments/dag50.toml --quiet >/dev/null 2>&1

best() { # best wall time in seconds of REPEAT runs of "$@"
  python3 - "$REPEAT" "$@" <<'EOF'
import subprocess, sys, time
n = int(sys.argv[1]); cmd = sys.argv[2:]
ts = []
for _ in range(n):
    t = time.perf_counter(); subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); ts.append(time.perf_counter() - t)
print(f"{min(ts):.4f}")
EOF
}
cd "$WORK/mrbm"; T_MRBM=$(best "$MRBM" run experiments/dag50.toml --quiet)
N_RAN=$("$MRBM" run experiments/dag50.toml --quiet 2>&1 | grep -o '^[0-9]* ran' || true)
cd "$WORK/dvc"; T_DVC=$(best "$DVC" repro -q)
echo "50-stage DAG, no-op rerun (best of $REPEAT), $(nproc) cores"
echo "  mrbm run:  ${T_MRBM}s  ($N_RAN)"
echo "  dvc repro: ${T_DVC}s  ($("$DVC" --version))"
python3 -c "print(f'  ratio dvc/mrbm: {$T_DVC/$T_MRBM:.1f}x')"
