#!/usr/bin/env bash
# Loopback payload transfer: patchmesh (one source, then four) against a raw quinn stream.
# BENCH_MIB sets the payload size (default 1024). The last line is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh -p patchmesh-tests --bin patchmesh --bin bench-transfer
exec target/release/bench-transfer
