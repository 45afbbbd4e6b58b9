#!/usr/bin/env bash
# Vulnerability intelligence at real scale: import, bundle size, one node's rescan, a 10,000-node
# fleet ranked at one node, and a node's RSS with the index loaded. The last line is one JSON
# object. BENCH_SOURCES, BENCH_ENTRIES and BENCH_FLEET_NODES change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh-tests --bin bench-intel
exec target/release/bench-intel
