#!/usr/bin/env bash
# What the dashboard costs: overview and nodes page render (server side) for a 10,000-node
# fleet, the /metrics scrape for it (time and series), and a real node's idle RSS and CPU with
# the dashboard and metrics on and no browser open, against the same node without them.
# BENCH_DASH_NODES changes the fleet size. The last line is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh
cargo build --release -q -p patchmesh-tests --bin bench-dashboard
exec target/release/bench-dashboard
