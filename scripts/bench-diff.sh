#!/usr/bin/env bash
# Benchmark: `snapback diff` against SQLite's `sqldiff` on the same pair of
# databases: ROWS rows (default 1,000,000), 1% of them changed.
#
#   scripts/bench-diff.sh [ROWS]
#
# Installs sqldiff (Debian package sqlite3-tools) and sqlite3 if missing,
# builds the release binary, makes the two databases in a temp directory,
# and reports the best of 3 runs of each tool, and the ratio. Both tools
# print SQL that turns the second database into the first; both outputs are
# checked to have the same number of statements. The result is recorded in
# docs/restore-scripts.md ("Performance").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROWS="${1:-1000000}"

bench_need sqldiff=sqlite3-tools sqlite3=sqlite3 bc=bc

echo "== building the release binary"
cargo build --release -p snapback-cli --quiet
BIN="$PWD/target/release/snapback"

DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
echo "== making two databases of $ROWS rows (1% changed) in $DIR"
{ echo "PRAGMA journal_mode = WAL;"; t_table_sql "$ROWS"; } | sqlite3 "$DIR/snap.db" >/dev/null
cp "$DIR/snap.db" "$DIR/live.db"
t_changes_sql "$ROWS" | sqlite3 "$DIR/live.db"
sqlite3 "$DIR/snap.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
sqlite3 "$DIR/live.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null

echo "== sqldiff"
T_SQLDIFF=$(best sqldiff "$DIR/live.db" "$DIR/snap.db")
N_SQLDIFF=$(grep -c ';$' "$DIR/out" || true)
echo "== snapback diff --sql"
T_SNAP=$(best "$BIN" diff --snapshot-db "$DIR/snap.db" "$DIR/live.db" --sql)
N_SNAP=$(grep -c ';$' "$DIR/out" || true)

echo "sqldiff:        ${T_SQLDIFF}s  ($N_SQLDIFF statements)"
echo "snapback diff:  ${T_SNAP}s  ($N_SNAP statements)"
echo "ratio (snapback / sqldiff): $(echo "scale=2; $T_SNAP / $T_SQLDIFF" | bc)"
if [ "$N_SQLDIFF" != "$N_SNAP" ]; then
  echo "WARNING: the two tools printed different numbers of statements" >&2
fi
