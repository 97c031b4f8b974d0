#!/usr/bin/env bash
# Measures what the SQLite chunk size costs: for each pages-per-chunk
# setting, the bytes stored by a full snapshot and by incremental snapshots
# after 0.1% and 1% of the deploys rows change (each update dirties a table
# page, index pages and log pages, and inserts two events), split into pack
# data and metadata; plus snapshot and restore throughput, and sha256sum over
# the same file as the floor for a tool that reads it.
#
#   scripts/bench-chunking.sh [SIZE_MIB] [PPC...]     (default: 1024; 1 2 4 16)
# Output: a table on stdout, and the raw JSON lines in bench-out/chunking/.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}; shift || true
PPCS=${*:-1 2 4 16}
OUT=$PWD/bench-out/chunking
mkdir -p "$OUT"
cargo build --release -q -p snapback-cli -p snapback-devtools
SB=$PWD/target/release/snapback
DT=$PWD/target/release/snapback-devtools
BASE=$OUT/base-$SIZE.db
[ -f "$BASE" ] || "$DT" gen "$BASE" --size-mib "$SIZE" --seed 42 >/dev/null
ms() { date +%s%3N; }
t0=$(ms); sha256sum "$BASE" >/dev/null; t1=$(ms)
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  size: $SIZE MiB  sha256sum: $((t1-t0)) ms ($(( SIZE*1000/(t1-t0+1) )) MiB/s)"
printf "%-5s %12s %10s %12s %12s %10s %12s %12s %10s %10s\n" ppc full_MiB full_ms "0.1%_bytes" "0.1%_new" "0.1%_ms" "1%_bytes" "1%_new" "1%_ms" restore_ms
for ppc in $PPCS; do
  W=$OUT/ppc$ppc; rm -rf "$W"; mkdir -p "$W"
  cp "$BASE" "$W/app.db"
  "$SB" --repo "$W/repo" init --sqlite-pages-per-chunk "$ppc" -q
  t0=$(ms); "$SB" --repo "$W/repo" --json snapshot "$W/app.db" > "$W/full.json"; t1=$(ms)
  full_ms=$((t1-t0))
  "$DT" update "$W/app.db" --fraction 0.001 --seed 7 >/dev/null
  t0=$(ms); "$SB" --repo "$W/repo" --json snapshot "$W/app.db" > "$W/inc01.json"; t1=$(ms)
  inc01_ms=$((t1-t0))
  "$DT" update "$W/app.db" --fraction 0.01 --seed 8 >/dev/null
  t0=$(ms); "$SB" --repo "$W/repo" --json snapshot "$W/app.db" > "$W/inc1.json"; t1=$(ms)
  inc1_ms=$((t1-t0))
  t0=$(ms); "$SB" --repo "$W/repo" -q restore latest "$W/restored.db"; t1=$(ms)
  restore_ms=$((t1-t0))
  j() { python3 -c "import json,sys; print(json.load(open('$1'))['$2'])"; }
  printf "%-5s %12s %10s %12s %12s %10s %12s %12s %10s %10s\n" "$ppc" \
    "$(( $(j "$W/full.json" bytes_added) >> 20 ))" "$full_ms" \
    "$(j "$W/inc01.json" bytes_added)" "$(j "$W/inc01.json" new_chunks)" "$inc01_ms" \
    "$(j "$W/inc1.json" bytes_added)" "$(j "$W/inc1.json" new_chunks)" "$inc1_ms" "$restore_ms"
  rm -rf "$W/restored.db" "$W/app.db"*
done
