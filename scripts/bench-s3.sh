#!/usr/bin/env bash
# Snapshot and restore throughput to the local S3 server against the local
# directory backend, and the requests an incremental snapshot costs.
#   scripts/bench-s3.sh [SIZE_MIB]     (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-256}
OUT=$PWD/bench-out/s3; rm -rf "$OUT"; mkdir -p "$OUT"
cargo build --release -q -p snapback-cli -p snapback-devtools
SB=$PWD/target/release/snapback; DT=$PWD/target/release/snapback-devtools
eval "$(scripts/s3-server.sh start)"
trap 'scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
"$DT" gen "$OUT/app.db" --size-mib "$SIZE" --seed 5 >/dev/null
ms() { date +%s%3N; }
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  size: $SIZE MiB  load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s %10s %10s %12s %10s %10s\n" backend full_ms full_MiB/s incr_requests incr_puts restore_ms
for backend in local s3; do
  if [ $backend = local ]; then REPO=(--repo "$OUT/repo"); else REPO=(--repo "s3://$SNAPBACK_TEST_S3_BUCKET/bench-$$" --s3-path-style); fi
  cp "$OUT/app.db" "$OUT/work.db"
  "$SB" "${REPO[@]}" -q init
  t0=$(ms); "$SB" "${REPO[@]}" snapshot "$OUT/work.db" >/dev/null; t1=$(ms)
  "$DT" update "$OUT/work.db" --fraction 0.001 --seed 9 >/dev/null
  "$SB" "${REPO[@]}" --json snapshot "$OUT/work.db" > "$OUT/inc-$backend.json"
  t2=$(ms); "$SB" "${REPO[@]}" -q restore latest "$OUT/restored-$backend.db"; t3=$(ms)
  req=$(python3 -c "import json; r=json.load(open('$OUT/inc-$backend.json'))['requests']; print(sum(r[k] for k in ('put','get','head','list','delete')), r['put'])")
  printf "%-8s %10s %10s %12s %10s %10s\n" $backend $((t1-t0)) $(( SIZE*1000/(t1-t0+1) )) ${req% *} ${req#* } $((t3-t2))
  rm -f "$OUT/work.db"* "$OUT/restored-$backend.db"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
