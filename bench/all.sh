#!/usr/bin/env bash
# Every speed benchmark against its reference tool, in one run, then the
# README's speed table ("Speed against the reference tools") as markdown,
# with the machine's load average before and after beside it. Each
# benchmark's whole output is kept in $LOG (default bench-all.log in a
# temporary folder, printed at the end). Speed is only measured here, never
# asserted in tests.
#
#   tools/reference-env.sh           # the reference tools, into .venv/
#   bash bench/all.sh                # ONLY=train,fid to run a subset
#
# Needs: cargo, the .venv (or PYTHON=...) with every requirements file
# under bench/ and tools/, dvc (bench/requirements-dvc.txt), and the shared
# data ($MRBM_SHARED_DATA or ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
export PYTHON
DATA=${MRBM_SHARED_DATA:-$(cd .. && pwd)/shared/data}
export MRBM_SHARED_DATA=$DATA
THREADS=${THREADS:-2}
ONLY=${ONLY:-noop,decode,svm,train,fid,dag,rules,sampling}
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
LOG=${LOG:-$(mktemp -d)/bench-all.log}
: > "$LOG"
want() { [[ ",$ONLY," == *",$1,"* ]]; }
section() { printf '\n=== %s\n' "$1" >> "$LOG"; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "building the release binaries and benchmark examples..." >&2
cargo build --release -q -p mrbm-runner
cargo build --release -q -p mrbm-core --example train_step
cargo build --release -q -p mrbm-eval --example fid_bench --example frechet_bench --example svm_bench
cargo build --release -q -p mrbm-data --example data_bench
VENV_DVC=$(dirname "$PYTHON")/dvc

if want noop; then
  echo "no-op rerun vs dvc..." >&2
  section noop
  MRBM="$TARGET/release/mrbm" DVC=${DVC:-$( [ -x "$VENV_DVC" ] && echo "$VENV_DVC" || echo dvc )} \
    bash bench/noop_rerun.sh >> "$LOG" 2>&1 || echo "(noop_rerun failed)" >> "$LOG"
fi
if want decode; then
  echo "JPEG decode vs Pillow/torchvision..." >&2
  section decode
  "$PYTHON" bench/data_decode_bench.py --dir "$DATA/celeba-sample" --threads "$THREADS" --repeat 100 --rounds 5 >> "$LOG" 2>&1 \
    || echo "(data_decode_bench failed)" >> "$LOG"
fi
if want svm; then
  echo "linear SVM vs LIBLINEAR..." >&2
  section svm
  "$PYTHON" bench/svm_bench.py --threads 1,"$THREADS" >> "$LOG" 2>&1 || echo "(svm_bench failed)" >> "$LOG"
fi
if want train; then
  echo "training step vs PyTorch..." >&2
  section train
  STEPS=${STEPS:-5} THREADS=$THREADS bash bench/train_step.sh >> "$LOG" 2>&1 || echo "(train_step failed)" >> "$LOG"
fi
if want fid; then
  echo "Inception features and Frechet distance vs pytorch-fid..." >&2
  section fid
  "$PYTHON" bench/fid_bench.py --n 20 --batch 10 --threads "$THREADS" >> "$LOG" 2>&1 || echo "(fid_bench failed)" >> "$LOG"
fi
if want dag; then
  echo "planning large DAGs..." >&2
  section dag
  bash bench/dag_scale.sh >> "$LOG" 2>&1 || echo "(dag_scale failed)" >> "$LOG"
fi
if want rules; then
  echo "CD-1/PCD vs numpy..." >&2
  section rules
  THREADS=$THREADS bash bench/rbm_rules_bench.sh >> "$LOG" 2>&1 || echo "(rbm_rules_bench failed)" >> "$LOG"
fi
if want sampling; then
  echo "Gibbs sampling and AIS vs numpy / PyTorch..." >&2
  section sampling
  THREADS=$THREADS bash bench/sampling_bench.sh >> "$LOG" 2>&1 || echo "(sampling_bench failed)" >> "$LOG"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
# Which CPU: the kernels' speed against the references differs between CPU
# generations (README, "Issue 29, eighth step"), so every table names it.
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1) model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1); $("$TARGET/release/mrbm" devices 2>/dev/null | sed -n 's/^cpu: .*; \(sgemm kernels [a-z0-9x-]*\).*/\1/p')"

"$PYTHON" - "$LOG" "$load_before" "$load_after" "$THREADS" "$cpu" <<'PY'
import re, sys
log, before, after, threads, cpu = sys.argv[1:]
text = open(log).read()
sections = dict(re.findall(r"\n=== (\w+)\n(.*?)(?=\n=== |\Z)", "\n" + text, re.S))
rows = []
def row(what, cmd, result):
    rows.append(f"| {what} | {cmd if cmd == 'same' else '`' + cmd + '`'} | {result} |")

