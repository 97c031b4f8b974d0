#!/usr/bin/env bash
# Benchmark of `snapback mount` (not a timed test): a fixed SQLite query
# workload on a mounted snapshot, cold (fresh mount, empty caches) and warm
# (second run on the same mount), against the same database on local disk.
#
#   scripts/bench-mount.sh              # 256 MiB database
#   SIZE_MB=1024 scripts/bench-mount.sh # 1 GiB
#   KIND=json scripts/bench-mount.sh    # rows of JSON text that compress well
#                                       # (default KIND=bench: random blobs, which
#                                       # hardly compress)
#   MOUNT_FLAGS="--fetch-window 64K" scripts/bench-mount.sh  # mount options
#   S3=1 scripts/bench-mount.sh         # the repository on the local S3 server
#                                       # (scripts/s3-server.sh) instead of a directory
#
# Needs: fuse3 (fusermount3), sqlite3, a Rust toolchain. Root, or a user
# allowed to use FUSE. Everything lives in a temporary directory that is
# removed at the end (KEEP=1 keeps it). The workload:
#   point:     $POINTS lookups by primary key (random, fixed seed; 10,000,
#              or 1,000 with S3=1)
#   range:     a scan of 100,000 consecutive rows (sum over a column)
#   aggregate: GROUP BY over an indexed column (a covering-index scan)
# The mount serves a WAL-mode database in rollback mode (a read-only file
# system has no -shm), so the warm runs are also measured on a local copy in
# rollback mode (local-rb): the same file and SQLite protocol as the mount,
# on local disk.
set -euo pipefail

SIZE_MB=${SIZE_MB:-256}
KIND=${KIND:-bench}
case "$KIND" in bench | json) ;; *) echo "KIND is bench or json, not $KIND" >&2; exit 2 ;; esac
# Point lookups in the workload (fewer over S3, where every cold chunk is a
# request of tens of milliseconds).
if [ "${S3:-0}" = 1 ]; then POINTS=${POINTS:-1000}; else POINTS=${POINTS:-10000}; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/snapback-bench.XXXXXX")
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/snapback"
MNT="$WORK/mnt"
MOUNT_PID=

cleanup() {
    if [ -n "$MOUNT_PID" ]; then
        fusermount3 -u -z "$MNT" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }

for tool in fusermount3 sqlite3 cargo; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

echo "== building (release)"
(cd "$ROOT" && cargo build --release -q -p snapback-cli)

DB="$WORK/src/bench.db"
mkdir -p "$WORK/src" "$MNT"
# ~1 KiB per row: rows for the requested size.
ROWS=$(( SIZE_MB * 1024 * 1024 / 1100 ))
if [ "$KIND" = json ]; then
    # An order document of about 850 bytes of JSON with long repeated text
    # (the file compresses about 14x with zstd -3).
    ITEM="json_object('sku', printf('SKU-%05d', abs(random()) % 500), 'quantity', 1 + abs(random()) % 8, 'price', json_object('amount', abs(random()) % 99999, 'currency', 'EUR'), 'description', 'Standard product description: durable, tested, shipped from the central warehouse.')"
    BODY="json_object('id', x,
      'status', CASE abs(random()) % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'delivered' END,
      'customer', json_object('name', 'Customer ' || (abs(random()) % 5000), 'street', (1 + abs(random()) % 300) || ' Market street', 'city', 'City ' || (abs(random()) % 300), 'country', 'DE'),
      'items', json_array($ITEM, $ITEM, $ITEM),
      'notes', 'Delivery notes: leave the parcel at the front desk; call ahead; fragile items inside. Reference ' || hex(randomblob(6)) || '. Delivery notes: leave the parcel at the front desk; call ahead.')"
else
    BODY="randomblob(1000)"
fi
echo "== generating a ${SIZE_MB} MiB database ($ROWS rows, $KIND)"
sqlite3 "$DB" <<SQL
PRAGMA journal_mode=wal;
PRAGMA page_size=4096;
CREATE TABLE items(id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, val INTEGER NOT NULL, body BLOB NOT NULL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $ROWS)
INSERT INTO items SELECT x, abs(random()) % 1000, abs(random()) % 1000000, $BODY FROM c;
CREATE INDEX items_grp ON items(grp);
SQL
echo "   $(du -m "$DB" | cut -f1) MiB on disk"

