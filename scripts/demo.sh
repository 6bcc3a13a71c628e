#!/usr/bin/env bash
# The whole pipeline on its defaults, then a stream-vs-batch report.
#
#   scripts/demo.sh                    # 60 s of simulated rates (CoinAPI when COINAPI_KEY is set)
#   DEMO_SECONDS=120 scripts/demo.sh
#
# Brings up the broker and database (scripts/infra.sh), builds the services, runs all of them
# with short windows (10 s windows, 5 s watermark) so final windows appear within the run, with
# one log file per service, stops them gracefully, runs compare, prints its report and where the
# HTML report is. Uses database `coinstream_demo` (reset at each run) and fresh topics per run.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_SECONDS=${DEMO_SECONDS:-60}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${DEMO_DIR:-demo-runs/$stamp}
mkdir -p "$out"

say() { printf '\n==> %s\n' "$*" >&2; }

say "infrastructure"
set -a; eval "$(scripts/infra.sh up)"; set +a
export MYSQL_DATABASE=coinstream_demo
export RAW_TOPIC="demo_raw_$stamp" AGG_TOPIC="demo_agg_$stamp" AGGREGATOR_GROUP="demo-aggregator-$stamp"
export RAW_CONSUMER_GROUP="demo-raw-$stamp" UPDATE_COUNTER_GROUP="demo-counter-$stamp"
export STATS_INTERVAL=5s LOG_FORMAT=${LOG_FORMAT:-pretty}
cli=$(command -v mariadb || command -v mysql)
MYSQL_PWD=$MYSQL_PASSWORD "$cli" --protocol=TCP -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" \
  -e "DROP DATABASE IF EXISTS coinstream_demo; CREATE DATABASE coinstream_demo CHARACTER SET utf8mb4"

say "building (release)"
cargo build --release --locked -q --bins -p producer -p raw-consumer -p stream-aggregator -p update-counter -p compare
bin=target/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

say "starting the services (logs in $out/)"
$bin/raw-consumer --exit-idle 15s >"$out/raw-consumer.log" 2>&1 & pids+=($!)
$bin/stream-aggregator --window 10s --watermark 5s --idle-timeout 5s --flush-interval 500ms --exit-idle 15s \
  >"$out/stream-aggregator.log" 2>&1 & pids+=($!)
$bin/update-counter --exit-idle 15s >"$out/update-counter.log" 2>&1 & pids+=($!)
if [ -n "${COINAPI_KEY:-}" ]; then
  $bin/producer --source coinapi >"$out/producer.log" 2>&1 & producer=$!
else
  $bin/producer --source simulate --pair-count 5 --rate 200 --jitter 1s --late-fraction 0.01 --late-by 30s \
    >"$out/producer.log" 2>&1 & producer=$!
fi
pids+=("$producer")

say "running for $DEMO_SECONDS s"
sleep "$DEMO_SECONDS"
say "stopping the producer; the others finish what they have and exit once idle"
kill -TERM "$producer"
wait "$producer" || true
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

say "compare"
$bin/compare --group "$AGGREGATOR_GROUP" --html "$out/report.html" | tee "$out/report.txt"
echo
echo "logs: $out/*.log   report: $out/report.txt   HTML: $out/report.html"
