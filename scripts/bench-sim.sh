#!/usr/bin/env bash
# Runs every scenario in release mode, each twice with the same seed, and prints the figures
# the foundation issue asks for, one row per scenario, plus whether the two traces matched.
# Usage: scripts/bench-sim.sh [SEED]   (exit 1 if any run reports a violation or a mismatch)
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-1}"
cargo build --release -q -p patchmesh-sim
bin=target/release/patchmesh-sim
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
printf '%-15s %7s %6s %9s %9s %9s %11s %8s %8s %5s %s\n' scenario nodes conv p50_ms p99_ms max_ms sync_B/chg wall_ms rss_mb viol same_trace
for s in small branch-offices fleet-10k fleet-100k; do
  for run in 1 2; do
    if ! "$bin" run "simulations/scenarios/$s.toml" --seed "$seed" > "$out/$s.$run.json"; then status=1; fi
  done
  python3 - "$out/$s.1.json" "$out/$s.2.json" <<'PY' || status=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
c = a["policy_convergence_ms"]
same = a["trace_hash"] == b["trace_hash"]
print(f'{a["scenario"]:<15} {a["nodes"]:>7} {str(a["state_converged"]):>6} {c["p50"]:>9} {c["p99"]:>9} {c["max"]:>9} '
      f'{a["sync_bytes_per_change"]:>11} {a["wall_ms"]:>8} {a["peak_rss_mb"]:>8} {len(a["invariant_violations"]):>5} {same}')
sys.exit(0 if same and not a["invariant_violations"] else 1)
PY
done
# Enrolment of 1,050 machines with one voucher for 1,000 (one site split while the last enrol).
if ! "$bin" run simulations/scenarios/enrol-1k.toml --seed "$seed" > "$out/enrol.json"; then status=1; fi
python3 - "$out/enrol.json" <<'PY' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
a = r["enrol_admitted_ms"]
print(f'\nenrol-1k: {r["enrol_machines"]} machines, voucher for {r["enrol_max_nodes"]}: '
      f'admitted by every member up at boot p50 {a["p50"]} ms, p99 {a["p99"]} ms; '
      f'all admitted everywhere {r["enrol_all_admitted_after_last_boot_ms"]} ms after the last boot; '
      f'past the limit at once (split): {r["enrol_over_limit_max"]}, '
      f'none {r["enrol_over_limit_after_heal_ms"]} ms after the heal; '
      f'refused {r["enrol_refused_nodes"]}; violations {len(r["invariant_violations"])}')
sys.exit(0 if not r["invariant_violations"] else 1)
PY
exit $status
