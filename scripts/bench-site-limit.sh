#!/usr/bin/env bash
# Per-site install limit over many seeds: runs simulations/scenarios/site-limit.toml (1,000
# nodes in 10 sites of 100, each linked to 3 others of its site, max_concurrent_per_site = 3,
# crashes and a site cut off mid-rollout) for seeds 1..N in release mode and prints, per seed,
# the most members of one site installing at one moment, when the good patch had reached
# every targeted live node, the ring starts, the run's wall time and its invariant violations;
# then a summary line.
#
# Usage: scripts/bench-site-limit.sh [--seeds N] [--jobs J]
#   --seeds N   seeds 1..N (default 100)
#   --jobs J    runs at once (default 2; each takes about 17 s and 150 MB)
# Exits 1 if any seed saw more installs at once in a site than the limit, or produced no
# report. Needs jq; installs it with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench-site-limit.sh: $*" >&2
  exit 2
}

seeds=100
jobs=2
while (($#)); do
  case $1 in
    --seeds) seeds=${2:-}; shift 2 || die "--seeds needs a value" ;;
    --jobs) jobs=${2:-}; shift 2 || die "--jobs needs a value" ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds must be a positive integer (got '$seeds')"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer (got '$jobs')"
command -v jq > /dev/null || { apt-get update -qq && apt-get install -y -qq jq > /dev/null; } ||
  die "jq is missing and could not be installed"

scenario=simulations/scenarios/site-limit.toml
limit=$(sed -n 's/^max_concurrent_per_site = \([0-9]*\)/\1/p' "$scenario")
[[ -n $limit ]] || die "no max_concurrent_per_site in $scenario"
cargo build --release -q -p patchmesh-sim
bin=$PWD/target/release/patchmesh-sim
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run_one() {
  local seed=$1 rc=0
  "$bin" run "$scenario" --seed "$seed" > "$out/$seed.json" 2> "$out/$seed.err" || rc=$?
  echo "$rc" > "$out/$seed.rc"
}
export -f run_one
export bin out scenario

echo "site limit: $scenario (limit $limit), seeds 1..$seeds, $jobs at a time" >&2
seq 1 "$seeds" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

printf '%5s %9s %12s %16s %8s  %s\n' seed max_site complete_ms ring_starts_ms wall_ms violations
status=0
reports=()
for seed in $(seq 1 "$seeds"); do
  f=$out/$seed.json
  if ! jq -e '.max_site_concurrency != null' "$f" > /dev/null 2>&1; then
    printf '%5s  no report (exit %s): %s\n' "$seed" "$(cat "$out/$seed.rc")" \
      "$(tail -n 3 "$out/$seed.err" | tr '\n' ' ')"
    status=1
    continue
  fi
  reports+=("$f")
  jq -r '[.seed, .max_site_concurrency, (.rollout_complete_ms // "none"),
          (.ring_start_ms | map(tostring) | join("/")), .wall_ms,
          (.invariant_violations | if length == 0 then "-" else join("; ") end)] | @tsv' "$f" |
    awk -F'\t' '{ printf "%5s %9s %12s %16s %8s  %s\n", $1,$2,$3,$4,$5,$6 }'
done
if ((${#reports[@]})); then
  jq -s -r --argjson limit "$limit" '
    "summary: seeds \(length): max site concurrency \(map(.max_site_concurrency) | max) " +
    "(limit \($limit)), over the limit on \(map(select(.max_site_concurrency > $limit)) | length) seeds; " +
    "complete on \(map(select(.rollout_complete_ms != null)) | length) seeds, " +
    "slowest \(map(.rollout_complete_ms // 0) | max) ms; " +
    "seeds with violations: " +
    (map(select(.invariant_violations | length > 0) | .seed | tostring)
      | if length == 0 then "none" else join(",") end)' "${reports[@]}"
  if jq -s -e --argjson limit "$limit" 'any(.[]; .max_site_concurrency > $limit)' \
    "${reports[@]}" > /dev/null; then
    echo "FAIL: a site ran more installs at once than its limit" >&2
    status=1
  fi
else
  echo "summary: no run produced a report"
  status=1
fi
exit $status
