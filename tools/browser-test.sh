#!/usr/bin/env bash
# The report in a real browser (issue 18): builds mrbm, runs the quickstart
# (shortened: 1 epoch per model, 20 Gibbs steps; QUICKSTART_FULL=1 runs it
# as written) in a scratch project, writes its report with `mrbm report`,
# and renders that page in headless Chromium from a file:// URL. Fails when
#   - the page logs anything to the console (it has no script, so any
#     message is a problem: a blocked load, a bad data: URI, ...),
#   - an image does not decode (checked on a probe copy of the page with a
#     script that counts the images whose naturalWidth is 0),
#   - the page names an external URL (src or href other than data: or #),
#   - the screenshot is blank (luma variance, crates/mrbm-plot/examples/png_stats.rs).
# Before that, the same checks run on a page with a console error, a page
# with a broken image and a blank page, and must fail there: a detector
# that cannot fail proves nothing.
#
# Installs Debian's chromium (apt-get update first) when no Chromium is
# found. Keeps the screenshot at $SCREENSHOT (default: a temporary folder,
# printed at the end).
#
#   tools/browser-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

log() { printf 'browser-test: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

find_chromium() {
  for c in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

CHROMIUM="${CHROMIUM:-$(find_chromium || true)}"
if [ -z "$CHROMIUM" ]; then
  log "no Chromium found: installing Debian's chromium"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "chromium is not installed and this is not root (no sudo): apt-get install chromium"
    SUDO="sudo"
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
  CHROMIUM="$(find_chromium)" || die "chromium did not install"
fi
log "browser: $("$CHROMIUM" --version 2>/dev/null | head -1)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mrbm-browser-test.XXXXXX")"
SCREENSHOT="${SCREENSHOT:-$WORK/report.png}"
# Keep the pages and screenshots for a look; drop the cache and the profile.
trap 'rm -rf "$WORK/profile" "$WORK/project/.mrbm"' EXIT

# Build the binary and the screenshot checker.
cargo build -q -p mrbm-runner --bin mrbm
cargo build -q -p mrbm-plot --example png_stats
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
MRBM="$TARGET/debug/mrbm"
PNG_STATS="$TARGET/debug/examples/png_stats"
[ -x "$MRBM" ] && [ -x "$PNG_STATS" ] || die "built binaries not found under $TARGET/debug"

# render PAGE SHOT: screenshot (tall window: most of the page) and console
# messages of PAGE; prints the console lines; fails when there are any.
render() {
  local page="$1" shot="$2"
  local err="$WORK/chromium.$(basename "$shot").err"
  timeout 180 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --no-first-run --disable-extensions --user-data-dir="$WORK/profile" \
    --enable-logging=stderr --v=0 --window-size=1280,4200 \
    --screenshot="$shot" "file://$page" >/dev/null 2>"$err" || {
      tail -20 "$err" >&2; die "chromium failed on $page"; }
  [ -s "$shot" ] || die "chromium wrote no screenshot of $page"
  if grep -E ':CONSOLE[:(]' "$err" >&2; then
    return 1
  fi
  return 0
}

# images_ok PAGE: every <img> of PAGE decodes (a probe copy with a script
# that records the count of broken images on <body>, read with --dump-dom).
images_ok() {
  local page="$1" probe="$WORK/probe.html" dom="$WORK/probe.dom"
  sed 's|</body>|<script>addEventListener("load",()=>{const i=[...document.images];const b=i.filter(x=>!(x.complete\&\&x.naturalWidth>0));document.body.dataset.probe=(b.length?"broken":"ok")+":"+b.length+"/"+i.length})</script></body>|' \
    "$page" >"$probe"
  grep -q 'dataset.probe' "$probe" || die "could not add the probe to $page (no </body>?)"
  timeout 180 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --user-data-dir="$WORK/profile" --virtual-time-budget=10000 \
    --dump-dom "file://$probe" >"$dom" 2>/dev/null || die "chromium --dump-dom failed on $page"
  local verdict
  verdict="$(grep -Eo 'data-probe="[^"]*"' "$dom" | head -1 | sed 's/data-probe=//; s/"//g')"
  log "images of $(basename "$page"): ${verdict:-no verdict}"
  case "$verdict" in
    ok:0/*) return 0 ;;
    *) return 1 ;;
  esac
}

# no_external PAGE: src and href name only data: URIs and #anchors.
no_external() {
  local bad
  bad="$(grep -Eo '(src|href)="[^"]*"' "$1" | grep -Ev '="(data:|#)' || true)"
  [ -z "$bad" ] || { printf '%s\n' "$bad" | head -5 >&2; return 1; }
}

# 1. The detectors fail where they must.
cat >"$WORK/console.html" <<'EOF'
<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>
<body><h1>A page with a console error</h1><p>text</p><script>console.error("planted error")</script></body></html>
EOF
cat >"$WORK/broken.html" <<'EOF'
<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>
<body><h1>A broken image</h1><img alt="x" src="data:image/png;base64,iVBORw0KGgoAAAAbroken"></body></html>
EOF
cat >"$WORK/blank.html" <<'EOF'
<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head><body></body></html>
EOF
if render "$WORK/console.html" "$WORK/console.png" 2>/dev/null; then
  die "self-check: a console.error was not seen"
fi
grep -q 'planted error' "$WORK/chromium.console.png.err" || die "self-check: the planted error is not in the console log"
if images_ok "$WORK/broken.html"; then die "self-check: a broken image was not seen"; fi
render "$WORK/blank.html" "$WORK/blank.png" || die "self-check: the blank page logged to the console"
if "$PNG_STATS" "$WORK/blank.png" >/dev/null 2>&1; then die "self-check: a blank screenshot passed"; fi
if printf '<img src="https://example.org/a.png">' >"$WORK/ext.html" && no_external "$WORK/ext.html" 2>/dev/null; then
  die "self-check: an external URL was not seen"
fi
log "self-checks: a console error, a broken image, a blank page and an external URL are all caught"

# 2. The quickstart's report.
mkdir -p "$WORK/project/experiments"
cp experiments/quickstart.toml "$WORK/project/experiments/"
# --force-override: the quickstart's N axis sets sample.steps per cell; the shortened run
# overrides it in every cell.
SHORT=(--force-override --set train.epochs=1 --set gen.epochs=1 --set sample.steps=20 --set sample.anneal_steps=10)
[ "${QUICKSTART_FULL:-0}" = 1 ] && SHORT=()
log "running the quickstart ${SHORT[*]:-as written}"
(cd "$WORK/project" && "$MRBM" run experiments/quickstart.toml --quiet "${SHORT[@]}" >"$WORK/run.log" 2>&1) || {
  tail -30 "$WORK/run.log" >&2; die "the quickstart failed"; }
(cd "$WORK/project" && "$MRBM" report --out results/report.html) >&2
PAGE="$WORK/project/results/report.html"
[ -s "$PAGE" ] || die "no report at $PAGE"

no_external "$PAGE" || die "the report names external URLs"
render "$PAGE" "$SCREENSHOT" || die "the report logged console messages (above)"
images_ok "$PAGE" || die "images of the report do not decode"
"$PNG_STATS" "$SCREENSHOT" >&2 || die "the report's screenshot is blank"
log "PASS: report $PAGE ($(wc -c <"$PAGE") bytes), screenshot $SCREENSHOT"
