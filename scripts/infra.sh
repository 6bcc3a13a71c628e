#!/usr/bin/env bash
# Brings up what coinstream needs on a machine without Docker, and prints the environment to use.
#
#   scripts/infra.sh up       install the tools the build and tests need (Debian packages), start (or
#                             reuse) a Kafka-protocol broker and a MySQL-compatible server, create
#                             the application database and users, print KEY=value lines
#   scripts/infra.sh db       the build's tools and the database only (the demo, on an embedded
#                             broker: no broker, no browser or Prometheus for the tests)
#   scripts/infra.sh env      print the KEY=value lines only
#   scripts/infra.sh status   say what is running
#   scripts/infra.sh down     stop what `up` started (by PID), nothing else
#
# Use it as:  set -a; eval "$(scripts/infra.sh up)"; set +a
# Progress goes to stderr; stdout carries only the KEY=value lines.
#
# The broker is Tansu (a Kafka-compatible broker in Rust, SQLite storage; see README), built once per
# machine into a cache outside the clone. Overridable settings (defaults in brackets):
#   COINSTREAM_CACHE_DIR [~/.cache/coinstream]   tools and broker data
#   COINSTREAM_KAFKA_PORT [9092]
#   COINSTREAM_MYSQL_HOST [127.0.0.1], COINSTREAM_MYSQL_PORT [3306]
#   COINSTREAM_MYSQL_ADMIN_USER [root], COINSTREAM_MYSQL_ADMIN_PASSWORD []   used only here
#   COINSTREAM_APP_PASSWORD [coinstream]   password of the application user `coinstream`
set -euo pipefail

CACHE_DIR=${COINSTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/coinstream}
TOOLS_DIR=$CACHE_DIR/tools
STATE_DIR=$CACHE_DIR/state
TANSU_VERSION=0.6.0
TANSU=$TOOLS_DIR/bin/tansu
KAFKA_PORT=${COINSTREAM_KAFKA_PORT:-9092}
KAFKA_ADDR=127.0.0.1:$KAFKA_PORT
DB_HOST=${COINSTREAM_MYSQL_HOST:-127.0.0.1}
DB_PORT=${COINSTREAM_MYSQL_PORT:-3306}
ADMIN_USER=${COINSTREAM_MYSQL_ADMIN_USER:-root}
ADMIN_PASSWORD=${COINSTREAM_MYSQL_ADMIN_PASSWORD:-}
APP_DB=coinstream
APP_USER=coinstream
APP_PASSWORD=${COINSTREAM_APP_PASSWORD:-coinstream}
TEST_USER=coinstream_test
TEST_PASSWORD=coinstream_test
READER_USER=coinstream_reader
READER_PASSWORD=coinstream_reader

