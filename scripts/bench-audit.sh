#!/usr/bin/env bash
# The audit log's cost: append per entry and verify rate for a 1M-entry log on disk.
# BENCH_AUDIT_ENTRIES changes the size. The last line is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh-tests --bin bench-audit
exec target/release/bench-audit
