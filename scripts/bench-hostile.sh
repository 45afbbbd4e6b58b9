#!/usr/bin/env bash
# Hostile-mesh figures: runs the real-mesh attack test (tests/tests/hostile.rs: eight honest
# nodes in two sites and an admitted attacker, `tests/src/bin/attacker.rs`) on a release build
# and prints what it measured: under a flood of forged objects, the honest nodes' CPU and RSS,
# convergence of a real publish against the quiet case, when each node dropped the attacker
# and how its redials fared; what the replayer captured and sent back; the equivocator's
# records; the lying summary's messages; and under stream and control-socket abuse, the fetch time of a payload only the
# abused node holds and its RSS. NAT figures: scripts/bench-nat.sh.
# Usage: scripts/bench-hostile.sh   (as root: the test needs nothing else)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh
out=$(cargo test --release -q -p patchmesh-tests --test hostile -- --nocapture 2>&1) || {
  echo "$out" >&2
  echo "bench-hostile.sh: the attack test failed (output above)" >&2
  exit 1
}
grep -E '^(flood|replay|equivocation|lying summary|streams|  target)' <<< "$out"
