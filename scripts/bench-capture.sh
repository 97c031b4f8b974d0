#!/usr/bin/env bash
# Capture cost (issue 18): how long a snapshot takes after one changed row
# and after 0.1% of the rows, against a full snapshot of the same database
# (release build; the database held open as an application holds it, so a
# snapshot can read only the pages written since the previous one). Writes
# the "Capture cost" section of docs/benchmarks.md; raw JSON in
# bench-out/capture/.
#
#   scripts/bench-capture.sh [--size MIB] [--runs N]     (default 1024, 3)
#
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE, BENCH_NO_DOC),
# without the peers (restic, borg) it does not run.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_PEERS=0
. scripts/bench.sh
bench_setup
exec python3 scripts/bench.py capture "$@"
