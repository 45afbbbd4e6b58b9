#!/usr/bin/env bash
# Rollout safety benchmark: runs simulations/scenarios/bad-patch.toml (10,000 nodes, a patch
# failing on 30% of the fleet) for seeds 1..N in release mode and prints, per seed, the blast
# radius (nodes outside the canary ring that installed the halted rollout), the halt latency
# (the moment the canary's failures crossed the gate -> each live node stopped, simulated ms),
# halted/live nodes, rings completed and the run's wall time; then a summary line. Then runs
# simulations/scenarios/good-patch.toml once and prints how long the good patch took to reach
# every targeted node. Columns: blast, halt latency p50/p99/max (nodes reachable and up from
# the halt), halted/live nodes at the end, rings completed (0 for a halted rollout), heal_max
# (partition heal -> stopped, worst node cut off at the halt), wall_ms, invariant violations.
#
# Usage: scripts/bench-rollout.sh [--seeds N] [--jobs J] [--no-good]
#   --seeds N   seeds 1..N of the bad patch (default 100)
#   --jobs J    runs at once (default 1; each 10,000-node run takes about 1 GiB and one core,
#               and wall_ms is the run's own, so it grows when runs share cores)
#   --no-good   skip the good patch
# Exits 1 if any seed has blast_radius > 0 (or a run produced no report); seeds with other
# invariant violations are listed in the summary. Needs jq; installs it with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench-rollout.sh: $*" >&2
  exit 2
}

seeds=100
jobs=1
good=1
while (($#)); do
  case $1 in
    --seeds) seeds=${2:-}; shift 2 || die "--seeds needs a value" ;;
    --jobs) jobs=${2:-}; shift 2 || die "--jobs needs a value" ;;
    --no-good) good=0; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $seeds =~ ^[1-9][0-9]*$ ]] || die "--seeds must be a positive integer (got '$seeds')"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer (got '$jobs')"

if ! command -v jq > /dev/null; then
  command -v apt-get > /dev/null || die "jq is missing and there is no apt-get to install it"
  apt-get install -y -q jq > /dev/null 2>&1 ||
    { apt-get update -q > /dev/null && apt-get install -y -q jq > /dev/null; } ||
    die "could not install jq"
fi

cargo build --release -q -p patchmesh-sim
bin=$PWD/target/release/patchmesh-sim
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One run: its report (stdout), its complaints (stderr) and its exit status. The simulator
# exits 1 when an invariant is violated; the report says which.
run_one() {
  local scenario=$1 seed=$2 tag=$3
  local rc=0
  "$bin" run "$scenario" --seed "$seed" > "$out/$tag.json" 2> "$out/$tag.err" || rc=$?
  echo "$rc" > "$out/$tag.rc"
  echo "  $tag done (exit $rc)" >&2
}
export -f run_one
export bin out

bad=simulations/scenarios/bad-patch.toml
echo "bad patch: $bad, seeds 1..$seeds, $jobs at a time" >&2
seq 1 "$seeds" | xargs -P "$jobs" -I{} bash -c 'run_one "$0" {} bad.{}' "$bad"

printf '%5s %6s %8s %8s %8s %11s %6s %9s %8s %5s\n' \
  seed blast p50_ms p99_ms max_ms halted/live rings heal_max wall_ms viol
status=0
for seed in $(seq 1 "$seeds"); do
  if ! jq -e '.blast_radius != null' "$out/bad.$seed.json" > /dev/null 2>&1; then
    printf '%5s  no report (exit %s): %s\n' "$seed" "$(cat "$out/bad.$seed.rc")" \
      "$(tail -n 3 "$out/bad.$seed.err" | tr '\n' ' ')"
    status=1
    continue
  fi
  jq -r '[.seed, .blast_radius, .halt_latency_ms.p50, .halt_latency_ms.p99, .halt_latency_ms.max,
          "\(.halted_nodes)/\(.live_nodes)", .rings_completed, .halt_after_heal_ms.max, .wall_ms,
          (.invariant_violations | length)] | @tsv' "$out/bad.$seed.json" |
    awk -F'\t' '{ printf "%5s %6s %8s %8s %8s %11s %6s %9s %8s %5s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10 }'
done

# Summary over every seed that produced a report.
reports=()
for seed in $(seq 1 "$seeds"); do
  jq -e '.blast_radius != null' "$out/bad.$seed.json" > /dev/null 2>&1 && reports+=("$out/bad.$seed.json")
done
if ((${#reports[@]})); then
  summary=$(jq -s -r '
    def worst(f): map(f) | max;
    "seeds \(length): max blast radius \(worst(.blast_radius)), " +
    "worst p99 \(worst(.halt_latency_ms.p99)) ms, worst max \(worst(.halt_latency_ms.max)) ms, " +
    "worst heal->halt \(worst(.halt_after_heal_ms.max)) ms, " +
    "every live node halted on \(map(select(.halted_nodes == .live_nodes)) | length) seeds, " +
    "wall \(map(.wall_ms) | add / length / 100 | round / 10) s mean, " +
    "\(worst(.wall_ms) / 100 | round / 10) s max; seeds with violations: " +
    (map(select(.invariant_violations | length > 0) | .seed | tostring)
      | if length == 0 then "none" else join(",") end)' "${reports[@]}")
  echo "summary: $summary"
  jq -r '.seed as $s | .invariant_violations[] | "  seed \($s): \(.)"' "${reports[@]}" | head -n 20
  if jq -s -e 'any(.[]; .blast_radius > 0)' "${reports[@]}" > /dev/null; then
    echo "FAIL: a bad patch reached nodes outside its canary ring" >&2
    status=1
  fi
else
  echo "summary: no run produced a report"
  status=1
fi

if ((good)); then
  goodfile=simulations/scenarios/good-patch.toml
  echo "good patch: $goodfile, seed 1" >&2
  run_one "$goodfile" 1 good
  if jq -e '.rollout_targeted_nodes != null' "$out/good.json" > /dev/null 2>&1; then
    jq -r '"good patch: rollout_complete_ms \(.rollout_complete_ms // "none (not every targeted node committed)"), " +
      "committed \(.rollout_committed_nodes)/\(.rollout_targeted_nodes) targeted live nodes, " +
      "rings completed \(.rings_completed)/\(.rings), ring starts \(.ring_start_ms) ms, " +
      "rings done \(.ring_done_ms) ms, max site concurrency \(.max_site_concurrency), " +
      "wall \(.wall_ms) ms, violations \(.invariant_violations)"' "$out/good.json"
  else
    echo "good patch: no report (exit $(cat "$out/good.rc")): $(tail -n 3 "$out/good.err")"
    status=1
  fi
fi
exit $status
