#!/usr/bin/env bash
# Hashes of every output of the sampled paths for fixed seeds: CD-1 and PCD
# training, Gibbs samples and AIS estimates (bench/identity.toml, binary and
# N = 4 units), and the `sample` and `loglik` stages of bench/sampling.toml.
# Timing fields (`seconds`, `images_per_second`) are dropped from the
# metrics. A speed-up that is meant to keep results bit-identical must print
# the same lines before and after:
#
#   bash bench/identity.sh > before.txt     # (old binary: MRBM=path/to/mrbm)
#   ... change, rebuild ...
#   bash bench/identity.sh | diff before.txt -
#
# Needs: cargo (unless $MRBM is set), python3, the t10k files under
# $MRBM_SHARED_DATA/mnist or ../shared/data/mnist. THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
DATA=${MRBM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
if [ -z "${MRBM:-}" ]; then
    cargo build --release -q -p mrbm-runner
    MRBM=${CARGO_TARGET_DIR:-target}/release/mrbm
fi
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export RAYON_NUM_THREADS=$THREADS
for exp in bench/identity.toml ${FULL:+bench/sampling.toml}; do
    "$MRBM" run "$exp" --data-root "$DATA" --cache "$cache/$(basename "$exp" .toml)" --jobs 1 --quiet >/dev/null 2>&1
done
# One line per output file: stage key / file, then its hash (metrics: the
# JSON less timing fields).
for f in $(find "$cache" -path '*/out/*' -type f \( -name '*.safetensors' -o -name 'loss.csv' -o -name 'metrics.json' \) | sort); do
    key=$(basename "$(dirname "$(dirname "$f")")" | cut -c1-12)
    if [ "$(basename "$f")" = metrics.json ]; then
        h=$(python3 -c "import json,sys,hashlib; d=json.load(open(sys.argv[1])); [d.pop(k,None) for k in ('seconds','images_per_second')]; print(hashlib.sha256(json.dumps(d,sort_keys=True).encode()).hexdigest()[:16], json.dumps(d,sort_keys=True)[:80])" "$f")
    else
        h=$(sha256sum "$f" | cut -c1-16)
    fi
    echo "$key $(basename "$f") $h"
done
