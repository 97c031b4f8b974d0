#!/usr/bin/env bash
# Scale figures (issue 8): time and peak memory (/usr/bin/time -v) of
# snapshot, check, prune and the snapshot listing as the database grows, and
# as the number of snapshot manifests grows (synthetic manifests: valid
# copies of a real one, with other times). Writes the "Scale" section of
# docs/benchmarks.md; raw JSON in bench-out/scale/.
#
#   scripts/bench-scale.sh [--sizes 256 1024 [4096]] [--manifests 1 100 1000 10000] [--manifest-db-mib 16]
#
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE, BENCH_NO_DOC).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench.sh
bench_setup
exec python3 scripts/bench.py scale "$@"
