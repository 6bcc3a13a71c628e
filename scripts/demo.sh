#!/usr/bin/env bash
# The whole pipeline on its defaults, watched live on the dashboard, then a stream-vs-batch report.
#
#   scripts/demo.sh                    # 60 s of simulated rates (CoinAPI's WebSocket when COINAPI_KEY is set)
#   DEMO_SECONDS=120 scripts/demo.sh
#   DEMO_BROKER=tansu scripts/demo.sh  # on the test broker instead of the embedded one
#   COINAPI_KEY=... DEMO_COINAPI_SOURCE=coinapi scripts/demo.sh  # CoinAPI REST polling, not WebSocket
#   DEMO_SERVE_AFTER=300 scripts/demo.sh  # keep the dashboard up 5 minutes after the report
#   scripts/demo.sh serve demo-runs/<run>  # the dashboard over a finished run (the command it prints)
#
# Brokers: by default librdkafka's mock cluster, run in-process by `mock-kafka` (crate `bench`):
# nothing to install or build beyond the workspace, so a first run on a fresh machine takes a few
# minutes. DEMO_BROKER=tansu uses the test broker of scripts/infra.sh (built once per machine,
# about 10 minutes). The database is the local MariaDB/MySQL (scripts/infra.sh sets it up).
#
# Builds the services (release; DEMO_PROFILE=debug for a debug build), prints the live dashboard's
# address first (`compare serve`, DEMO_SERVE_PORT, 8080), runs every service with short windows
# (10 s windows, 5 s watermark) so final windows appear within the run, one log file per service
# and each one's /metrics, /healthz and /readyz on 127.0.0.1 (addresses printed), stops the
# producer, lets the others drain, runs compare, prints its report, what its latency includes and
# where the HTML report is. Uses database DEMO_DATABASE (coinstream_demo, reset at each run) and
# fresh topics per run. DEMO_BIN=dir runs binaries built elsewhere (no build).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_SECONDS=${DEMO_SECONDS:-60}
DEMO_BROKER=${DEMO_BROKER:-mock}
DEMO_PROFILE=${DEMO_PROFILE:-release}
DEMO_DATABASE=${DEMO_DATABASE:-coinstream_demo}
DEMO_SERVE_PORT=${DEMO_SERVE_PORT:-8080}
DEMO_SERVE_AFTER=${DEMO_SERVE_AFTER:-0}
METRICS_PORT=${DEMO_METRICS_PORT:-9101}

case "$DEMO_PROFILE" in
  release) build_flags=(--release) ;;
  debug) build_flags=() ;;
  *) echo "DEMO_PROFILE must be release or debug, not $DEMO_PROFILE" >&2; exit 2 ;;
esac
case "$DEMO_DATABASE" in
  coinstream_demo*) ;;
  *) echo "DEMO_DATABASE must start with coinstream_demo (the demo drops and creates it), not $DEMO_DATABASE" >&2; exit 2 ;;
esac

# `scripts/demo.sh serve RUN_DIR`: the dashboard over a finished run, as its last line prints.
if [ "${1:-}" = serve ]; then
  run=${2:?usage: scripts/demo.sh serve demo-runs/<run>}
  [ -f "$run/run.env" ] || { echo "$run/run.env not found: not a demo run directory" >&2; exit 2; }
  set -a; eval "$(scripts/infra.sh db 2>/dev/null)"; . "$run/run.env"; set +a
  echo "dashboard of $run: http://$COMPARE_LISTEN  (Ctrl-C stops it)" >&2
  exec "$DEMO_BIN/compare" serve --group "$AGGREGATOR_GROUP"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${DEMO_DIR:-demo-runs/$stamp}
mkdir -p "$out"
printf '==> live dashboard: http://127.0.0.1:%s  (up as soon as the pipeline runs, in a minute or two)\n' \
  "$DEMO_SERVE_PORT" >&2

say() { printf '\n==> %s\n' "$*" >&2; }

pids=()
broker_pid=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null || true
}
trap cleanup EXIT

case "$DEMO_BROKER" in
  mock)
    say "the build's tools and the database (scripts/infra.sh db)"
    set -a; eval "$(scripts/infra.sh db)"; set +a
    ;;
  tansu)
    say "the build's tools, the database and the test broker (scripts/infra.sh up)"
    set -a; eval "$(scripts/infra.sh up)"; set +a
    ;;
  *) echo "DEMO_BROKER must be mock or tansu, not $DEMO_BROKER" >&2; exit 2 ;;
esac

if [ -n "${DEMO_BIN:-}" ]; then
  bin=$DEMO_BIN # binaries built elsewhere (the demo's test)
  build_label="the binaries in $bin"
else
  say "building ($DEMO_PROFILE)"
  cargo build --locked -q "${build_flags[@]}" --bins -p producer -p raw-consumer -p stream-aggregator \
    -p update-counter -p compare -p bench
  bin=target/$DEMO_PROFILE
  build_label="$DEMO_PROFILE build"
fi

