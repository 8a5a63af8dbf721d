#!/usr/bin/env bash
# Run an experiment command and write one provenance line beside its table.
#
#   tools/provenance.sh TABLE -- COMMAND [ARGS...]
#   e.g. tools/provenance.sh table1 -- target/release/mrbm run experiments/table1.toml \
#            --profile scaled --data-root ../shared/data --keep-going
#
# Writes results/TABLE.provenance (one line, overwritten each run): UTC date,
# git commit and whether the sources the binary is built from differ from
# it, the exact command, the profile, the device (CPU model, cores, load,
# GPU if any, `mrbm devices`), the wall time and the exit status. The
# command's own output goes to the terminal unchanged. Nothing here is
# typed by hand: every field is read from the machine or the command.
set -u
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
    echo "usage: $0 TABLE -- COMMAND [ARGS...]" >&2
    exit 2
fi
table=$1
shift 2
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
out="$root/results/$table.provenance"
mkdir -p "$root/results"

commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
# The sources that make the binary and the experiment: clean = identical to the commit.
if git -C "$root" diff --quiet HEAD -- crates Cargo.toml Cargo.lock experiments pipelines 2>/dev/null \
   && [ -z "$(git -C "$root" ls-files --others --exclude-standard -- crates experiments pipelines)" ]; then
    tree=clean
else
    tree=dirty
fi

# The profile: --profile NAME in the command, else the experiment's default_profile.
profile=""
exp=""
prev=""
for a in "$@"; do
    case "$prev" in --profile) profile=$a ;; esac
    case "$a" in --profile=*) profile=${a#--profile=} ;; *.toml) exp=$a ;; esac
    prev=$a
done
if [ -z "$profile" ] && [ -n "$exp" ] && [ -f "$exp" ]; then
    profile=$(sed -n 's/^default_profile *= *"\(.*\)".*/\1/p' "$exp" | head -1)
    profile="${profile:-none} (default)"
fi

cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -1)
cores=$(nproc 2>/dev/null || echo "?")
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
mrbm_bin=$1
devices=$("$mrbm_bin" devices 2>/dev/null | tr '\n' ';' | sed 's/;*$//; s/  */ /g')
version=$("$mrbm_bin" --version 2>/dev/null | head -1)

start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t0=$(date +%s.%N)
"$@"
status=$?
t1=$(date +%s.%N)
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')

quote() { printf '%s' "$1" | sed 's/"/\\"/g'; }
# No path of this machine in results/: the repository root becomes ".", and
# a binary outside it (e.g. in a CARGO_TARGET_DIR elsewhere) becomes
# "$CARGO_TARGET_DIR/..." (the part under its target folder).
portable() { printf '%s' "$1" | sed -e "s|$root/||g" -e "s|$root|.|g" -e 's%/[^ ]*/\(release\|debug\)/%$CARGO_TARGET_DIR/\1/%g'; }
printf 'date=%s commit=%s tree=%s profile="%s" device="CPU %s, %s cores, load %s%s; mrbm devices: %s" version="%s" wall_s=%s exit=%s command="%s"\n' \
    "$start" "$commit" "$tree" "$(quote "$profile")" "$(quote "$cpu")" "$cores" "$load" \
    "${gpu:+, GPU $(quote "$gpu")}" "$(quote "$devices")" "$(quote "$version")" "$wall" "$status" "$(quote "$(portable "$*")")" > "$out"
echo "provenance: $out" >&2
cat "$out" >&2
exit $status