s = sections.get("noop", "")
m = re.search(r"mrbm run:\s+([\d.]+)s.*?dvc repro:\s+([\d.]+)s\s+\(([^)]*)\).*?ratio dvc/mrbm:\s+([\d.]+)x", s, re.S)
if m:
    row("no-op rerun, 50-stage DAG", "bash bench/noop_rerun.sh",
        f"{m[4]}x dvc {m[3].split()[-1]} ({m[1]} s vs {m[2]} s, best of 5)")
s = sections.get("decode", "")
r = re.findall(r"ratio (mrbm\S*) / (.+?): ([\d.]+)x wall", s)
if r:
    row("JPEG decode + crop + resize (CelebA sample)", "python bench/data_decode_bench.py --threads 2 --repeat 100 --rounds 5",
        ", ".join(f"{x}x {o}" for _, o, x in r))
s = sections.get("svm", "")
r = re.findall(r"^(\w+)\s+(-s \d)[^\n]*?\s(\d+)\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)x", s, re.M)
if r:
    parts = {}
    for data, solver, th, em, el, ratio in r:
        parts.setdefault((data, solver), []).append(f"{ratio}x")
    row(f"linear SVM fit, 1 / {threads} threads (MNIST pixels; dense features)", f"python bench/svm_bench.py --threads 1,{threads}",
        "LIBLINEAR 2.50: " + "; ".join(f"{d} `{s}` {' / '.join(v)}" for (d, s), v in parts.items()))
s = sections.get("train", "")
r = re.findall(r"^(generation|mnist)\s+mrbm \((\w+)\s*\)\s+([\d.]+) img/s\s+pytorch\s+([\d.]+) img/s\s+ratio ([\d.]+)x", s, re.M)
if r:
    row(f"one RBM training step, batch 128, {threads} threads", "STEPS=5 bash bench/train_step.sh",
        "; ".join(f"{st} stack {ratio}x ({g}: {a} vs {b} img/s)" for st, g, a, b, ratio in r) + " PyTorch CPU")
s = sections.get("fid", "")
m = re.search(r"ratio mrbm/pytorch-fid: ([\d.]+)x", s)
m2 = re.search(r"^pytorch-fid [\w.+]+: ([\d.]+) images/s", s, re.M)
m3 = re.search(r"^mrbm[^:\n]*: ([\d.]+) images/s", s, re.M)
if m:
    row("Inception (FID) features", f"python bench/fid_bench.py --n 20 --batch 10 --threads {threads}",
        f"{m[1]}x pytorch-fid CPU ({m3[1] if m3 else '?'} vs {m2[1] if m2 else '?'} images/s)")
m = re.search(r"Frechet distance, d=(\d+).*?speed ratio ([\d.]+)x", s)
if m:
    row(f"Frechet distance, {m[1]}-d", "same", f"{m[2]}x pytorch-fid (scipy)")
s = sections.get("dag", "")
r = re.findall(r"(\d+) stages: plan in ([\d.]+) s", s)
if r:
    row("plan a chain of " + " / ".join(n for n, _ in r) + " stages", "bash bench/dag_scale.sh",
        " / ".join(f"{t} s" for _, t in r))
s = sections.get("rules", "")
r = re.findall(r"^(\w+)\s+mrbm ([\d.]+) s, (\S+)(?: [\w.+]+)? ([\d.]+) s per 20 epochs: mrbm ([\d.]+)x\s+\S+(?:\s+\[rounds: ([\d.]+-[\d.]+x) over (\d+))?", s, re.M)
if r:
    row("CD-1 / PCD training, dense RBM 784-500, 20 epochs (MNIST t10k)", "bash bench/rbm_rules_bench.sh",
        "; ".join(f"{rule} {x}x {tool} ({a} s vs {b} s" + (f"; rounds {rng}" if rng else "") + ")"
                  for rule, a, tool, b, x, rng, n in r)
        + " (medians of " + (r[0][6] or "1") + " rounds; numpy reference; PyTorch CPU where torch imports)")
s = sections.get("sampling", "")
r = re.findall(r"^(gibbs|ais)\s+mrbm ([\d.]+) s, (\S+) [\w.+]+ ([\d.]+) s: mrbm ([\d.]+)x", s, re.M)
if r:
    row("Gibbs sampling (100 chains x 1,000 steps) / AIS (2,000 betas x 100 runs), RBM 784-500", "bash bench/sampling_bench.sh",
        "; ".join(f"{t} {x}x {tool} ({a} s vs {b} s)" for t, a, tool, b, x in r))
print(f"CPU: {cpu}")
print(f"load average before: {before}; after: {after} (1, 5, 15 min); {threads} threads")
print()
print("| what | command | mrbm vs reference |")
print("| --- | --- | --- |")
print("\n".join(rows))
PY
echo "whole output: $LOG" >&2
