#!/usr/bin/env bash
# Producer benchmark: simulate with --rate 0 (no pacing) against librdkafka's mock cluster and
# against the test broker (Tansu). Reports messages per CPU-second of the producer process (which
# does not depend on the broker), peak RSS, and wall-clock messages per second per broker.
#
#   scripts/bench-producer.sh            # 2,000,000 messages to the mock cluster, 200,000 to Tansu
#   MOCK_COUNT=5000000 TANSU_COUNT=0 scripts/bench-producer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MOCK_COUNT=${MOCK_COUNT:-2000000}
TANSU_COUNT=${TANSU_COUNT:-200000}
PAIRS=${PAIRS:-10}

. scripts/bench-lib.sh
bench_setup producer bench

# Runs the producer; prints "messages cpu_seconds peak_rss_mb elapsed_seconds delivered_per_second".
run_producer() { # bootstrap topic count
  KAFKA_BOOTSTRAP_SERVERS=$1 LOG_FORMAT=json ./target/release/producer --source simulate --rate 0 \
    --count "$3" --pair-count "$PAIRS" --seed 1 --topic "$2" --stats-interval 1h 2>"$work/log" \
    || { cat "$work/log" >&2; exit 1; }
  read -r n cpu rss wall rate <<<"$(log_fields "$work/log" "producer finished" delivered cpu_seconds peak_rss_mb elapsed_seconds delivered_per_second)"
  printf '%s %s %.1f %.2f %.0f\n' "$n" "$cpu" "$rss" "$wall" "$rate"
}

start_mock --topic "bench_raw:3"
mock_bootstrap=$bootstrap

echo "| broker | messages | producer CPU s | messages per CPU-second | peak RSS MB | wall s | wall messages/s |"
echo "|---|---|---|---|---|---|---|"
row() { # broker result
  read -r n cpu rss wall rate <<<"$2"
  per_cpu=$(python3 -c "print(int($n / max($cpu, 0.01)))")
  echo "| $1 | $n | $cpu | $per_cpu | $rss | $wall | $rate |"
}
row "mock cluster (librdkafka)" "$(run_producer "$mock_bootstrap" bench_raw "$MOCK_COUNT")"
if [ "$TANSU_COUNT" -gt 0 ]; then
  topic="bench_raw_$(date +%s)"
  row "Tansu 0.6.0 (test broker)" "$(run_producer "$KAFKA_BOOTSTRAP_SERVERS" "$topic" "$TANSU_COUNT")"
fi
