#!/usr/bin/env bash
# Starts 30 real patchmesh node processes on 127.0.0.1, publishes one signed policy and prints
# the time until all 30 hold it, then idle RSS, CPU and traffic per node over 60 s.
# The last line is one JSON object. BENCH_NODES and BENCH_IDLE_S change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh -p patchmesh-tests --bin patchmesh --bin bench-mesh
exec target/release/bench-mesh
