#!/usr/bin/env bash
# Freshness with default settings (docs/benchmarks.md, "Fresh by default"): the producer simulates
# RATE updates/s over 10 pairs for DURATION seconds into librdkafka's mock cluster; raw-consumer
# and stream-aggregator run with their defaults. Per update, from the producer receiving it
# (`received_at`) to:
#   - its stream_agg row committed: the aggregator's own measure (statistics, at the commit);
#   - its raw_coin_data row: `ingested_at - received_at`, read from the table afterwards
#     (`ingested_at` is the database's clock at the insert; the commit follows in the same
#     transaction).
#
#   scripts/bench-freshness.sh                 # RATE=1000 DURATION=20
#   RATE=10000 DURATION=20 scripts/bench-freshness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20}

. scripts/bench-lib.sh
bench_setup producer raw-consumer stream-aggregator bench
db="cstest_bench_fresh_$stamp"
bench_db "$db"
start_mock --topic fresh_raw:3 --topic fresh_agg:3
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cleanup' EXIT
export DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json STATS_INTERVAL=1h
./target/release/raw-consumer --topic fresh_raw --group "raw-$stamp" --exit-idle 5s 2>"$work/raw.log" &
raw_pid=$!
pids+=("$raw_pid")
./target/release/stream-aggregator --topic fresh_raw --output-topic fresh_agg --group "agg-$stamp" \
  --exit-idle 5s 2>"$work/agg.log" &
agg_pid=$!
pids+=("$agg_pid")
for _ in $(seq 1 300); do
  grep -q "partitions assigned" "$work/agg.log" && grep -q "partitions assigned" "$work/raw.log" && break
  sleep 0.1
done
sleep 0.5
./target/release/producer --source simulate --rate "$RATE" --count $((RATE * DURATION)) --pair-count 10 \
  --topic fresh_raw --stats-interval 1h 2>"$work/producer.log"
wait "$agg_pid" || { cat "$work/agg.log" >&2; exit 1; }
wait "$raw_pid" || { cat "$work/raw.log" >&2; exit 1; }
read -r n p50 p95 p99 pmax <<<"$(log_fields "$work/agg.log" statistics events latency_p50_ms latency_p95_ms latency_p99_ms latency_max_ms)"
raw=$(sql "SELECT TIMESTAMPDIFF(MICROSECOND, received_at, ingested_at) FROM \`$db\`.raw_coin_data")
python3 - "$RATE" "$n" "$p50" "$p95" "$p99" "$pmax" <<PY
import sys
rate, n, p50, p95, p99, pmax = sys.argv[1:]
raw = sorted(int(x) / 1000 for x in """$raw""".split())
q = lambda p: raw[round((len(raw) - 1) * p)]
print("| path | updates | p50 ms | p95 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|")
print(f"| receipt -> stream_agg row committed ({int(rate):,}/s) | {int(n):,} | {float(p50):.1f} | {float(p95):.1f} | {float(p99):.1f} | {float(pmax):.1f} |")
print(f"| receipt -> raw_coin_data row inserted ({int(rate):,}/s) | {len(raw):,} | {q(0.5):.1f} | {q(0.95):.1f} | {q(0.99):.1f} | {raw[-1]:.1f} |")
PY
