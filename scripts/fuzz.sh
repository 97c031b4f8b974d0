#!/usr/bin/env bash
# Fuzzes every parser of repository objects (fuzz/fuzz_targets/*) for
# SECONDS each (default 60) with cargo-fuzz (libFuzzer + AddressSanitizer,
# nightly toolchain). Installs cargo-fuzz if it is missing.
#
#   scripts/fuzz.sh [SECONDS]
#
# A crash, leak, out-of-memory or timeout input is copied to
# fixtures/fuzz-regressions/<target>/, where the normal test suite replays
# it (tests/e2e/fuzz_regressions.rs): fix the parser, then commit both.
# The corpus grows in fuzz/corpus/<target>/ (not committed; the seeds are
# in fuzz/seeds/<target>/). Logs: fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
ROOT=$PWD

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing a nightly toolchain (cargo-fuzz needs one)"
  rustup toolchain install nightly --profile minimal ||
    { echo "no nightly toolchain can be installed here; cargo-fuzz cannot run" >&2; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

mkdir -p fuzz/logs
echo "== building the fuzz targets"
(cd fuzz && cargo +nightly fuzz build -O)
failed=()
printf '%-16s %12s %8s  %s\n' target executions seconds result
for t in $(cd fuzz && cargo +nightly fuzz list); do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  result=ok
  (cd fuzz && cargo +nightly fuzz run -O "$t" "$ROOT/fuzz/corpus/$t" "$ROOT/fuzz/seeds/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) \
      > "fuzz/logs/$t.log" 2>&1 || result=FAILED
  if [ "$(ls "fuzz/artifacts/$t" | wc -l)" -gt "$before" ] || [ "$result" = FAILED ]; then
    result=FAILED
    failed+=("$t")
    mkdir -p "fixtures/fuzz-regressions/$t"
    cp -n fuzz/artifacts/"$t"/* "fixtures/fuzz-regressions/$t/" 2>/dev/null || true
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || echo 0)
  printf '%-16s %12s %8s  %s\n' "$t" "$execs" "$SECS" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashing inputs were copied to fixtures/fuzz-regressions/ for: ${failed[*]} (see fuzz/logs/)" >&2
  exit 1
fi
