#!/usr/bin/env bash
# Rerun committed experiments from a cold cache and fail on any difference
# from what results/ holds (issue 26 item 7: results are pinned).
#
#   tools/check-results.sh [--keep] [NAME...]
#   e.g. tools/check-results.sh quickstart         # what .ci/run does
#        tools/check-results.sh                    # every committed experiment (hours)
#
# NAME is a results/NAME.provenance file (written by tools/provenance.sh);
# the default is every one. Its `command=` field is the exact command that
# produced the committed files; it is rerun here with this tree's binary
# ($MRBM, default $CARGO_TARGET_DIR/release/mrbm, else target/release/mrbm)
# in a temporary copy of the project (experiments/, pipelines/, tools/) with
# an empty cache, so the work tree and your cache are never touched. Every
# file the rerun writes under results/ is compared with the committed one
# (also when the rerun exits with the committed run's own nonzero status,
# e.g. table1 under --keep-going where a data set is absent):
#   - NAME.csv (tables): byte for byte, less the values of timing columns
#     (a header that contains `seconds`, e.g. train_seconds and its spread):
#     wall time changes with every run and machine load, so those columns
#     are compared by name only;
#   - NAME.provenance.json: byte for byte, less the fields that change with
#     every run (host, started, seconds, slurm_job; a run no longer
#     publishes them, but older committed files still hold them);
#   - anything else (sample grids): byte for byte;
#   - a file the rerun writes that results/ lacks is a difference too.
#
# Instruction sets: the CPU kernels (crates/mrbm-kernels) pick AVX-512, AVX2
# or portable code at run time. AVX-512 (either tile) and AVX2 give the same bits (tested
# in crates/mrbm-kernels/tests/isa_bits.rs), so results are pinned for both;
# the portable kernels (no AVX2+FMA) round differently: there this script
# prints the differences and exits 0 (MRBM_CHECK_ANY_ISA=1 makes them fail).
# MRBM_SGEMM_ISA=avx2 runs the AVX2 kernels on an AVX-512 machine.
# README "Pinned results" says the same.
#
# Exit status: 0 identical, 1 a difference (or a rerun that failed), 2 usage.
set -u
keep=0
names=()
for a in "$@"; do
    case "$a" in
        --keep) keep=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "check-results: unknown option $a (see --help)" >&2; exit 2 ;;
        *) names+=("$a") ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
mrbm=${MRBM:-${CARGO_TARGET_DIR:-$root/target}/release/mrbm}
if [ ! -x "$mrbm" ]; then
    echo "check-results: no mrbm binary at $mrbm (cargo build --release -p mrbm-runner, or set MRBM)" >&2
    exit 2
fi
# The reruns run in a scratch copy of the project: a relative path (as
# .ci/run passes, target/release/mrbm) would not be found from there.
case "$mrbm" in /*) ;; *) mrbm="$root/$mrbm" ;; esac
if [ ${#names[@]} -eq 0 ]; then
    for p in results/*.provenance; do
        [ -e "$p" ] && names+=("$(basename "$p" .provenance)")
    done
fi
if [ ${#names[@]} -eq 0 ]; then
    echo "check-results: no results/*.provenance here: nothing is pinned" >&2
    exit 2
fi

# The microkernels the products run on here, as the binary reports them
# (MRBM_SGEMM_ISA overrides its choice); a guess from /proc/cpuinfo for a
# binary that does not say.
isa=$("$mrbm" devices 2>/dev/null | sed -n 's/.*sgemm kernels \([a-z0-9x-]*\).*/\1/p' | head -1)
if [ -z "$isa" ]; then
    isa=portable
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then isa=avx512
    elif grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null; then isa=avx2; fi
    # (A family the CPU lacks is ignored by the kernels, so here too.)
    case "${MRBM_SGEMM_ISA:-}" in
        avx2) [ "$isa" = avx512 ] && isa=avx2 ;;
        portable) isa=portable ;;
    esac
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mrbm-check.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi; }
trap cleanup EXIT

# Lines of a provenance.json that every run changes.
stable() { grep -v -E '^\s*"(host|started|seconds|slurm_job)":' "$1" | sed -E 's/,$//'; }
# A table with its timing columns' values blanked (their headers kept).
timeless() { awk -F, -v OFS=, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /seconds/) t[i] = 1 } NR > 1 { for (i in t) $i = "-" } { print }' "$1"; }

