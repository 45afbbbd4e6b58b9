#!/usr/bin/env bash
# Liveness after a long partition under heavy loss, over seeds: runs
# simulations/scenarios/long-partition.toml (30,000 nodes in 300 sites, 20% WAN loss, 120 sites
# cut off from 6 s to 41 s across the canary failures of a bad patch, 150 crashes) for seeds
# 1..N in release mode, one at a time (each takes about 10 minutes and 7 GB), and prints per
# seed: heal -> halted for the nodes of the cut sites (p50/p99/max ms), T0 -> halted for the
# others, live nodes never halted, convergence, links redialled, wall time and violations.
#
# Usage: scripts/bench-partition.sh [--seeds N]
# Exits 1 if a live node never halted, the state did not converge, or a run broke an
# invariant or produced no report. Needs jq; installs it with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench-partition.sh: $*" >&2
  exit 2
}

seeds=3
while (($#)); do
  case $1 in
    --seeds) seeds=${2:-}; shift 2 || die "--seeds needs a value" ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds must be a positive integer (got '$seeds')"
command -v jq > /dev/null || { apt-get update -qq && apt-get install -y -qq jq > /dev/null; } ||
  die "jq is missing and could not be installed"

scenario=simulations/scenarios/long-partition.toml
cargo build --release -q -p patchmesh-sim
bin=$PWD/target/release/patchmesh-sim
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

printf '%5s %22s %22s %7s %9s %8s %8s  %s\n' seed "heal->halt p50/p99/max" \
  "T0->halt p50/p99/max" unhalted converged redials wall_ms violations
status=0
for seed in $(seq 1 "$seeds"); do
  f=$out/$seed.json
  if ! "$bin" run "$scenario" --seed "$seed" > "$f" 2> "$out/$seed.err" ||
    ! jq -e '.halt_after_heal_ms != null' "$f" > /dev/null 2>&1; then
    printf '%5s  no report: %s\n' "$seed" "$(tail -n 3 "$out/$seed.err" | tr '\n' ' ')"
    status=1
    continue
  fi
  jq -r '[.seed,
          "\(.halt_after_heal_ms.p50)/\(.halt_after_heal_ms.p99)/\(.halt_after_heal_ms.max)",
          "\(.halt_latency_ms.p50)/\(.halt_latency_ms.p99)/\(.halt_latency_ms.max)",
          (.live_nodes - .halted_nodes), .state_converged, .links_redialled, .wall_ms,
          (.invariant_violations | if length == 0 then "-" else join("; ") end)] | @tsv' "$f" |
    awk -F'\t' '{ printf "%5s %22s %22s %7s %9s %8s %8s  %s\n", $1,$2,$3,$4,$5,$6,$7,$8 }'
  if ! jq -e '.live_nodes == .halted_nodes and .state_converged
      and (.invariant_violations | length == 0)' "$f" > /dev/null; then
    echo "FAIL: seed $seed: a live node never halted, the state did not converge, or an invariant broke" >&2
    status=1
  fi
done
exit $status
