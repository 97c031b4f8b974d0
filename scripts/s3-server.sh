#!/usr/bin/env bash
# A local S3 server (s3s-fs) on 127.0.0.1 for tests.
#
#   eval "$(scripts/s3-server.sh start)"   # install if missing, start, export settings
#   cargo test -p snapback-s3
#   scripts/s3-server.sh stop              # stop it (uses $SNAPBACK_TEST_S3_PID)
#
# `start` prints `export` lines on stdout (everything else goes to stderr):
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
# AWS_EC2_METADATA_DISABLED, SNAPBACK_TEST_S3_BUCKET, SNAPBACK_TEST_S3_PID.
# The server listens on a free port, with a fresh data directory, keys of its
# own, and one bucket. s3s-fs keeps a bucket as a directory under its root.
#
# Options of `start`:
#   --watch-pid PID   stop the server by itself once process PID has exited
#                     (the tests use this when they start a server themselves)
#
# `stop [PID]` stops the server with that pid, or $SNAPBACK_TEST_S3_PID, or
# the one started last, and removes its data directory.
set -euo pipefail

S3S_VERSION=0.14.1
BUCKET=${SNAPBACK_TEST_S3_BUCKET:-snapback-test}
STATE_DIR=${SNAPBACK_S3_STATE_DIR:-${TMPDIR:-/tmp}/snapback-s3-server}

log() { echo "s3-server: $*" >&2; }
die() { log "$*"; exit 1; }

find_s3s_fs() {
  if command -v s3s-fs >/dev/null 2>&1; then
    command -v s3s-fs
  elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
    echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
  else
    return 1
  fi
}

ensure_s3s_fs() {
  local bin
  if bin=$(find_s3s_fs); then
    echo "$bin"
    return
  fi
  log "installing s3s-fs $S3S_VERSION with cargo (a few minutes, once)"
  # Serialize concurrent installs (a CI script and a test starting at once).
  mkdir -p "$STATE_DIR"
  (
    flock 9
    find_s3s_fs >/dev/null 2>&1 ||
      cargo install "s3s-fs@$S3S_VERSION" --locked --features binary >&2
  ) 9>"$STATE_DIR/install.lock"
  find_s3s_fs || die "s3s-fs is still missing after cargo install"
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

start() {
  local watch_pid=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --watch-pid) watch_pid=${2:?--watch-pid needs a pid}; shift 2 ;;
      *) die "unknown option of start: $1" ;;
    esac
  done
  local bin port data ak sk pid
  bin=$(ensure_s3s_fs)
  mkdir -p "$STATE_DIR"
  data=$(mktemp -d "$STATE_DIR/data.XXXXXX")
  mkdir "$data/$BUCKET"
  ak="snapback-$(random_hex 6)"
  sk="$(random_hex 20)"
  # The port may be taken between the probe and the bind: try a few times.
  for try in 1 2 3 4 5; do
    port=$(free_port)
    setsid "$bin" --host 127.0.0.1 --port "$port" --access-key "$ak" --secret-key "$sk" "$data" \
      >"$data.log" 2>&1 </dev/null &
    pid=$!
    local up=""
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        up=yes
        break
      fi
      sleep 0.1
    done
    [[ -n "$up" ]] && break
    kill "$pid" 2>/dev/null || true
    log "s3s-fs did not come up on port $port (try $try): $(tail -n 3 "$data.log" 2>/dev/null)"
    pid=""
  done
  [[ -n "$pid" ]] || die "could not start s3s-fs; log: $data.log"
  printf 'PID=%s\nDATA=%s\nPORT=%s\n' "$pid" "$data" "$port" >"$STATE_DIR/$pid.env"
  echo "$pid" >"$STATE_DIR/last"
  if [[ -n "$watch_pid" ]]; then
    # Bounded lifetime: the server goes when the process that asked for it
    # goes. `setsid` keeps the watcher out of the caller's process group.
    setsid bash -c '
      while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
      kill "$2" 2>/dev/null
      rm -rf "$3" "$3.log" "$4"
    ' _ "$watch_pid" "$pid" "$data" "$STATE_DIR/$pid.env" >/dev/null 2>&1 </dev/null &
  fi
  log "s3s-fs (pid $pid) on http://127.0.0.1:$port, data in $data, bucket $BUCKET"
  cat <<EOF
export AWS_ACCESS_KEY_ID=$ak
export AWS_SECRET_ACCESS_KEY=$sk
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_EC2_METADATA_DISABLED=true
export SNAPBACK_TEST_S3_BUCKET=$BUCKET
export SNAPBACK_TEST_S3_PID=$pid
EOF
}

stop() {
  local pid=${1:-${SNAPBACK_TEST_S3_PID:-}}
  if [[ -z "$pid" && -f "$STATE_DIR/last" ]]; then
    pid=$(cat "$STATE_DIR/last")
  fi
  [[ -n "$pid" ]] || die "no server to stop (no pid given, no \$SNAPBACK_TEST_S3_PID)"
  local env="$STATE_DIR/$pid.env" data=""
  if [[ -f "$env" ]]; then
    data=$(sed -n 's/^DATA=//p' "$env")
  fi
  # Only ever signal a process that is our s3s-fs.
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q s3s-fs; then
    kill "$pid"
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped s3s-fs (pid $pid)"
  else
    log "no s3s-fs with pid $pid is running"
  fi
  if [[ -n "$data" && "$data" == "$STATE_DIR"/data.* ]]; then
    rm -rf "$data" "$data.log"
  fi
  rm -f "$env"
  if [[ -f "$STATE_DIR/last" && "$(cat "$STATE_DIR/last")" == "$pid" ]]; then
    rm -f "$STATE_DIR/last"
  fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [--watch-pid PID] | stop [PID]" >&2; exit 2 ;;
esac
