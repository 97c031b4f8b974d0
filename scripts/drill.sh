#!/usr/bin/env bash
# A full recovery drill on a local repository, end to end, timed step by step:
# the incident of a migration that overwrote deploys.status in 5% of rows
# while the application kept writing. Rehearse it before you need it.
#
#   scripts/drill.sh [ROWS] [SIZE_MIB]   (default 20000 rows, no padding;
#                                         work dir ./drill-out, removed after
#                                         unless DRILL_KEEP=1)
# SIZE_MIB pads the database with a table the incident never touches
# (fixtures/make-drill.py filler), e.g. `scripts/drill.sh 20000 4096` for the
# 4 GiB drill. Each step's wall time and machine time (user + sys of every
# process it ran) is printed. No step restores the whole database: the
# drill fails if any file of half the database's size or more, other than
# the live database, was written under the work dir (temporary files and
# caches go there too).
# Needs python3 (the fixture) and, for the mount step, fuse3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-20000}
SIZE_MIB=${2:-0}
W=${DRILL_DIR:-$PWD/drill-out}
cargo build --release -q -p snapback-cli
SB=${CARGO_TARGET_DIR:-$PWD/target}/release/snapback
rm -rf "$W"; mkdir -p "$W/tmp"
[ "${DRILL_KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT
export SNAPBACK_REPO=$W/repo TMPDIR=$W/tmp
export XDG_CACHE_HOME=$W/cache XDG_STATE_HOME=$W/state XDG_CONFIG_HOME=$W/config
DB=$W/deploys.db

declare -a STEPS TIMES CPUS
ms() { date +%s%3N; }
step() { # step NAME COMMAND...   (exit 3, "differences found", counts as done)
  local name=$1; shift
  echo "== $name"
  local t0 rc=0 TIMEFORMAT='%U %S'; t0=$(ms)
  # bash's `time` of a compound command: user and sys of every child.
  { time { "$@" 2>&4 || rc=$?; } ; } 4>&2 2>"$W/step-time"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then echo "step failed with exit $rc: $name"; exit "$rc"; fi
  STEPS+=("$name"); TIMES+=($(( $(ms) - t0 )))
  CPUS+=("$(awk '{printf "%d", ($1 + $2) * 1000}' "$W/step-time")")
}

echo "== setting the scene: snapshots before the incident, the bad migration, new activity"
"$SB" -q init
python3 fixtures/make-drill.py init "$DB" "$ROWS" >/dev/null
[ "$SIZE_MIB" -gt 0 ] && python3 fixtures/make-drill.py filler "$DB" "$SIZE_MIB" >/dev/null
# The application: a connection held open for the whole drill, as a running
# service holds one, so the WAL and its index stay (when the last connection
# closes, SQLite checkpoints and deletes them, and no capture can tell which
# pages changed: every snapshot would read the whole database).
python3 -c 'import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1]); c.execute("SELECT count(*) FROM sqlite_schema").fetchall()
time.sleep(3600)' "$DB" &
APP=$!
trap 'kill "$APP" 2>/dev/null; [ "${DRILL_KEEP:-0}" = 1 ] || rm -rf "$W"' EXIT
DB_BYTES=$(stat -c %s "$DB")
echo "   the database: $DB_BYTES bytes"
GOOD=$("$SB" snapshot "$DB" --tag before-incident)
sleep 1
python3 fixtures/make-drill.py damage "$DB" >/dev/null
python3 fixtures/make-drill.py after "$DB" >/dev/null
"$SB" snapshot "$DB" --tag after-incident >/dev/null
GOOD_TIME=$("$SB" --json snapshots --tag before-incident | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["time"])')

# The operator's steps, as in docs/runbook.md.
step "1. find the snapshot for the time before the incident" \
  "$SB" snapshots --path "$DB"
step "2. check the repository" "$SB" check
if command -v fusermount3 >/dev/null && [ -e /dev/fuse ]; then
  MP=$W/mnt; mkdir -p "$MP"
  mount_query() {
    "$SB" mount "@$GOOD_TIME" "$MP" & local pid=$!
    for _ in $(seq 1 100); do [ -e "$MP/.snapback-manifest.json" ] && break; sleep 0.1; done
    local f; f=$(find "$MP" -name deploys.db | head -1)
    sqlite3 "$f" "SELECT status, count(*) FROM deploys GROUP BY status"
    "$SB" umount "$MP"; wait $pid || true
  }
  step "3. mount it and query it with sqlite3" mount_query
fi
step "4. diff the snapshot against live" \
  "$SB" diff "@$GOOD_TIME" "$DB" --table deploys --columns status --json >"$W/diff.jsonl"
echo "   $(wc -l < "$W/diff.jsonl") row differences in deploys.status"
sed -e "s|^snapshot = .*|snapshot = \"@$GOOD_TIME\"|" -e "s|^live = .*|live = \"$DB\"|" \
  docs/examples/deploys-bad-migration.toml > "$W/repair.toml"
step "5. repair: dry run" "$SB" repair "$W/repair.toml"
step "6. repair: apply" "$SB" repair "$W/repair.toml" --apply --yes
step "7. verify: the selection now matches" "$SB" repair "$W/repair.toml"
REPAIR_ID=$("$SB" --json audit | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["entry"]["repair_id"])')
step "8. audit trail verifies" "$SB" audit verify
step "9. undo the repair (rehearsal)" "$SB" undo "$REPAIR_ID" --yes
step "10. redo it" "$SB" repair "$W/repair.toml" --apply --yes
step "11. the repaired table passes integrity_check" \
  sqlite3 "$DB" "PRAGMA integrity_check(deploys)"

# No full restore anywhere: no file of half the database's size or more
# besides the live database itself.
BIG=$(find "$W" -type f -size +$((DB_BYTES / 2048))k ! -path "$DB" ! -path "$DB-wal" ! -path "$W/repo/*" -printf '%p %s\n')
if [ -n "$BIG" ]; then echo "a file of the database's size was written (a full restore?):"; echo "$BIG"; exit 1; fi

echo
echo "drill finished $(date -u +%Y-%m-%dT%H:%M:%SZ), $ROWS rows, $DB_BYTES bytes, good snapshot $GOOD"
printf "%-55s %9s %9s\n" step "wall ms" "cpu ms"
total=0; cpu=0
for i in "${!STEPS[@]}"; do
  printf "%-55s %9s %9s\n" "${STEPS[$i]}" "${TIMES[$i]}" "${CPUS[$i]}"
  total=$((total + TIMES[i])); cpu=$((cpu + CPUS[i]))
done
printf "%-55s %9s %9s\n" "total" "$total" "$cpu"