failed=0
for name in "${names[@]}"; do
    prov="results/$name.provenance"
    if [ ! -f "$prov" ]; then
        echo "check-results: no $prov (the names: $(ls results/*.provenance 2>/dev/null | xargs -n1 basename 2>/dev/null | sed 's/\.provenance$//' | tr '\n' ' '))" >&2
        exit 2
    fi
    cmd=$(sed -n 's/.* command="\(.*\)"$/\1/p' "$prov")
    if [ -z "$cmd" ]; then
        echo "check-results: $prov has no command=\"...\" field" >&2
        exit 2
    fi
    # The recorded command with this binary, a cold cache and absolute paths.
    read -r -a words <<< "$cmd"
    args=()
    skip=0
    for ((i = 1; i < ${#words[@]}; i++)); do
        w=${words[$i]}
        if [ "$skip" = 1 ]; then skip=0; continue; fi
        case "$w" in
            --cache) skip=1 ;;
            --cache=*) ;;
            --quiet) ;;
            --data-root)
                d=${words[$((i + 1))]:-}
                case "$d" in /*) ;; *) d="$root/$d" ;; esac
                args+=(--data-root "$d")
                skip=1 ;;
            *) args+=("$w") ;;
        esac
    done
    proj="$tmp/$name"
    mkdir -p "$proj"
    cp -r experiments pipelines "$proj"/
    [ -d tools ] && cp -r tools "$proj"/
    echo "== $name: mrbm ${args[*]} (cold cache, in a copy of the project; sgemm kernels: $isa)"
    t0=$(date +%s)
    (cd "$proj" && "$mrbm" --cache "$tmp/$name.cache" "${args[@]}" --quiet > "$tmp/$name.log" 2>&1)
    status=$?
    echo "   ran in $(( $(date +%s) - t0 ))s, exit $status"
    # The committed run's own status (table1 runs with --keep-going and
    # exits 2 where a data set is absent): the same status is no failure.
    committed_status=$(sed -n 's/.* exit=\([0-9]*\) .*/\1/p' "$prov")
    if [ "$status" != 0 ] && [ "$status" = "${committed_status:-0}" ]; then
        echo "   (the committed run exited $status too: comparing its files)"
    elif [ "$status" != 0 ]; then
        echo "   FAILED: the rerun exited $status; its last lines:"
        tail -n 15 "$tmp/$name.log" | sed 's/^/   | /'
        failed=1
        continue
    fi
    n=0
    bad=0
    while IFS= read -r -d '' f; do
        rel=${f#"$proj"/}
        n=$((n + 1))
        if [ ! -e "$rel" ]; then
            echo "   NEW $rel: the rerun writes it, results/ has no such file"
            bad=1
            continue
        fi
        case "$rel" in
            *.provenance.json)
                if ! diff -u --label "committed $rel" --label "rerun $rel" <(stable "$rel") <(stable "$f") > "$tmp/d"; then
                    echo "   DIFFERS $rel:"
                    sed 's/^/   | /' "$tmp/d"
                    bad=1
                fi ;;
            *.csv)
                if ! diff -u --label "committed $rel" --label "rerun $rel" <(timeless "$rel") <(timeless "$f") > "$tmp/d"; then
                    echo "   DIFFERS $rel:"
                    sed 's/^/   | /' "$tmp/d"
                    bad=1
                fi ;;
            *.txt|*.json)
                if ! diff -u --label "committed $rel" --label "rerun $rel" "$rel" "$f" > "$tmp/d"; then
                    echo "   DIFFERS $rel:"
                    sed 's/^/   | /' "$tmp/d"
                    bad=1
                fi ;;
            *)
                if ! cmp -s "$rel" "$f"; then
                    echo "   DIFFERS $rel (binary: $(stat -c %s "$rel") bytes committed, $(stat -c %s "$f") rerun)"
                    bad=1
                fi ;;
        esac
    done < <(find "$proj/results" -type f -print0 2>/dev/null | sort -z)
    if [ "$n" = 0 ]; then
        echo "   FAILED: the rerun wrote nothing under results/"
        failed=1
    elif [ "$bad" = 0 ]; then
        echo "   ok: $n files identical to results/"
    else
        failed=1
    fi
done

if [ "$failed" != 0 ]; then
    if [ "$isa" = portable ] && [ "${MRBM_CHECK_ANY_ISA:-0}" != 1 ]; then
        echo "check-results: differences above, but results are pinned for the AVX-512/AVX2 kernels and this machine uses the portable ones: not a failure (MRBM_CHECK_ANY_ISA=1 makes it one)"
        exit 0
    fi
    echo "check-results: FAILED: a rerun from a cold cache differs from results/."
    echo "  If the change is intended: regenerate with tools/provenance.sh (README \"Pinned results\"),"
    echo "  look at the grids, update the README's figures, and commit results/ with the change."
    exit 1
fi
echo "check-results: all reruns identical to results/"
