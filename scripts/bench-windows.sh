#!/usr/bin/env bash
# stream-aggregator: the cost of window specs (docs/benchmarks.md, "Window specs by slicing").
#
# One topic of COUNT updates (10 pairs, 1 ms of simulated event time apart) on librdkafka's mock
# cluster; the aggregator reads all of it once per spec set, default settings otherwise (update
# mode, 1 s flush, 10 m watermark), to final rows in MySQL. Reports, per spec set, the
# aggregator's CPU seconds, updates per CPU-second, CPU relative to the first set, peak RSS and
# the rows written, beside the plain consumer's CPU on the same topic.
#
#   scripts/bench-windows.sh                       # COUNT=1000000, the spec sets below
#   SETS="--window 1m;--windows 1m,5m,1h" scripts/bench-windows.sh
#
# SETS: the aggregator's window arguments per run, separated by ';' (the one-spec form
# `--window W --slide S` works on builds from before --windows, for comparisons).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
SETS=${SETS:-"--windows 1m;--windows 1m/10s;--windows 1m/1s;--windows 10m/1s;--windows 1m,5m,1h;--windows 1m,5m,1h/1m,10m/1s"}

. scripts/bench-lib.sh
bench_setup producer stream-aggregator bench
start_mock --retain-all --topic "agg_in:10" --topic "agg_out:3"
bench_db "cstest_bench_win_fill_$stamp"

echo "filling agg_in with $COUNT updates" >&2
KAFKA_PRODUCER_PROPERTIES="linger.ms=100,batch.num.messages=10000,queue.buffering.max.messages=200000" \
DATABASE_URL="$test_url/cstest_bench_win_fill_$stamp" KAFKA_BOOTSTRAP_SERVERS=$bootstrap ./target/release/producer --source simulate \
  --rate 0 --count "$COUNT" --pair-count 10 --event-interval 1ms --seed 1 \
  --event-start "$(date -u -d '-3 hours' +%Y-%m-%dT%H:%M:%SZ)" --topic agg_in --stats-interval 1h 2>"$work/fill.log" \
  || { cat "$work/fill.log" >&2; exit 1; }
plain=$(./target/release/consume-rate --bootstrap-servers "$bootstrap" --topic agg_in)
plain_cpu=$(sed -n 's/.*cpu_seconds=\([0-9.]*\).*/\1/p' <<<"$plain")
echo "plain consume: $plain" >&2

echo "| windows | updates | CPU s | updates per CPU-s | CPU / first set | CPU / plain consumer | peak RSS MB | stream_agg rows (final) |"
echo "|---|---|---|---|---|---|---|---|"
first_cpu=
i=0
IFS=';' read -ra sets <<<"$SETS"
for set in "${sets[@]}"; do
  i=$((i + 1))
  db="cstest_bench_win_${stamp}_$i"
  bench_db "$db"
  read -ra window_args <<<"$set"
  METRICS_ADDR=127.0.0.1:0 DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json \
    ./target/release/stream-aggregator --topic agg_in --output-topic agg_out --group "win-$stamp-$i" \
    "${window_args[@]}" --idle-timeout 2s --exit-idle 4s --stats-interval 1h 2>"$work/agg-$i.log" \
    || { cat "$work/agg-$i.log" >&2; exit 1; }
  read -r events cpu rss <<<"$(log_fields "$work/agg-$i.log" statistics events cpu_seconds peak_rss_mb)"
  rows=$(sql "SELECT COUNT(*), SUM(is_final) FROM \`$db\`.stream_agg" | tr '\t' ' ')
  first_cpu=${first_cpu:-$cpu}
  python3 - "$set" "$events" "$cpu" "$rss" "$rows" "$first_cpu" "$plain_cpu" <<'PY'
import sys
s, events, cpu, rss, rows, first, plain = sys.argv[1:]
events, cpu, first, plain = int(events), float(cpu), float(first), float(plain)
label = s.replace("--windows ", "").replace("--window ", "").replace(" --slide ", "/")
total, final = rows.split()
print(f"| {label} | {events:,} | {cpu:.2f} | {events / cpu:,.0f} | {cpu / first:.2f} | {cpu / plain:.2f} | {rss} | {int(total):,} ({int(final):,}) |")
PY
done
echo "| plain consumer, same topic | $COUNT | $plain_cpu | | | 1.00 | | |"
