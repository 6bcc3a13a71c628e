#!/usr/bin/env bash
# The whole pipeline on its defaults, then a stream-vs-batch report.
#
#   scripts/demo.sh                    # 60 s of simulated rates (CoinAPI's WebSocket when COINAPI_KEY is set)
#   DEMO_SECONDS=120 scripts/demo.sh
#   DEMO_BROKER=tansu scripts/demo.sh  # on the test broker instead of the embedded one
#   COINAPI_KEY=... DEMO_COINAPI_SOURCE=coinapi scripts/demo.sh  # CoinAPI REST polling, not WebSocket
#
# Brokers: by default librdkafka's mock cluster, run in-process by `mock-kafka` (crate `bench`):
# nothing to install or build beyond the workspace, so a first run on a fresh machine takes a few
# minutes. DEMO_BROKER=tansu uses the test broker of scripts/infra.sh (built once per machine,
# about 10 minutes). The database is the local MariaDB/MySQL (scripts/infra.sh sets it up).
#
# Builds the services, runs all of them with short windows (10 s windows, 5 s watermark) so final
# windows appear within the run, one log file per service and each one's /metrics, /healthz and
# /readyz on 127.0.0.1 (addresses printed), stops the producer, lets the others drain, runs
# compare, prints its report and where the HTML report is. Uses database `coinstream_demo`
# (reset at each run) and fresh topics per run.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_SECONDS=${DEMO_SECONDS:-60}
DEMO_BROKER=${DEMO_BROKER:-mock}
METRICS_PORT=${DEMO_METRICS_PORT:-9101}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${DEMO_DIR:-demo-runs/$stamp}
mkdir -p "$out"

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

say "building"
cargo build --locked -q --bins -p producer -p raw-consumer -p stream-aggregator -p update-counter -p compare \
  -p bench
bin=target/debug

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
export MYSQL_DATABASE=coinstream_demo STATS_INTERVAL=5s LOG_FORMAT=${LOG_FORMAT:-pretty}
cli=$(command -v mariadb || command -v mysql)
MYSQL_PWD=$MYSQL_PASSWORD "$cli" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" \
  -e "DROP DATABASE IF EXISTS coinstream_demo; CREATE DATABASE coinstream_demo CHARACTER SET utf8mb4"

start() { # name port command...
  local name=$1 port=$2; shift 2
  METRICS_ADDR=127.0.0.1:$port "$@" >"$out/$name.log" 2>&1 &
  pids+=($!)
  printf '  %-18s http://127.0.0.1:%s/metrics  /healthz  /readyz\n' "$name" "$port" >&2
}

say "starting the services (logs in $out/; metrics and health below)"
start raw-consumer $((METRICS_PORT + 1)) $bin/raw-consumer --exit-idle 15s
start stream-aggregator $((METRICS_PORT + 2)) $bin/stream-aggregator --window 10s --watermark 5s \
  --idle-timeout 5s --flush-interval 500ms --exit-idle 15s
start update-counter $((METRICS_PORT + 3)) $bin/update-counter --exit-idle 25s
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
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

say "compare"
$bin/compare --group "$AGGREGATOR_GROUP" --html "$out/report.html" | tee "$out/report.txt"
echo
echo "logs: $out/*.log   report: $out/report.txt   HTML: $out/report.html"
echo "live dashboard over this run: MYSQL_DATABASE=coinstream_demo $bin/compare serve --group $AGGREGATOR_GROUP  (http://127.0.0.1:8080)"
