#!/usr/bin/env bash
# Restore (issue 13): full restore from a local repository, from the local
# S3 server and with restic, and `restore --delta` after 1% and 0.1% of the
# pages were damaged, on generated databases (release build, one run).
# Writes the "Restore" section of docs/benchmarks.md; raw JSON in
# bench-out/restore/.
#
#   scripts/bench-restore.sh [SIZES...]     (MiB; default 1024 4096, which
#                                            needs ~25 GiB free)
#
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE, BENCH_NO_DOC).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench.sh
bench_setup
exec python3 scripts/bench.py restore "$@"
