#!/usr/bin/env bash
# Benchmark: what encryption at rest costs. The same seeded database
# (SIZE_MIB, default 256) is snapshotted into an unencrypted and an
# encrypted snapback repository, and into restic (which always encrypts),
# in the same run: full snapshot, incremental after 1% of rows changed,
# full restore, and bytes stored. Best of RUNS (default 3) per figure.
#
#   scripts/bench-encryption.sh [SIZE_MIB] [RUNS]
#
# Installs restic (Debian package) if missing; builds the release binaries.
# Prints a Markdown table; the figures are recorded in docs/benchmarks.md
# ("Encryption").
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-256}"
RUNS="${2:-3}"

need=()
command -v restic >/dev/null || need+=(restic)
command -v bc >/dev/null || need+=(bc)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "== building the release binaries"
cargo build --release -p snapback-cli -p snapback-devtools --quiet
BIN="$PWD/target/release/snapback"
DEV="$PWD/target/release/snapback-devtools"

DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
export SNAPBACK_PASSWORD="bench passphrase, not a secret"
export RESTIC_PASSWORD="$SNAPBACK_PASSWORD"

now() { date +%s.%N; }
# best TIME of RUNS runs of "$@" (each run after the setup function $1)
best() {
  local setup=$1; shift
  local b=""
  for _ in $(seq "$RUNS"); do
    $setup
    local t0 t1 d
    t0=$(now); "$@" >/dev/null; t1=$(now)
    d=$(echo "$t1 - $t0" | bc)
    if [ -z "$b" ] || [ "$(echo "$d < $b" | bc)" = 1 ]; then b=$d; fi
  done
  printf '%.2f' "$b"
}

echo "== making a ${SIZE} MiB database"
"$DEV" gen "$DIR/base.db" --size-mib "$SIZE" --seed 7 >/dev/null
cp "$DIR/base.db" "$DIR/changed.db"
"$DEV" update "$DIR/changed.db" --fraction 0.01 --seed 8 >/dev/null
sqlite3 "$DIR/base.db" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
sqlite3 "$DIR/changed.db" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null

declare -A FULL INC REST STORED
for kind in plain encrypted restic; do
  R="$DIR/repo-$kind"
  fresh() {
    rm -rf "$R" "$DIR/live.db" "$DIR/out"
    cp "$DIR/base.db" "$DIR/live.db"
    case $kind in
      plain) "$BIN" --repo "$R" init -q ;;
      encrypted) "$BIN" --repo "$R" init -q --encrypt ;;
      restic) restic -q -r "$R" init >/dev/null ;;
    esac
  }
  snap() {
    case $kind in
      restic) restic -q -r "$R" backup --host bench "$DIR/live.db" ;;
      *) "$BIN" -q --repo "$R" snapshot "$DIR/live.db" ;;
    esac
  }
  one_full() { fresh; }
  echo "== $kind: full"
  FULL[$kind]=$(best one_full snap)
  one_inc() { fresh; snap >/dev/null; cp "$DIR/changed.db" "$DIR/live.db"; }
  echo "== $kind: incremental (1%)"
  INC[$kind]=$(best one_inc snap)
  STORED[$kind]=$(du -sb "$R" | cut -f1)
  clear_out() { rm -rf "$DIR/out"; }
  restore() {
    case $kind in
      restic) restic -q -r "$R" restore latest --target "$DIR/out" ;;
      *) "$BIN" -q --repo "$R" restore latest "$DIR/out" ;;
    esac
  }
  echo "== $kind: restore"
  REST[$kind]=$(best clear_out restore)
done

echo
echo "${SIZE} MiB database, best of $RUNS, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
echo
echo "| | full snapshot (s) | incremental after 1% (s) | restore (s) | stored after both (MiB) |"
echo "|---|---|---|---|---|"
for kind in plain encrypted restic; do
  printf '| %s | %s | %s | %s | %.1f |\n' "$kind" "${FULL[$kind]}" "${INC[$kind]}" "${REST[$kind]}" \
    "$(echo "${STORED[$kind]} / 1048576" | bc -l)"
done
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo
echo "encrypted / plain: full $(ratio "${FULL[encrypted]}" "${FULL[plain]}"), incremental $(ratio "${INC[encrypted]}" "${INC[plain]}"), restore $(ratio "${REST[encrypted]}" "${REST[plain]}"), stored $(ratio "${STORED[encrypted]}" "${STORED[plain]}")"
echo "encrypted / restic: full $(ratio "${FULL[encrypted]}" "${FULL[restic]}"), incremental $(ratio "${INC[encrypted]}" "${INC[restic]}"), restore $(ratio "${REST[encrypted]}" "${REST[restic]}"), stored $(ratio "${STORED[encrypted]}" "${STORED[restic]}")"