export RAW_TOPIC="demo_raw_$stamp" AGG_TOPIC="demo_agg_$stamp" AGGREGATOR_GROUP="demo-aggregator-$stamp"
export RAW_CONSUMER_GROUP="demo-raw-$stamp" UPDATE_COUNTER_GROUP="demo-counter-$stamp"
if [ "$DEMO_BROKER" = mock ]; then
  say "embedded broker (librdkafka's mock cluster)"
  $bin/mock-kafka --topic "$RAW_TOPIC:3" --topic "$AGG_TOPIC:3" >"$out/broker.env" 2>"$out/broker.log" &
  broker_pid=$!
  for _ in $(seq 1 100); do grep -q KAFKA_BOOTSTRAP_SERVERS "$out/broker.env" && break; sleep 0.1; done
  export KAFKA_BOOTSTRAP_SERVERS
  KAFKA_BOOTSTRAP_SERVERS=$(sed -n 's/^KAFKA_BOOTSTRAP_SERVERS=//p' "$out/broker.env")
  [ -n "$KAFKA_BOOTSTRAP_SERVERS" ] || { echo "mock-kafka did not start (log: $out/broker.log)" >&2; exit 1; }
fi
export MYSQL_DATABASE=$DEMO_DATABASE STATS_INTERVAL=5s LOG_FORMAT=${LOG_FORMAT:-pretty}
export COMPARE_LISTEN=127.0.0.1:$DEMO_SERVE_PORT
cli=$(command -v mariadb || command -v mysql)
MYSQL_PWD=$MYSQL_PASSWORD "$cli" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" \
  -e "DROP DATABASE IF EXISTS \`$DEMO_DATABASE\`; CREATE DATABASE \`$DEMO_DATABASE\` CHARACTER SET utf8mb4"
# What `scripts/demo.sh serve` needs to show this run again (no password: it asks scripts/infra.sh).
cat >"$out/run.env" <<ENV
MYSQL_DATABASE=$DEMO_DATABASE
AGGREGATOR_GROUP=$AGGREGATOR_GROUP
RAW_CONSUMER_GROUP=$RAW_CONSUMER_GROUP
COMPARE_LISTEN=$COMPARE_LISTEN
DEMO_BIN=$bin
ENV

start() { # name port command...
  local name=$1 port=$2; shift 2
  METRICS_ADDR=127.0.0.1:$port "$@" >"$out/$name.log" 2>&1 &
  pids+=($!)
  printf '  %-18s http://127.0.0.1:%s/metrics  /healthz  /readyz\n' "$name" "$port" >&2
}

say "live dashboard: http://$COMPARE_LISTEN  (open it now: windows appear as they are written)"
say "starting the services (logs in $out/; metrics and health below)"
start raw-consumer $((METRICS_PORT + 1)) $bin/raw-consumer --exit-idle 15s
start stream-aggregator $((METRICS_PORT + 2)) $bin/stream-aggregator --window 10s --watermark 5s \
  --idle-timeout 5s --exit-idle 15s
start update-counter $((METRICS_PORT + 3)) $bin/update-counter --exit-idle 25s
# The consumers join their groups first (so the latency below is the pipeline's, not the join's);
# the dashboard reads the tables they create.
for _ in $(seq 1 300); do
  grep -q "partitions assigned" "$out/raw-consumer.log" && grep -q "partitions assigned" "$out/stream-aggregator.log" && break
  sleep 0.2
done
$bin/compare serve --group "$AGGREGATOR_GROUP" >"$out/dashboard.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
printf '  %-18s http://%s  (log: %s/dashboard.log)\n' "dashboard" "$COMPARE_LISTEN" "$out" >&2
if [ -n "${COINAPI_KEY:-}" ]; then
  # CoinAPI's push feed by default; DEMO_COINAPI_SOURCE=coinapi polls its REST API instead.
  start producer "$METRICS_PORT" $bin/producer --source "${DEMO_COINAPI_SOURCE:-coinapi-ws}"
else
  start producer "$METRICS_PORT" $bin/producer --source simulate --pair-count 5 --rate 200 --jitter 1s \
    --late-fraction 0.01 --late-by 30s
fi
producer=${pids[-1]}

say "running for $DEMO_SECONDS s"
sleep "$DEMO_SECONDS"
say "stopping the producer; the others drain and exit"
kill -TERM "$producer"
wait "$producer" || true
for p in "${pids[@]}"; do [ "$p" = "$serve_pid" ] || wait "$p" || true; done

say "compare"
$bin/compare --group "$AGGREGATOR_GROUP" --html "$out/report.html" | tee "$out/report.txt"
echo
if [ -z "${COINAPI_KEY:-}" ]; then
  echo "Stream latency above: from the producer's receipt of an update to the commit of its window row"
  echo "($build_label, default flush and fetch settings, all services, the broker"
  echo "and the database on this machine). The simulator delivers updates up to 1 s after their event"
  echo "time (--jitter 1s, before receipt: not in the latency) and 1% of them 30 s late: those are"
  echo "late events, not in windows. docs/benchmarks.md has the figures of a quiet run."
fi
echo "logs: $out/*.log   report: $out/report.txt   HTML: $out/report.html"
if [ "$DEMO_SERVE_AFTER" != 0 ]; then
  echo "live dashboard still up for $DEMO_SERVE_AFTER s: http://$COMPARE_LISTEN"
  sleep "$DEMO_SERVE_AFTER"
fi
kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
pids=()
echo "live dashboard over this run: scripts/demo.sh serve $out  (http://$COMPARE_LISTEN)"
