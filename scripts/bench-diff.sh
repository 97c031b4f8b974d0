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
ROWS="${1:-1000000}"

need=()
command -v sqldiff >/dev/null || need+=(sqlite3-tools)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building the release binary"
cargo build --release -p snapback-cli --quiet
BIN="$PWD/target/release/snapback"

DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
echo "== making two databases of $ROWS rows (1% changed) in $DIR"
sqlite3 "$DIR/snap.db" <<SQL
PRAGMA journal_mode = WAL;
CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL, d BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $ROWS)
INSERT INTO t SELECT i, i * 7 % 1000, 'name-' || i || '-' || hex(i * 2654435761 % 4294967296), i / 3.0, zeroblob(16) FROM n;
SQL
cp "$DIR/snap.db" "$DIR/live.db"
sqlite3 "$DIR/live.db" <<SQL
UPDATE t SET a = a + 1 WHERE id % 300 = 0;
UPDATE t SET b = b || '!' WHERE id % 300 = 100;
DELETE FROM t WHERE id % 300 = 200;
INSERT INTO t SELECT id + $ROWS, a, b, c, d FROM t WHERE id % 1000 = 7;
SQL
sqlite3 "$DIR/snap.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
sqlite3 "$DIR/live.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null

best() { # best wall time of 3 runs, in seconds
  local b=""
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N); "$@" >"$DIR/out" 2>/dev/null || true; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}

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
