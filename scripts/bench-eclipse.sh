#!/usr/bin/env bash
# Eclipse at 10,000 nodes over seeds: runs simulations/scenarios/eclipse.toml (a bad patch in
# 100 sites; attackers hold every WAN link of 10 sites from 5 s to 60 s and forward only the
# other sites' beacons; 3 more sites hear nothing from 5 s to 230 s) for seeds 1..N in release
# mode, and the same scenario with the eclipse forwarding nothing (what the nodes would do
# without beacons to go by). Prints per seed, for each of the two cuts: the nodes that held
# new installs and when (cut start -> held, p50/max), heal -> free again, and the nodes of the
# cut that began installing after the halt; then the false holds outside any cut, the wall
# time and the invariant violations.
#
# Usage: scripts/bench-eclipse.sh [--seeds N] [--jobs J]
#   --seeds N   seeds 1..N (default 3)
#   --jobs J    runs at once (default 2; each takes about 2 minutes and 1.2 GB)
# Exits 1 if, with beacons, a node of the eclipsed sites installed after the halt or did not
# hold, a node outside the cuts held, or a run broke an invariant or produced no report. Needs
# jq; installs it with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench-eclipse.sh: $*" >&2
  exit 2
}

seeds=3
jobs=2
while (($#)); do
  case $1 in
    --seeds) seeds=${2:-}; shift 2 || die "--seeds needs a value" ;;
    --jobs) jobs=${2:-}; shift 2 || die "--jobs needs a value" ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds must be a positive integer (got '$seeds')"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer (got '$jobs')"
command -v jq > /dev/null || { apt-get update -qq && apt-get install -y -qq jq > /dev/null; } ||
  die "jq is missing and could not be installed"

scenario=simulations/scenarios/eclipse.toml
grep -q '^pass = \["beacon"\]' "$scenario" || die "$scenario has no eclipse forwarding beacons"
cargo build --release -q -p patchmesh-sim
bin=$PWD/target/release/patchmesh-sim
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The same eclipse forwarding nothing: the nodes have no beacon to go by.
sed 's/^pass = \["beacon"\]/pass = []/' "$scenario" > "$out/silent.toml"

run_one() {
  local variant=$1 seed=$2 file rc=0
  file=$scenario
  [[ $variant == silent ]] && file=$out/silent.toml
  "$bin" run "$file" --seed "$seed" > "$out/$variant-$seed.json" 2> "$out/$variant-$seed.err" || rc=$?
  echo "$rc" > "$out/$variant-$seed.rc"
}
export -f run_one
export bin out scenario

echo "eclipse: $scenario, seeds 1..$seeds, with beacons and without, $jobs at a time" >&2
for seed in $(seq 1 "$seeds"); do echo "beacons $seed"; echo "silent $seed"; done |
  xargs -P "$jobs" -L 1 bash -c 'run_one "$0" "$1"'

printf '%5s %-8s | %-34s | %-34s | %6s %8s  %s\n' seed eclipse \
  "eclipsed 10 sites: held detect back inst" "silent 3 sites: held detect back inst" \
  false wall_ms violations
status=0
for seed in $(seq 1 "$seeds"); do
  for variant in beacons silent; do
    f=$out/$variant-$seed.json
    if ! jq -e '.reach_by_cut != null' "$f" > /dev/null 2>&1; then
      printf '%5s %-8s  no report (exit %s): %s\n' "$seed" "$variant" \
        "$(cat "$out/$variant-$seed.rc")" "$(tail -n 3 "$out/$variant-$seed.err" | tr '\n' ' ')"
      status=1
      continue
    fi
    jq -r --arg v "$variant" '
      def cut(i): .reach_by_cut[i] as $c
        | "\($c.held_nodes)/\($c.nodes) \($c.detect_ms.p50)/\($c.detect_ms.max) \($c.back_ms.p50) \(.cut_installs_after_halt[i] // 0)";
      [.seed, $v, cut(0), cut(1), .reach_false_holds, .wall_ms,
       (.invariant_violations | if length == 0 then "-" else join("; ") end)] | @tsv' "$f" |
      awk -F'\t' '{ printf "%5s %-8s | %-34s | %-34s | %6s %8s  %s\n", $1,$2,$3,$4,$5,$6,$7 }'
    if [[ $variant == beacons ]] && ! jq -e '
        (.cut_installs_after_halt[0] // 0) == 0 and .reach_false_holds == 0
        and .reach_by_cut[0].held_nodes == .reach_by_cut[0].nodes
        and (.invariant_violations | length == 0)' "$f" > /dev/null; then
      echo "FAIL: seed $seed: an eclipsed node installed after the halt or did not hold, a node held for nothing, or an invariant broke" >&2
      status=1
    fi
  done
done
echo "columns: held = nodes of the cut that held new installs / nodes; detect = cut start -> held," \
  "p50/max ms; back = heal -> free, p50 ms; inst = nodes of the cut that began installing after" \
  "the halt; false = nodes outside any cut that held"
exit $status