say() { printf 'infra: %s\n' "$*" >&2; }
die() { printf 'infra: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pid_alive() { # pidfile name
  local f=$STATE_DIR/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# ---------------------------------------------------------------- broker
build_tansu() {
  [ -x "$TANSU" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build the test broker (install Rust with rustup)"
  say "building the test broker Tansu $TANSU_VERSION into $TOOLS_DIR (once per machine, about 10 minutes)"
  mkdir -p "$TOOLS_DIR"
  cargo install "tansu@$TANSU_VERSION" --locked --no-default-features --features libsql \
    --root "$TOOLS_DIR" >"$CACHE_DIR/tansu-build.log" 2>&1 \
    || { tail -30 "$CACHE_DIR/tansu-build.log" >&2; die "building Tansu failed (log: $CACHE_DIR/tansu-build.log)"; }
}

broker_up() {
  if pid_alive tansu tansu && grep -q 'panicked' "$STATE_DIR/tansu.log" 2>/dev/null; then
    say "broker: Tansu hit an internal panic earlier (see $STATE_DIR/tansu.log); restarting it"
    down_broker
  fi
  if pid_alive tansu tansu; then
    say "broker: Tansu already running (pid $(cat "$STATE_DIR/tansu.pid")) at $KAFKA_ADDR"
    return 0
  fi
  if port_open 127.0.0.1 "$KAFKA_PORT"; then
    say "broker: something not started by this script already listens on $KAFKA_ADDR; using it"
    return 0
  fi
  build_tansu
  start_tansu && return 0
  # Tansu's data is test data only: when it will not start on what an earlier run left (a store
  # from another version, a half-written file), keep that aside and start on a fresh one, once.
  local aside="$STATE_DIR/tansu.failed.$(date +%s)"
  say "broker: Tansu would not start on its data; moving it to $aside and starting on a fresh store"
  mv "$STATE_DIR/tansu" "$aside"
  cp "$STATE_DIR/tansu.log" "$aside/tansu.log" 2>/dev/null || true
  start_tansu || die "Tansu exited at start-up on a fresh store too (log: $STATE_DIR/tansu.log)"
}

# Starts Tansu in $STATE_DIR/tansu; 0 once it listens, 1 (its log shown) when it exits first.
start_tansu() {
  mkdir -p "$STATE_DIR/tansu"
  say "broker: starting Tansu at $KAFKA_ADDR (data in $STATE_DIR/tansu)"
  (
    cd "$STATE_DIR/tansu"
    exec setsid "$TANSU" broker \
      --listener-url "tcp://$KAFKA_ADDR" --advertised-listener-url "tcp://$KAFKA_ADDR" \
      --storage-engine "sqlite://tansu.db" </dev/null >"$STATE_DIR/tansu.log" 2>&1
  ) &
  local pid=$!
  echo "$pid" >"$STATE_DIR/tansu.pid"
  for _ in $(seq 1 120); do
    if port_open 127.0.0.1 "$KAFKA_PORT"; then
      say "broker: ready"
      return 0
    fi
    # The process itself, not its command line: until the exec above it is still this shell.
    if ! kill -0 "$pid" 2>/dev/null; then
      say "broker: Tansu exited at start-up; the end of its log:"
      tail -20 "$STATE_DIR/tansu.log" >&2
      rm -f "$STATE_DIR/tansu.pid"
      return 1
    fi
    sleep 0.5
  done
  die "Tansu did not open $KAFKA_ADDR within 60 s (log: $STATE_DIR/tansu.log)"
}

# ---------------------------------------------------------------- tools
# What the build needs besides Rust, from Debian's packages: a C toolchain (librdkafka in
# rdkafka-sys, the broker's SQLite and the bench's C shim build with it) and OpenSSL headers
# (librdkafka with TLS and SASL). With `test` also what the tests need: Prometheus and promtool
# (the metrics tests), Chromium and ChromeDriver (the dashboard's browser test), MariaDB's server
# programs (the TLS test starts a private server with them).
tools_up() { # [test]
  local missing=()
  command -v cc >/dev/null && command -v make >/dev/null || missing+=(build-essential)
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  if [ "${1:-}" = test ]; then
    command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ -z "$(mariadbd_path)" ] || ! command -v mariadb-install-db >/dev/null \
      || ! command -v my_print_defaults >/dev/null; then
      # Not over an Oracle MySQL server: apt would remove it (the packages conflict).
      if [ -x /usr/sbin/mysqld ] && [ -z "$(mariadbd_path)" ]; then
        say "warning: MySQL's server is installed, not MariaDB's; the MySQL TLS test (a private mariadbd) will fail"
      else
        missing+=(mariadb-server-core mariadb-client-core)
      fi
    fi
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}" || die "installing ${missing[*]} failed (apt-get; as root or with sudo)"
  fi
}

# ---------------------------------------------------------------- database
mariadbd_path() {
  command -v mariadbd 2>/dev/null || { [ -x /usr/sbin/mariadbd ] && echo /usr/sbin/mariadbd; } || true
}

mysql_cli() {
  if command -v mariadb >/dev/null; then echo mariadb; elif command -v mysql >/dev/null; then echo mysql; else return 1; fi
}

admin_sql() {
  MYSQL_PWD="$ADMIN_PASSWORD" "$(mysql_cli)" --protocol=TCP -h "$DB_HOST" -P "$DB_PORT" -u "$ADMIN_USER" \
    --batch --skip-column-names "$@"
}

db_reachable() { admin_sql -e 'SELECT 1' >/dev/null 2>&1; }

start_local_mysql() {
  local daemon
  for daemon in /usr/sbin/mariadbd /usr/sbin/mysqld; do
    [ -x "$daemon" ] || continue
    say "database: starting $daemon"
    if command -v start-stop-daemon >/dev/null; then
      as_root start-stop-daemon --start --oknodo --background --exec "$daemon" >&2 || true
    else
      as_root service mariadb start >&2 || as_root service mysql start >&2 || true
    fi
    for _ in $(seq 1 60); do
      if db_reachable; then
        pgrep -x "$(basename "$daemon")" | head -1 >"$STATE_DIR/mysql.pid" || true
        return 0
      fi
      sleep 0.5
    done
  done
  return 1
}

