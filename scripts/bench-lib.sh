# Shared by the benchmark scripts (sourced, never run): the tools they
# install, the best-of-3 timer, and the table `t` that bench-diff.sh and
# bench-forensics.sh diff.

# bench_need CMD=PACKAGE...: installs (apt-get) the packages of the
# commands that are missing.
bench_need() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}" >&2
    local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# best CMD...: the best wall time of $BEST_OF (default 3) runs of CMD, in
# seconds; the output of the last run is in $DIR/out, its stderr in
# $DIR/err.
best() {
  local b=""
  for _ in $(seq "${BEST_OF:-3}"); do
    local s e t
    s=$(date +%s.%N); "$@" >"$DIR/out" 2>"$DIR/err" || true; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}

# t_table_sql ROWS: SQL that creates the table `t` of ROWS rows.
t_table_sql() {
  cat <<SQL
CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL, d BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
INSERT INTO t SELECT i, i * 7 % 1000, 'name-' || i || '-' || hex(i * 2654435761 % 4294967296), i / 3.0, zeroblob(16) FROM n;
SQL
}

# t_changes_sql ROWS: SQL that changes 1% of t's rows (updates, deletes,
# inserts).
t_changes_sql() {
  cat <<SQL
UPDATE t SET a = a + 1 WHERE id % 300 = 0;
UPDATE t SET b = b || '!' WHERE id % 300 = 100;
DELETE FROM t WHERE id % 300 = 200;
INSERT INTO t SELECT id + $1, a, b, c, d FROM t WHERE id % 1000 = 7;
SQL
}
