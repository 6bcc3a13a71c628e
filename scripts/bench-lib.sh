# Shared setup of the benchmark scripts (sourced, not run): broker and database up, release build,
# a work directory, librdkafka's mock cluster, scratch databases, and reading the services' JSON
# log lines. Everything started here is stopped and dropped on exit.
#
#   . scripts/bench-lib.sh
#   bench_setup producer bench          # packages to build
#   start_mock --topic t:10             # sets $bootstrap
#   bench_db mydb                       # creates it, dropped on exit
#   log_fields "$work/x.log" statistics events cpu_seconds

set -a; eval "$(scripts/infra.sh up)"; set +a
test_url=${COINSTREAM_TEST_MYSQL_URL%/}
stamp=$(date +%s)
work=$(mktemp -d)
mock_pid=
bench_dbs=()

sql() {
  local cli
  cli=$(command -v mariadb || command -v mysql)
  MYSQL_PWD=coinstream_test "$cli" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u coinstream_test -N -e "$1"
}

bench_cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null
  local d
  for d in "${bench_dbs[@]}"; do sql "DROP DATABASE IF EXISTS \`$d\`" || true; done
  [ -n "${KEEP_LOGS:-}" ] && cp -r "$work" "$KEEP_LOGS"
  rm -rf "$work"
}
trap bench_cleanup EXIT

bench_setup() { # packages to build (release)
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  cargo build --release --locked -q "${args[@]}"
}

bench_db() { # name: a scratch database, dropped on exit
  bench_dbs+=("$1")
  sql "CREATE DATABASE \`$1\`"
}

start_mock() { # mock-kafka arguments; sets $bootstrap
  ./target/release/mock-kafka "$@" >"$work/mock.env" &
  mock_pid=$!
  for _ in $(seq 1 50); do grep -q KAFKA_BOOTSTRAP_SERVERS "$work/mock.env" && break; sleep 0.1; done
  bootstrap=$(sed -n 's/^KAFKA_BOOTSTRAP_SERVERS=//p' "$work/mock.env")
  [ -n "$bootstrap" ] || { echo "mock-kafka did not start" >&2; exit 1; }
}

log_fields() { # log message-suffix fields...: the fields of the last JSON line whose message ends so
  python3 - "$@" <<'PY'
import json, sys
log, suffix, fields = sys.argv[1], sys.argv[2], sys.argv[3:]
last = None
for line in open(log):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message", "").endswith(suffix):
        last = e
if last is None:
    sys.exit(f"no '{suffix}' line in {log}")
print(" ".join(str(last.get(k)) for k in fields))
PY
}
