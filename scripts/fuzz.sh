#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, bodies in protocol/src/fuzzing.rs and
# node/src/fuzzing.rs) under libFuzzer for N seconds each, from the committed seeds
# (fuzz/seeds/<target>) and the corpus of earlier runs (fuzz/corpus/<target>, kept locally),
# and prints, per target, executions, crashes and corpus size.
# Crash inputs land in fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ so
# the normal test suite (protocol/tests/fuzz_corpus.rs, node/tests/fuzz_corpus.rs) replays it
# from then on.
# Usage: scripts/fuzz.sh [--seconds N] [TARGET...]   (exit 1 if any target crashed)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs="$2"; shift 2 ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
cd fuzz
cargo +nightly fuzz build -O
status=0
printf '%-14s %14s %8s %8s %10s\n' target executions exec/s crashes corpus
for t in "${targets[@]}"; do
  log=$(mktemp)
  mkdir -p "corpus/$t"
  # New units go to corpus/<target> (not committed); seeds/<target> is the committed start.
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" \
    -print_final_stats=1 >"$log" 2>&1 || true
  runs=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  rate=$(( ${runs:-0} / secs ))
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  corpus=$(find "corpus/$t" -type f | wc -l)
  printf '%-14s %14s %8s %8s %10s\n' "$t" "${runs:-?}" "${rate:-?}" "$crashes" "$corpus"
  if [ "$crashes" -gt 0 ]; then
    status=1
    grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' || true
  fi
  rm -f "$log"
done
exit $status
