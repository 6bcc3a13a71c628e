#!/usr/bin/env bash
# Freshness with default settings (docs/benchmarks.md, "Fresh by default"): the producer simulates
# RATE updates/s over 10 pairs for DURATION seconds (no jitter: event time = receipt) into
# librdkafka's mock cluster; raw-consumer and stream-aggregator run with their defaults. Per
# update, from the producer receiving it (`received_at`):
#   - outside (`freshness-probe`, every PROBE_INTERVAL, 10 ms): to its stream_agg window row showing it, to its
#     raw_coin_data row being visible, and to a plain consumer of the raw topic receiving it
#     (the broker's own produce -> consume floor, in the same run);
#   - inside: the aggregator's own measure (statistics, at the commit), and for raw_coin_data
#     `ingested_at - received_at` (the database's clock at the insert, in the transaction).
#
#   scripts/bench-freshness.sh                 # RATE=1000 DURATION=20
#   RATE=10000 DURATION=20 scripts/bench-freshness.sh
#   BROKER=tansu scripts/bench-freshness.sh    # on the test broker (scripts/infra.sh) instead
#   PROBE=0 scripts/bench-freshness.sh          # the services' own figures only (no probe's load)
#   AGGREGATOR_BIN=path/to/stream-aggregator scripts/bench-freshness.sh   # another build beside this one
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
PROBE_INTERVAL=${PROBE_INTERVAL:-10ms}

. scripts/bench-lib.sh
bench_setup producer raw-consumer stream-aggregator bench
db="cstest_bench_fresh_$stamp"
bench_db "$db"
raw_topic=fresh_raw agg_topic=fresh_agg
if [ "${BROKER:-mock}" = tansu ]; then
  # The test broker of scripts/infra.sh; the services create the topics (3 partitions) at start.
  bootstrap=$KAFKA_BOOTSTRAP_SERVERS raw_topic=fresh_raw_$stamp agg_topic=fresh_agg_$stamp
else
  start_mock --topic fresh_raw:3 --topic fresh_agg:3
fi
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; bench_cleanup' EXIT
export DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json STATS_INTERVAL=1h
./target/release/raw-consumer --topic "$raw_topic" --group "raw-$stamp" --exit-idle 5s 2>"$work/raw.log" &
raw_pid=$!
pids+=("$raw_pid")
"${AGGREGATOR_BIN:-./target/release/stream-aggregator}" --topic "$raw_topic" --output-topic "$agg_topic" --group "agg-$stamp" \
  --exit-idle 5s 2>"$work/agg.log" &
agg_pid=$!
pids+=("$agg_pid")
for _ in $(seq 1 300); do
  grep -q "partitions assigned" "$work/agg.log" && grep -q "partitions assigned" "$work/raw.log" && break
  sleep 0.1
done
PROBE=${PROBE:-1}
if [ "$PROBE" = 1 ]; then
./target/release/freshness-probe --database-url "$test_url/$db" --origin received --interval "$PROBE_INTERVAL" \
  --topic "$raw_topic" --bootstrap-servers "$bootstrap" --seconds "$((DURATION + 3))s" \
  >"$work/probe.out" 2>"$work/probe.log" &
probe_pid=$!
pids+=("$probe_pid")
for _ in $(seq 1 100); do grep -q "floor consumer assigned" "$work/probe.log" && break; sleep 0.1; done
else
  echo "PROBE=0" >"$work/probe.out"
fi
sleep 0.5
./target/release/producer --source simulate --rate "$RATE" --count $((RATE * DURATION)) --pair-count 10 \
  --topic "$raw_topic" --stats-interval 1h 2>"$work/producer.log"
wait "$agg_pid" || { cat "$work/agg.log" >&2; exit 1; }
wait "$raw_pid" || { cat "$work/raw.log" >&2; exit 1; }
[ "$PROBE" = 1 ] && { wait "$probe_pid" || { cat "$work/probe.log" >&2; exit 1; }; }
read -r n p50 p95 p99 pmax <<<"$(log_fields "$work/agg.log" statistics events latency_p50_ms latency_p95_ms latency_p99_ms latency_max_ms)"
raw=$(sql "SELECT TIMESTAMPDIFF(MICROSECOND, received_at, ingested_at) FROM \`$db\`.raw_coin_data")
python3 - "$RATE" "$n" "$p50" "$p95" "$p99" "$pmax" "$work/probe.out" <<PY
import sys
rate, n, p50, p95, p99, pmax, probe = sys.argv[1:]
raw = sorted(int(x) / 1000 for x in """$raw""".split())
q = lambda p: raw[round((len(raw) - 1) * p)]
out = dict(kv.split("=") for kv in open(probe).read().split())
probed = out.get("PROBE") != "0"
r = f"{int(rate):,}/s"
print("| path (from the producer's receipt) | updates | p50 ms | p95 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|")
def row(name, pre):
    print(f"| {name} | {int(out[pre + 'updates']):,} | {float(out[pre + 'p50']):.1f} | {float(out[pre + 'p95']):.1f} | {float(out[pre + 'p99']):.1f} | {float(out[pre + 'max']):.1f} |")
if probed:
    row(f"outside: plain consumer of the raw topic receives it (floor, {r})", "floor_")
    row(f"outside: its raw_coin_data row visible ({r})", "raw_")
    row(f"outside: its stream_agg window row shows it ({r})", "")
print(f"| inside: stream_agg row committed (aggregator's statistics, {r}) | {int(n):,} | {float(p50):.1f} | {float(p95):.1f} | {float(p99):.1f} | {float(pmax):.1f} |")
print(f"| inside: raw_coin_data row inserted (ingested_at, {r}) | {len(raw):,} | {q(0.5):.1f} | {q(0.95):.1f} | {q(0.99):.1f} | {raw[-1]:.1f} |")
if probed and int(out["unobserved"]):
    print(f"\n{int(out['unobserved']):,} updates were not observed in a window row by the probe")
PY
