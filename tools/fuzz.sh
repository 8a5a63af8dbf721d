#!/usr/bin/env bash
# Run the cargo-fuzz targets of mrbm-data (fuzz/): the IDX and CIFAR-10
# parsers, the TOML front end of the dataset/transform stages, and image
# decoding (libjpeg, PNG) with crop/resize.
#
#   tools/fuzz.sh [RUNS] [MAX_SECONDS] [TARGET...]
#
# Each target runs until RUNS executions (default 1000000) or MAX_SECONDS
# (default 600), whichever comes first, starting from the seeds in
# fuzz/seeds/<target> (new inputs go to fuzz/corpus/<target>, not
# committed). Prints executions, time and crashes per target; exits 1 if
# any target crashed (the crashing input is in fuzz/artifacts/<target>/).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; if
# only stable is installed, RUSTC_BOOTSTRAP=1 lets it build (set below when
# `cargo +nightly` is unavailable).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS=${1:-1000000}
MAX=${2:-600}
shift $(( $# > 2 ? 2 : $# )) || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(idx cifar params decode)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if cargo +nightly --version >/dev/null 2>&1; then TC=(+nightly); else TC=(); export RUSTC_BOOTSTRAP=1; fi
# The binary seeds (IDX, CIFAR, JPEG/PNG) are generated, never committed.
"${PYTHON:-python3}" ../tools/fuzz_seeds.py seeds
cargo "${TC[@]}" fuzz build -O
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  set +e
  cargo "${TC[@]}" fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -runs="$RUNS" -max_total_time="$MAX" -max_len="${MAX_LEN:-16384}" -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  secs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -Eo 'in [0-9]+' | grep -Eo '[0-9]+' | tail -1)
  # slow-unit-* files only flag slow inputs; crash/leak/timeout/oom fail.
  crashes=$(ls "artifacts/$t" 2>/dev/null | grep -Evc '^slow-unit-' || true)
  slow=$(ls "artifacts/$t" 2>/dev/null | grep -Ec '^slow-unit-' || true)
  echo "fuzz $t: ${execs:-?} executions in ${secs:-?} s, exit $rc, crash files $crashes, slow inputs $slow"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then status=1; tail -40 "$log"; fi
  rm -f "$log"
done
exit $status
