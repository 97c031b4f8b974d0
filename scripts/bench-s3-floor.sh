#!/usr/bin/env bash
# The floor of a full restore over the local S3 server (issue 13): how fast
# s3s-fs on 127.0.0.1 hands out the bytes of a repository's packs at all
# (curl with SigV4: ranged GETs of 1 MiB, 4 MiB and whole packs, 1 to 16 at
# once, the server's CPU time beside each), what a restore's GETs look like
# (count, sizes, how many in flight, through the counting proxy), and the
# full restore from the local repository and from S3 in the same run. The
# repository is bench-restore.sh's: a full snapshot, 1% of the rows
# updated, a second snapshot (release build). Prints a table; raw JSON in
# bench-out/s3floor/.
#
#   scripts/bench-s3-floor.sh [SIZE_MIB] [--kinds bench,json] [--pieces 1048576,0] [--par 1,4,8] [--repeat N]
#
# Same environment and set-up as scripts/bench.sh (BENCH_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench.sh
BENCH_PEERS=0 bench_setup
exec python3 scripts/bench.py s3floor "$@"
