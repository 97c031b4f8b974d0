#!/usr/bin/env bash
# Runs the whole test suite, after `cargo fmt --check` and `cargo clippy
# -D warnings`. Installs what the tests need first (Debian packages, the
# local S3 server), so it works on a fresh machine with only rustup (the
# toolchain of rust-toolchain.toml, rustfmt and clippy come with it).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v sqlite3 >/dev/null || need_pkgs+=(sqlite3)
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
dpkg -s libfuse3-dev >/dev/null 2>&1 || need_pkgs+=(libfuse3-dev)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v faketime >/dev/null || need_pkgs+=(faketime)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# rust-toolchain.toml pins the toolchain with rustfmt and clippy; rustup
# installs it (components included) on a machine that does not have it.
echo "== format (cargo fmt --check)"
cargo fmt --all --check
echo "== lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== building"
cargo build --workspace --bins --lib --quiet  # --lib: the loadable extension libsnapback_vfs.so too

S3_STARTED=0
if [ -x scripts/s3-server.sh ] && [ -z "${SNAPBACK_TEST_S3_BUCKET:-}" ]; then
  echo "== starting the local S3 server"
  eval "$(scripts/s3-server.sh start)"
  S3_STARTED=1
fi
cleanup() { if [ "$S3_STARTED" = 1 ]; then scripts/s3-server.sh stop || true; fi; }
trap cleanup EXIT

echo "== tests"
LOG=$(mktemp)
set +e
cargo test --workspace --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (every test binary prints its own).
passed=$(grep -E '^test result:' "$LOG" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$LOG" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
rm -f "$LOG"
echo "summary: ${passed:-0} passed, ${failed:-0} failed"
if [ "${passed:-0}" -eq 0 ]; then echo "no test ran"; exit 1; fi
exit "$status"
