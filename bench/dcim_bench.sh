#!/usr/bin/env bash
# DCIM against PyTorch on the same CPU, in one run: (1) parity: PyTorch
# writes a fresh fixture (loss and gradients of objectives 16 / 21 / 22 on
# a tiny dense net and a tiny conv net) and mrbm's parity test checks its
# own against it to 1e-5, printing each loss and the largest gradient
# difference; (2) epoch time: one training step per batch (objective 21,
# Adam) of the MLP 784-512-512-10 and the paper's CNN, mrbm (burn flex)
# and PyTorch, same threads and batch; prints images/s and the ratio.
# Not a test: speed is measured here, never asserted.
#
#   bash bench/dcim_bench.sh            # THREADS=2 BATCH=64 MLP=200 CNN=16 batches, ROUNDS=3
#
# Needs: cargo; python with bench/reference/dcim_requirements.txt
# (tools/reference-env.sh bench/reference/dcim_requirements.txt makes
# .venv/; PYTHON=... overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
BATCH=${BATCH:-64}
MLP=${MLP:-200}
CNN=${CNN:-16}
ROUNDS=${ROUNDS:-3}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== parity (fresh PyTorch fixture)"
"$PYTHON" bench/reference/dcim.py fixture "$tmp/dcim_parity.json"
MRBM_DCIM_FIXTURE="$tmp/dcim_parity.json" cargo test -q -p mrbm-dcim --test parity -- --nocapture 2>&1 \
    | grep -E "objective|test result"
echo "== epoch time, $THREADS threads, batch $BATCH, load $(cut -d' ' -f1-3 /proc/loadavg)"
# The release profile, as the `mrbm` binary is built: naming mrbm-runner
# too gives burn the binary's feature set, so its compiled dependencies are
# reused (-p mrbm-dcim alone would rebuild burn with another feature set,
# about 10 minutes on 2 cores). The dev profile (mrbm-dcim's own code at
# opt-level 1, no LTO) measured 0.63x / 0.54x where this build gives the
# figures in the README.
cargo build --release -q -p mrbm-dcim -p mrbm-runner --example dcim_bench
export OMP_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
"$PYTHON" bench/reference/dcim.py bench --mrbm "${CARGO_TARGET_DIR:-target}/release/examples/dcim_bench" \
    --threads "$THREADS" --batch "$BATCH" --batches-mlp "$MLP" --batches-cnn "$CNN" --rounds "$ROUNDS"
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
