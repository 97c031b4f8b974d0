#!/usr/bin/env bash
# Benchmark of issue 14's targets that are built: a diff of one table from
# the repository (the snapshot opened in place through the snapback VFS)
# against sqldiff on two local files, with the pages it read; and point
# lookups through the loadable extension, cold and warm, against the same
# lookups on a local file.
#
#   scripts/bench-forensics.sh [SIZE_MIB]     (default 256)
#
# The database: `t` (the table diffed: 1% of its rows changed, as in
# bench-diff.sh) and `filler` (random blobs, the rest of SIZE_MIB). Builds
# the release binary and libsnapback_vfs.so ($CARGO_TARGET_DIR/release, or
# target/release). Installs sqlite3, sqldiff (sqlite3-tools) and bc if
# missing. Prints best-of-3 wall times. Run it under the CPU lock:
#   flock /tmp/snapback-cpu.lock bash scripts/bench-forensics.sh 256
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
SIZE="${1:-256}"

bench_need sqldiff=sqlite3-tools sqlite3=sqlite3 bc=bc /usr/bin/python3=python3

echo "== building the release binary and the extension" >&2
cargo build --release -p snapback-cli -p snapback-vfs --quiet
REL="${CARGO_TARGET_DIR:-$PWD/target}/release"
BIN="$REL/snapback"
EXT="$REL/libsnapback_vfs"

DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
ROWS=$((SIZE * 1000))
FILL=$((SIZE * 800))
echo "== a ${SIZE} MiB database: t ($ROWS rows), filler ($FILL blobs of 1000 bytes)" >&2
{ echo "PRAGMA journal_mode = WAL;"; t_table_sql "$ROWS"; cat <<SQL; } | sqlite3 "$DIR/app.db" >/dev/null
CREATE TABLE filler(id INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $FILL)
INSERT INTO filler SELECT i, randomblob(1000) FROM n;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
REPO="$DIR/repo"
export XDG_STATE_HOME="$DIR/state" XDG_CACHE_HOME="$DIR/cache" XDG_CONFIG_HOME="$DIR/config"
"$BIN" --repo "$REPO" init >/dev/null
ID=$("$BIN" --repo "$REPO" snapshot "$DIR/app.db")
cp "$DIR/app.db" "$DIR/snap.db"
{ t_changes_sql "$ROWS"; echo "PRAGMA wal_checkpoint(TRUNCATE);"; } | sqlite3 "$DIR/app.db" >/dev/null

echo "== diff of table t" >&2
T_SQLDIFF=$(best sqldiff --table t "$DIR/app.db" "$DIR/snap.db")
N_SQLDIFF=$(grep -c ';$' "$DIR/out" || true)
T_SNAP=$(best "$BIN" --repo "$REPO" diff "$ID" "$DIR/app.db" --table t --sql)
N_SNAP=$(grep -c ';$' "$DIR/out" || true)
"$BIN" --repo "$REPO" --json diff "$ID" "$DIR/app.db" --table t >"$DIR/diff.json" 2>/dev/null || true
READ=$(tail -1 "$DIR/diff.json" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin)["snapshot_read"]; print(r["pages_read"], "of", r["pages"], "pages")')
T_PAGES=$(sqlite3 "$DIR/snap.db" "SELECT count(*) FROM dbstat WHERE name = 't'" 2>/dev/null || echo "?")
echo "sqldiff --table t, two local files:     ${T_SQLDIFF}s ($N_SQLDIFF statements)"
echo "snapback diff --table t, from the repo: ${T_SNAP}s ($N_SNAP statements), read $READ (t has $T_PAGES)"
echo "ratio (snapback / sqldiff): $(echo "scale=2; $T_SNAP / $T_SQLDIFF" | bc)"

echo "== point lookups of t by id" >&2
/usr/bin/python3 - "$EXT" "$DIR/snap.db" "file:$DIR/app.db?vfs=snapback&repo=$REPO&at=$ID" "$ROWS" <<'PY'
import random, sqlite3, sys, time
ext, local, uri, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(ext)
ids = random.Random(7).sample(range(1, rows + 1), 2000)
def run(db):
    s = time.perf_counter()
    for i in ids:
        db.execute("SELECT a, b FROM t WHERE id = ?", (i,)).fetchone()
    return time.perf_counter() - s
ldb = sqlite3.connect(f"file:{local}?mode=ro", uri=True)
run(ldb); local_warm = min(run(ldb) for _ in range(3))
vdb = sqlite3.connect(uri, uri=True)
cold = run(vdb)
warm = min(run(vdb) for _ in range(3))
n = len(ids)
print(f"local file, warm:   {local_warm / n * 1e6:.1f} us/lookup")
print(f"VFS extension cold: {cold / n * 1e6:.1f} us/lookup (first pass, pages fetched from the repository)")
print(f"VFS extension warm: {warm / n * 1e6:.1f} us/lookup, {warm / local_warm:.2f}x the local file")
PY