REPO="$WORK/repo"
if [ "${S3:-0}" = 1 ]; then
    eval "$(bash "$ROOT/scripts/s3-server.sh" start --watch-pid $$)"
    REPO="s3://$SNAPBACK_TEST_S3_BUCKET/bench-$(basename "$WORK" | tr -dc 'a-zA-Z0-9')"
    export SNAPBACK_S3_FLAGS="--s3-path-style"
fi
SB() { "$BIN" -q ${SNAPBACK_S3_FLAGS:-} --repo "$REPO" "$@"; }
SB init >/dev/null
echo "== snapshot"
t0=$(date +%s.%N)
SB snapshot "$DB" >/dev/null
echo "   $(calc "$(date +%s.%N) - $t0") s"

# The fixed workload, as three SQL scripts.
awk -v rows="$ROWS" -v n="$POINTS" 'BEGIN { srand(42); for (i = 0; i < n; i++) printf "SELECT val FROM items WHERE id = %d;\n", 1 + int(rand() * rows) }' >"$WORK/point.sql"
START=$(( ROWS / 5 ))
echo "SELECT count(*), sum(val) FROM items WHERE id BETWEEN $START AND $(( START + 100000 ));" >"$WORK/range.sql"
echo "SELECT grp, count(*) FROM items GROUP BY grp ORDER BY count(*) DESC LIMIT 3;" >"$WORK/aggregate.sql"

# Runs one workload file against a database; prints seconds.
run() {
    local db=$1 sql=$2 t0 t1
    t0=$(date +%s.%N)
    sqlite3 "$db" <"$sql" >/dev/null
    t1=$(date +%s.%N)
    calc "$t1 - $t0"
}

drop_caches() {
    sync
    if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo yes; else echo no; fi
}

declare -A T
echo "== local disk"
LOCAL_COLD=$(drop_caches)
for w in point range aggregate; do T[local_cold_$w]=$(run "$DB" "$WORK/$w.sql"); done
for w in point range aggregate; do T[local_warm_$w]=$(run "$DB" "$WORK/$w.sql"); done
# The same file in rollback mode, on local disk: warm runs only.
RB="$WORK/src/rollback.db"
cp "$DB" "$RB"
sqlite3 "$RB" 'PRAGMA journal_mode=delete' >/dev/null
for w in point range aggregate; do run "$RB" "$WORK/$w.sql" >/dev/null; done
for w in point range aggregate; do T[local_rb_$w]=$(run "$RB" "$WORK/$w.sql"); done

echo "== mount"
SB mount latest "$MNT" ${MOUNT_FLAGS:-} &
MOUNT_PID=$!
for _ in $(seq 1 200); do
    grep -q " $MNT fuse" /proc/mounts && break
    sleep 0.05
done
grep -q " $MNT fuse" /proc/mounts || { echo "mount failed" >&2; exit 1; }
MDB="$MNT$DB"
for w in point range aggregate; do T[mount_cold_$w]=$(run "$MDB" "$WORK/$w.sql"); done
for w in point range aggregate; do T[mount_warm_$w]=$(run "$MDB" "$WORK/$w.sql"); done

echo
echo "repository: $REPO"
echo "workload: $POINTS point lookups, 100,000-row range scan, GROUP BY over an index"
echo "database: ${SIZE_MB} MiB ($KIND, $(du -m "$DB" | cut -f1) MiB on disk), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), local page cache dropped before the cold run: $LOCAL_COLD"
printf "%-10s %11s %11s %11s %11s %11s %10s %10s %10s\n" workload local-cold local-warm local-rb mount-cold mount-warm cold/local warm/local warm/rb
for w in point range aggregate; do
    lc=${T[local_cold_$w]}; lw=${T[local_warm_$w]}; lr=${T[local_rb_$w]}; mc=${T[mount_cold_$w]}; mw=${T[mount_warm_$w]}
    printf "%-10s %10.3fs %10.3fs %10.3fs %10.3fs %10.3fs %9.2fx %9.2fx %9.2fx\n" "$w" "$lc" "$lw" "$lr" "$mc" "$mw" \
        "$(calc "$mc / $lc")" "$(calc "$mw / $lw")" "$(calc "$mw / $lr")"
done
echo "(cold/local compares the fresh mount with local disk after dropping the page cache when allowed;"
echo " warm/local compares second runs of both; local-rb is the same file in rollback mode on local"
echo " disk, warm, which is how the mount serves it; warm/rb compares the mount with it)"
echo
echo "mount status:"
cat "$MNT/.snapback-status.json"
