#!/usr/bin/env bash
# The benchmark suite: snapback against restic, borg, sqldiff and sha256sum,
# in one run (issue 8). Results: docs/benchmarks.md, docs/benchmarks.png, raw
# JSON in bench-out/bench/.
#
#   scripts/bench.sh [SIZES...] [--runs N] [--no-s3] [--no-mount] [--no-bench-diff]
#       SIZES in MiB, default 256 1024 (4096 on request: needs ~12 GiB free and
#       about 3x the time). --runs: repetitions per size (default 3, medians).
#
# Environment:
#   BENCH_SOURCE=head      (default) build the committed HEAD, exported to
#                          bench-out/src/<commit>, so that uncommitted work of
#                          others in the tree is neither measured nor breaks the build
#   BENCH_SOURCE=worktree  build the working tree as it is ($CARGO_TARGET_DIR/release,
#                          target/release without it)
#   BENCH_NO_DOC=1         print the tables, leave docs/ alone
#
# Installs what is missing (restic, borgbackup, sqlite3, sqlite3-tools for
# sqldiff, time, fuse3; matplotlib with pip for the chart). Work files go to
# bench-out/ (git-ignored); the generated databases are kept in bench-out/db.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_setup() {
  local need=()
  command -v sqlite3 >/dev/null || need+=(sqlite3)
  # BENCH_PEERS=0: a benchmark of snapback alone (bench-capture.sh).
  if [ "${BENCH_PEERS:-1}" != 0 ]; then
    command -v restic >/dev/null || need+=(restic)
    command -v borg >/dev/null || need+=(borgbackup)
    command -v sqldiff >/dev/null || need+=(sqlite3-tools)
    [ -x /usr/bin/time ] || need+=(time)
    command -v fusermount3 >/dev/null || need+=(fuse3)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ "${BENCH_PEERS:-1}" != 0 ]; then
    python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib >&2 ||
      echo "!! matplotlib could not be installed: no chart" >&2
  fi

  case "${BENCH_SOURCE:-head}" in
    head)
      local c root=$PWD; c=$(git rev-parse --short HEAD)
      local src=$PWD/bench-out/src/$c
      if [ ! -f "$src/Cargo.toml" ]; then
        rm -rf "$src"; mkdir -p "$src"
        git archive HEAD | tar -x -C "$src"
      fi
      echo "== building HEAD ($c) in release mode" >&2
      (cd "$src" && CARGO_TARGET_DIR="$root/bench-out/target" cargo build --release -q -p snapback-cli -p snapback-devtools)
      export SNAPBACK_BIN_DIR=$PWD/bench-out/target/release
      export SNAPBACK_BENCH_SOURCE="HEAD $c ($(git log -1 --format=%cs $c)), exported with git archive"
      ;;
    worktree)
      echo "== building the working tree in release mode" >&2
      cargo build --release -q -p snapback-cli -p snapback-devtools
      export SNAPBACK_BIN_DIR=${CARGO_TARGET_DIR:-$PWD/target}/release
      export SNAPBACK_BENCH_SOURCE="working tree at $(git rev-parse --short HEAD)$(git diff --quiet || echo ', with uncommitted changes')"
      ;;
    *) echo "BENCH_SOURCE must be head or worktree" >&2; exit 2 ;;
  esac
  mkdir -p bench-out
  echo "== disk: $(df -h --output=avail . | tail -1) free; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  bench_setup
  exec python3 scripts/bench.py suite "$@"
fi
