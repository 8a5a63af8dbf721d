#!/usr/bin/env bash
# Table 1 at the scaled profile on whatever data sets the data root holds
# (on this project's machines: MNIST t10k only, i.e. the mnist_t10k row),
# with a provenance line. Usage: tools/reproduce_table1_scaled.sh [DATA_ROOT]
#   DATA_ROOT defaults to $MRBM_DATA, else ../shared/data.
# The absent data sets fail their own cells (exit status 2 from mrbm); the
# table is written with them marked `missing`.
set -eu
cd "$(git rev-parse --show-toplevel)"
root=${1:-${MRBM_DATA:-../shared/data}}
cargo build --release -p mrbm-runner
bin=${CARGO_TARGET_DIR:-target}/release/mrbm
exec tools/provenance.sh table1 -- "$bin" run experiments/table1.toml \
    --profile scaled --data-root "$root" --keep-going --jobs 2
