#!/usr/bin/env bash
# Integrations under failure: three real nodes, a webhook receiver on loopback that answers 503
# for 30 s (PATCHMESH_RECEIVER_DOWN_S) and then 200, 1,000 events every node holds, and the
# elected emitter killed with SIGKILL in the middle of the burst. Prints one JSON line: 503
# answers, events delivered before the kill, distinct ids that arrived (must be 1,000),
# duplicates (at-least-once after a fail-over), deliveries per node, and the time from the kill
# until every id had arrived.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p patchmesh -p patchmesh-tests
PATCHMESH_RECEIVER_DOWN_S="${PATCHMESH_RECEIVER_DOWN_S:-30}" \
  cargo test -q -p patchmesh-tests --test integrations -- --nocapture 2>&1 | grep -E '^\{|test result|panicked'