db_up() {
  mysql_cli >/dev/null || apt_install mariadb-client \
    || die "no mysql/mariadb command-line client; install mariadb-client (or mysql-client)"
  if ! db_reachable; then
    if [ "$DB_HOST" = 127.0.0.1 ] || [ "$DB_HOST" = localhost ]; then
      start_local_mysql || { apt_install mariadb-server && start_local_mysql; } || die \
"no MySQL-compatible server at $DB_HOST:$DB_PORT for user $ADMIN_USER.
  Install one (Debian/Ubuntu: apt-get install mariadb-server; or MySQL 8), or point
  COINSTREAM_MYSQL_HOST/PORT and COINSTREAM_MYSQL_ADMIN_USER/PASSWORD at a server you administer."
    else
      die "MySQL at $DB_HOST:$DB_PORT is not reachable as $ADMIN_USER (check COINSTREAM_MYSQL_* settings)"
    fi
  fi
  say "database: $DB_HOST:$DB_PORT reachable; ensuring database '$APP_DB' and users"
  local user host
  {
    echo "CREATE DATABASE IF NOT EXISTS \`$APP_DB\` CHARACTER SET utf8mb4;"
    for host in localhost 127.0.0.1; do
      for user in "$APP_USER:$APP_PASSWORD" "$TEST_USER:$TEST_PASSWORD" "$READER_USER:$READER_PASSWORD"; do
        echo "CREATE USER IF NOT EXISTS '${user%%:*}'@'$host' IDENTIFIED BY '${user#*:}';"
        echo "ALTER USER '${user%%:*}'@'$host' IDENTIFIED BY '${user#*:}';"
      done
      # The services: data access and the DDL their embedded migrations run, on their database only.
      echo "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, REFERENCES ON \`$APP_DB\`.* TO '$APP_USER'@'$host';"
      # The demo (scripts/demo.sh) resets its own database each run (coinstream_demo, or one
      # named coinstream_demo... of the test that runs the demo).
      echo "GRANT ALL PRIVILEGES ON \`coinstream\\_demo%\`.* TO '$APP_USER'@'$host';"
      # The test kit: creates and drops its own cstest_* databases, nothing else.
      echo "GRANT ALL PRIVILEGES ON \`cstest\\_%\`.* TO '$TEST_USER'@'$host';"
      # Read-only: what the dashboard (compare serve) needs, for the test that runs it so and for
      # users who give it an account of its own.
      echo "GRANT SELECT ON \`cstest\\_%\`.* TO '$READER_USER'@'$host';"
      echo "GRANT SELECT ON \`$APP_DB\`.* TO '$READER_USER'@'$host';"
    done
  } | admin_sql || die "creating the database and users failed (does $ADMIN_USER have CREATE USER and GRANT?)"
}

print_env() {
  cat <<ENV
KAFKA_BOOTSTRAP_SERVERS=$KAFKA_ADDR
MYSQL_HOST=$DB_HOST
MYSQL_PORT=$DB_PORT
MYSQL_USER=$APP_USER
MYSQL_PASSWORD=$APP_PASSWORD
MYSQL_DATABASE=$APP_DB
COINSTREAM_TEST_MYSQL_URL=mysql://$TEST_USER:$TEST_PASSWORD@$DB_HOST:$DB_PORT
COINSTREAM_TEST_READER_MYSQL_URL=mysql://$READER_USER:$READER_PASSWORD@$DB_HOST:$DB_PORT
ENV
  if command -v prometheus >/dev/null; then
    echo "COINSTREAM_TEST_PROMETHEUS=$(command -v prometheus)"
    echo "COINSTREAM_TEST_PROMTOOL=$(command -v promtool)"
  fi
  if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
    echo "COINSTREAM_TEST_CHROMEDRIVER=$(command -v chromedriver)"
    echo "COINSTREAM_TEST_CHROMIUM=$(command -v chromium)"
  fi
  # The MySQL TLS test starts a private MariaDB server with its own certificates.
  if [ -n "$(mariadbd_path)" ] && command -v mariadb-install-db >/dev/null; then
    echo "COINSTREAM_TEST_MARIADBD=$(mariadbd_path)"
    echo "COINSTREAM_TEST_MARIADB_INSTALL_DB=$(command -v mariadb-install-db)"
  fi
  # Tests that restart the broker start a private one, in a data directory of its own (the
  # working directory); {addr} is filled in by the test.
  if [ -x "$TANSU" ]; then
    echo "COINSTREAM_TEST_BROKER_CMD='$TANSU broker --listener-url tcp://{addr} --advertised-listener-url tcp://{addr} --storage-engine sqlite://broker.db'"
  fi
}

status() {
  if pid_alive tansu tansu; then say "broker: Tansu running, pid $(cat "$STATE_DIR/tansu.pid"), $KAFKA_ADDR"
  elif port_open 127.0.0.1 "$KAFKA_PORT"; then say "broker: $KAFKA_ADDR open (not started by this script)"
  else say "broker: not running"; fi
  if mysql_cli >/dev/null && db_reachable; then say "database: $DB_HOST:$DB_PORT reachable"
  else say "database: $DB_HOST:$DB_PORT not reachable"; fi
}

down_broker() {
  if pid_alive tansu tansu; then
    local pid; pid=$(cat "$STATE_DIR/tansu.pid")
    say "broker: stopping Tansu (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/tansu.pid"
}

down() {
  down_broker
  if pid_alive mysql mysqld || pid_alive mysql mariadbd; then
    local pid; pid=$(cat "$STATE_DIR/mysql.pid")
    say "database: stopping the server this script started (pid $pid)"
    as_root kill "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/mysql.pid"
}

mkdir -p "$STATE_DIR"
case "${1:-}" in
  up) tools_up test; broker_up; db_up; print_env ;;
  db) tools_up; db_up; print_env ;;
  env) print_env ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|db|env|status|down" >&2; exit 2 ;;
esac
