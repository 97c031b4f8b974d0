#!/usr/bin/env bash
# Restore (issue 13): full restore from a local repository, from the local
# S3 server and with restic, `restore --delta` after 1% and 0.1% of the
# pages were damaged, and `restore --in-place` of a 1% difference into a
# live database while a writer commits (its write transaction and the
# writer's longest gap between commits), and the same into a live database
# snapback already captures (a capture state, its WAL pinned as `watch`
# pins it: the pre-restore snapshot is a WAL delta), on both kinds of
# generated database (release build). Writes the "Restore" section of
# docs/benchmarks.md; raw JSON in bench-out/restore/.
#
#   scripts/bench-restore.sh [SIZES...] [--kinds bench,json] [--repeat N] [--no-s3]
#       SIZES in MiB (default 1024); --repeat: runs of each timed command,
#       the median reported (default 1)
#
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE, BENCH_NO_DOC).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench.sh
bench_setup
exec python3 scripts/bench.py restore "$@"
