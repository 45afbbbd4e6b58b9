#!/usr/bin/env bash
# A compliance report for 10,000 nodes × 50 findings from a synthetic replicated state: build,
# sign, HTML, PDF, CSV and verify times, sizes and peak RSS. BENCH_REPORT_NODES and
# BENCH_REPORT_FINDINGS change the size. The last line is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p patchmesh-tests --bin bench-report
exec target/release/bench-report
