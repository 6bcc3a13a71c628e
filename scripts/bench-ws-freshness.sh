#!/usr/bin/env bash
# Freshness of the WebSocket source (see docs/benchmarks.md): a local stand-in for CoinAPI
# (`fake-coinapi-ws`) pushes RATE exrates/s over 10 pairs for DURATION seconds, each stamped with the time it
# is sent; producer --source coinapi-ws -> librdkafka's mock cluster -> raw-consumer and
# stream-aggregator (50 ms flushes) -> MariaDB.
# Freshness, per update, from the server sending it to its window row in stream_agg reflecting it:
# `freshness-probe` (crate bench) watches stream_agg every 5 ms from outside and matches each
# update (raw_coin_data, stamped by the server when sent) to the first observation of its window
# whose count includes it: measured on one clock, at most one poll (plus a query) late. Its parts
# beside it: the hop from the server to the producer (raw_coin_data: received_at - time) and the
# aggregator's own measure from the producer's receipt to the commit of the row.
#
#   scripts/bench-ws-freshness.sh          # RATE=100 DURATION=30 (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-100}
SECONDS_RUN=${DURATION:-30}

. scripts/bench-lib.sh
bench_setup producer raw-consumer stream-aggregator bench
db="cstest_bench_ws_$stamp"
bench_db "$db"
start_mock --topic ws_raw:3 --topic ws_agg:3
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cleanup' EXIT

./target/release/fake-coinapi-ws --rate "$RATE" --seconds "$SECONDS_RUN" >"$work/fake.env" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q PORT "$work/fake.env" && break; sleep 0.1; done
port=$(sed -n 's/^PORT=//p' "$work/fake.env")
export DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json STATS_INTERVAL=1h
./target/release/raw-consumer --topic ws_raw --group "raw-$stamp" --exit-idle 5s 2>"$work/raw.log" &
raw_pid=$!
./target/release/stream-aggregator --topic ws_raw --output-topic ws_agg --group "ws-$stamp" \
  --flush-interval 50ms --exit-idle 5s 2>"$work/agg.log" &
agg_pid=$!
for _ in $(seq 1 300); do grep -q "partitions assigned" "$work/agg.log" && break; sleep 0.1; done
sleep 0.5
./target/release/freshness-probe --database-url "$test_url/$db" --seconds "$((SECONDS_RUN + 4))s" \
  >"$work/probe.out" 2>"$work/probe.log" &
probe_pid=$!
pairs=$(python3 -c 'print(",".join(f"C{i}/USD" for i in range(10)))')
COINAPI_KEY=bench-key COINAPI_WS_URL="ws://127.0.0.1:$port" ./target/release/producer --source coinapi-ws \
  --pairs "$pairs" --topic ws_raw 2>"$work/producer.log" &
producer_pid=$!
pids+=("$producer_pid")
echo "pushing $RATE exrates/s for $SECONDS_RUN s" >&2
sleep "$((SECONDS_RUN + 2))"
kill -TERM "$producer_pid"
wait "$producer_pid" || true
wait "$raw_pid" || { cat "$work/raw.log" >&2; exit 1; }
wait "$agg_pid" || { cat "$work/agg.log" >&2; exit 1; }
wait "$probe_pid" || { cat "$work/probe.log" >&2; exit 1; }
read -r n p50 p95 p99 pmax <<<"$(log_fields "$work/agg.log" statistics events latency_p50_ms latency_p95_ms latency_p99_ms latency_max_ms)"
sql "SELECT TIMESTAMPDIFF(MICROSECOND, \`time\`, received_at) FROM \`$db\`.raw_coin_data" >"$work/hops"
python3 - "$work/hops" "$n" "$p50" "$p95" "$p99" "$pmax" "$RATE" "$work/probe.out" <<'PY'
import sys
hops = sorted(int(x) / 1000 for x in open(sys.argv[1]).read().split())
n, p50, p95, p99, pmax, rate = sys.argv[2:8]
fresh = dict(kv.split("=") for kv in open(sys.argv[8]).read().split())
q = lambda p: hops[min(len(hops) - 1, round(p * (len(hops) - 1)))]
print("| figure | value |")
print("|---|---|")
print(f"| exrates pushed per second | {rate} |")
print(f"| updates through (raw rows / aggregator) | {len(hops)} / {n} |")
print(f"| server send to producer receipt, p50 / p95 / p99 / max ms | {q(.5):.2f} / {q(.95):.2f} / {q(.99):.2f} / {hops[-1]:.2f} |")
print(f"| producer receipt to window row committed, p50 / p95 / p99 / max ms | {p50} / {p95} / {p99} / {pmax} |")
print(f"| updates matched to a window row (not matched) | {fresh['updates']} ({fresh['unobserved']}) |")
print(f"| freshness, server send to window row, p50 / p95 / p99 / max ms | {fresh['p50']} / {fresh['p95']} / {fresh['p99']} / {fresh['max']} |")
PY
