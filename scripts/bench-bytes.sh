#!/usr/bin/env bash
# Stored bytes (issue 15): snapback, restic and borg on both kinds of
# database (bench: `snapback-devtools gen`; json: documents that compress
# well), a full snapshot, then 1% and 0.1% of the rows updated and a
# snapshot each; every incremental also against the zstd-3 size of the
# pages that changed, concatenated (the floor). Prints a table (raw JSON in
# bench-out/bytes/); docs/benchmarks.md is edited by hand from it.
#
#   scripts/bench-bytes.sh [--size MIB] [--kinds bench,json]   (default 256)
#
# Run it under the CPU lock: flock /tmp/snapback-cpu.lock bash scripts/bench-bytes.sh
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v zstd >/dev/null || { echo "missing: zstd (apt-get install zstd)" >&2; exit 1; }
. scripts/bench.sh
bench_setup
exec python3 scripts/bench.py bytes "$@"
