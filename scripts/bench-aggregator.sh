#!/usr/bin/env bash
# stream-aggregator benchmarks, librdkafka's mock cluster as the broker (see docs/benchmarks.md).
#
# Throughput: a pre-filled topic of COUNT updates (10 pairs, 1 ms of simulated event time apart,
# so 1-minute windows close as the watermark moves), aggregated to final rows in MySQL. Reports
# updates per CPU-second of the aggregator, its wall-clock rate beside the broker's plain consume
# rate measured on the same topic in the same run, and peak RSS. Metrics are on (METRICS_ADDR), as
# under compose.
# Latency: the producer simulating RATE updates/s for SECONDS, the aggregator flushing every 50 ms;
# the aggregator records, per update, the time from the producer receiving it to the commit of the
# transaction that made its window's row reflect it.
#
#   scripts/bench-aggregator.sh                 # COUNT=5000000, RATE=1000, LAT_SECONDS=30
#   COUNT=1000000 LAT_SECONDS=10 scripts/bench-aggregator.sh
#   AGGREGATOR_BIN=path/to/stream-aggregator scripts/bench-aggregator.sh   # another build, same run conditions
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-5000000}
RATE=${RATE:-1000}
LAT_SECONDS=${LAT_SECONDS:-30}

. scripts/bench-lib.sh
bench_setup producer stream-aggregator bench
db="cstest_bench_agg_$stamp"
bench_db "$db"
bench_db "${db}_lat"
# --retain-all: the mock otherwise keeps only 5 MB per partition (see mock-kafka).
start_mock --retain-all --topic "agg_in:10" --topic "agg_out:3" --topic "lat_in:3" --topic "lat_out:3"

echo "filling agg_in with $COUNT updates" >&2
# Big producer batches (the mock returns one stored batch per partition per fetch), lz4 as our
# producer's default.
KAFKA_PRODUCER_PROPERTIES="linger.ms=100,batch.num.messages=10000,queue.buffering.max.messages=200000" \
DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap ./target/release/producer --source simulate \
  --rate 0 --count "$COUNT" --pair-count 10 --event-interval 1ms --seed 1 \
  --event-start "$(date -u -d '-3 hours' +%Y-%m-%dT%H:%M:%SZ)" --topic agg_in --stats-interval 1h 2>"$work/fill.log" \
  || { cat "$work/fill.log" >&2; exit 1; }

plain=$(./target/release/consume-rate --bootstrap-servers "$bootstrap" --topic agg_in)
echo "plain consume: $plain" >&2
kept=$(sed -n 's/^messages=\([0-9]*\) .*/\1/p' <<<"$plain")
plain_rate=$(sed -n 's/.*messages_per_second=\([0-9]*\).*/\1/p' <<<"$plain")
plain_cpu=$(sed -n 's/.*cpu_seconds=\([0-9.]*\).*/\1/p' <<<"$plain")
[ "$kept" = "$COUNT" ] || { echo "the mock kept $kept of $COUNT messages" >&2; exit 1; }

echo "aggregating" >&2
METRICS_ADDR=127.0.0.1:0 DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json "${AGGREGATOR_BIN:-./target/release/stream-aggregator}" \
  --topic agg_in --output-topic agg_out --group "bench-$stamp" --window 1m --watermark 10m --idle-timeout 2s \
  --exit-idle 4s --flush-interval 1s --stats-interval 1h 2>"$work/agg.log" \
  || { cat "$work/agg.log" >&2; exit 1; }
read -r events secs cpu rss <<<"$(log_fields "$work/agg.log" statistics events processing_seconds cpu_seconds peak_rss_mb)"
rows=$(sql "SELECT COUNT(*), SUM(is_final), SUM(update_count) FROM \`$db\`.stream_agg")

echo "latency: $RATE updates/s for $LAT_SECONDS s, flush every 50 ms" >&2
METRICS_ADDR=127.0.0.1:0 DATABASE_URL="$test_url/${db}_lat" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json "${AGGREGATOR_BIN:-./target/release/stream-aggregator}" \
  --topic lat_in --output-topic lat_out --group "lat-$stamp" --flush-interval 50ms --exit-idle 5s --stats-interval 1h \
  2>"$work/lat.log" &
agg_pid=$!
# Measure the steady state: start producing once the aggregator holds its partitions.
for _ in $(seq 1 300); do grep -q "partitions assigned" "$work/lat.log" && break; sleep 0.1; done
sleep 0.5
DATABASE_URL="$test_url/${db}_lat" KAFKA_BOOTSTRAP_SERVERS=$bootstrap ./target/release/producer --source simulate \
  --rate "$RATE" --count $((RATE * LAT_SECONDS)) --pair-count 10 --topic lat_in --stats-interval 1h 2>"$work/lat-producer.log"
wait "$agg_pid" || { cat "$work/lat.log" >&2; exit 1; }
read -r lat_n p50 p95 p99 pmax <<<"$(log_fields "$work/lat.log" statistics events latency_p50_ms latency_p95_ms latency_p99_ms latency_max_ms)"

python3 - "$events" "$secs" "$cpu" "$rss" "$plain_rate" "$rows" "$plain_cpu" <<'PY'
import sys
events, secs, cpu, rss, plain, rows = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
plain_cpu = float(sys.argv[7])
wall = events / secs
print("| figure | value |")
print("|---|---|")
print(f"| updates aggregated (mock cluster, 10 partitions) | {events:,} |")
print(f"| stream_agg rows, final, sum of update_count | {rows.replace(chr(9), ', ')} |")
print(f"| aggregator CPU seconds | {cpu} |")
print(f"| updates per CPU-second | {events / cpu:,.0f} |")
print(f"| plain consumer CPU seconds, same topic | {plain_cpu} |")
print(f"| CPU per update / the plain consumer's (target: at most 1.2) | {cpu / plain_cpu:.2f} |")
print(f"| wall-clock updates/s (first to last update) | {wall:,.0f} |")
print(f"| broker plain consume rate, same topic | {plain:,} |")
print(f"| wall-clock rate / plain consume rate | {100 * wall / plain:.0f}% |")
print(f"| peak RSS MB | {rss} |")
PY
echo "| latency run: updates | $lat_n |"
echo "| latency p50 / p95 / p99 / max ms | $p50 / $p95 / $p99 / $pmax |"
