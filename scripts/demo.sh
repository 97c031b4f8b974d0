#!/usr/bin/env bash
# The main job on the embedded default: a local repository and a sample
# database that is being written while snapshots are taken.
#
#   scripts/demo.sh            # work directory: ./demo-out (removed first)
#   DEMO_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-$PWD/demo-out}

echo "== building snapback (release)"
cargo build --release -q -p snapback-cli -p snapback-devtools
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
SB=$TARGET/release/snapback
DT=$TARGET/release/snapback-devtools

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
export SNAPBACK_REPO=$DEMO_DIR/repo
DB=$DEMO_DIR/app.db

echo "== creating a sample database (64 MiB, WAL mode)"
"$DT" gen "$DB" --size-mib 64 --seed 1

echo "== initialising a repository at $SNAPBACK_REPO"
"$SB" init

echo "== writing to the database for 8 s while taking snapshots"
"$DT" write "$DB" --seconds 8 &
WRITER=$!
trap 'kill $WRITER 2>/dev/null || true' EXIT
sleep 1
for i in 1 2 3; do
  "$SB" -v snapshot "$DB" --tag demo
  sleep 1.5
done
wait $WRITER
trap - EXIT
"$SB" snapshot "$DB" --tag demo

echo "== snapshots"
"$SB" snapshots

echo "== restoring the second snapshot by time (@TIME)"
T=$("$SB" --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)[1]["time"])' 2>/dev/null || "$SB" snapshots | awk 'NR==3{print $2}')
"$SB" restore "@$T" "$DEMO_DIR/restored.db"
"$DT" check "$DEMO_DIR/restored.db"

echo "== verifying every byte of the repository"
"$SB" check --read-data
echo "demo finished: repository $SNAPBACK_REPO, restored database $DEMO_DIR/restored.db"
