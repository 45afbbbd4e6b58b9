#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, bodies in protocol/src/fuzzing.rs and
# node/src/fuzzing.rs) under libFuzzer for N seconds each, from the committed seeds
# (fuzz/seeds/<target>) and the corpus of earlier runs (fuzz/corpus/<target>, kept locally),
# and prints, per target, executions, crashes and corpus size.
# Crash inputs land in fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ so
# the normal test suite (protocol/tests/fuzz_corpus.rs, node/tests/fuzz_corpus.rs) replays it
# from then on.
# Usage: scripts/fuzz.sh [--seconds N | --runs N] [--sanitizer S] [TARGET...]
#   --seconds N    run each target for N seconds (default 60)
#   --runs N       run each target until N executions instead (e.g. 10000000)
#   --sanitizer S  address (default), none (about 2-4 times the executions per second; the
#                  targets are safe Rust, and a panic or a failed assertion still crashes)
# Exit 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=60
runs=
sanitizer=address
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --sanitizer) sanitizer="$2"; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds needs a positive integer" >&2; exit 2; }
[[ -z $runs || $runs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --runs needs a positive integer" >&2; exit 2; }
case "$sanitizer" in address|none) ;; *) echo "fuzz.sh: --sanitizer is address or none" >&2; exit 2 ;; esac
if [ -n "$runs" ]; then limit=(-runs="$runs"); else limit=(-max_total_time="$secs"); fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
cd fuzz
cargo +nightly fuzz build -O -s "$sanitizer"
status=0
printf '%-14s %14s %8s %8s %10s\n' target executions exec/s crashes corpus
for t in "${targets[@]}"; do
  log=$(mktemp)
  mkdir -p "corpus/$t"
  # New units go to corpus/<target> (not committed); seeds/<target> is the committed start.
  start=$(date +%s)
  cargo +nightly fuzz run -O -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- "${limit[@]}" \
    -print_final_stats=1 >"$log" 2>&1 || true
  took=$(( $(date +%s) - start ))
  done=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  [ -n "$done" ] || done=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  rate=$(( ${done:-0} / (took > 0 ? took : 1) ))
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  corpus=$(find "corpus/$t" -type f | wc -l)
  printf '%-14s %14s %8s %8s %10s\n' "$t" "${done:-?}" "${rate:-?}" "$crashes" "$corpus"
  if [ "$crashes" -gt 0 ]; then
    status=1
    grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' || true
  fi
  rm -f "$log"
done
exit $status
