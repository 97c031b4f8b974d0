#!/usr/bin/env bash
# The long crash-consistency loops: SIGKILL at random points in snapshot,
# prune, repair --apply, undo, restore --in-place --apply and watch (under a
# writer that keeps committing), and SIGSTOP of a snapshot while a prune
# with a shifted clock runs, ITERATIONS rounds each (default 200), with
# every invariant of tests/e2e/crash.rs checked after every kill.
#
#   scripts/crash.sh [ITERATIONS]
#
# Environment: SNAPBACK_CRASH_SECONDS (time bound per operation, default
# 30 s per iteration), SNAPBACK_CRASH_SEED (replay a run; each test prints
# its seed), SNAPBACK_CRASH_ENCRYPTED=1 (every loop on an encrypted
# repository). One JSON line per operation goes to target/crash-report.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
SECS=${SNAPBACK_CRASH_SECONDS:-$((N * 30))}
REPORT="$PWD/target/crash-report.jsonl"
cargo build -p snapback-cli --quiet
mkdir -p target
rm -f "$REPORT"
echo "== $N kills per operation, at most $SECS s per operation"
SNAPBACK_CRASH_ITERATIONS=$N SNAPBACK_CRASH_SECONDS=$SECS SNAPBACK_CRASH_REPORT="$REPORT" \
  cargo test --test e2e crash:: -- --test-threads=1 --nocapture 2>&1 |
  grep -E "crash harness|^test |test result|panicked|assert" || true
echo "== results ($REPORT)"
cat "$REPORT"
# Fail when an operation did not report (its test failed).
[ "$(wc -l < "$REPORT")" -eq 7 ]
