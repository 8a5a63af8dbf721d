#!/usr/bin/env bash
# Table 1 at the scaled profile on whatever data sets the data root holds
# (on this project's machines: MNIST t10k only, i.e. the mnist_t10k row),
# with a provenance line. First the calibration on validation digits
# (experiments/table1_val.toml -> results/table1_val.csv), then the table,
# which reads the test digits once (results/table1.csv); the two share the
# split and the seed-1 models (one cache). Usage: tools/reproduce_table1_scaled.sh [DATA_ROOT]
#   DATA_ROOT defaults to $MRBM_DATA, else ../shared/data.
# The absent data sets fail their own cells (exit status 2 from mrbm); the
# table is written with them marked `missing`.
set -eu
cd "$(git rev-parse --show-toplevel)"
root=${1:-${MRBM_DATA:-../shared/data}}
cargo build --release -p mrbm-runner
bin=${CARGO_TARGET_DIR:-target}/release/mrbm
tools/provenance.sh table1_val -- "$bin" run experiments/table1_val.toml \
    --data-root "$root" --jobs 2
exec tools/provenance.sh table1 -- "$bin" run experiments/table1.toml \
    --profile scaled --data-root "$root" --keep-going --jobs 2
