#!/usr/bin/env bash
# raw-consumer benchmark: drain a pre-filled topic (librdkafka mock cluster as broker) into MariaDB,
# and the original's row-at-a-time insert-and-commit method measured the same way beside it.
#
#   scripts/bench-raw-consumer.sh                 # 1,000,000 updates; baseline on 20,000
#   COUNT=200000 BASELINE_COUNT=5000 scripts/bench-raw-consumer.sh
#   RAW_CONSUMER_BIN=path/to/raw-consumer scripts/bench-raw-consumer.sh   # another build, same conditions
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
BASELINE_COUNT=${BASELINE_COUNT:-20000}
BATCH_SIZE=${BATCH_SIZE:-5000}
# The mock cluster keeps at most 5 MB per partition: spread the million over enough of them.
PARTITIONS=${PARTITIONS:-16}
PAIRS=${PAIRS:-40}

. scripts/bench-lib.sh
bench_setup producer raw-consumer bench
db="cstest_bench_$stamp"
bench_db "$db"
bench_db "${db}_rows"
start_mock --topic "bench_raw:$PARTITIONS"

echo "filling topic bench_raw with $COUNT updates" >&2
# Big producer batches: the mock cluster returns one stored batch per partition per fetch.
export KAFKA_PRODUCER_PROPERTIES="linger.ms=100,batch.num.messages=10000,queue.buffering.max.messages=200000"
DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap ./target/release/producer --source simulate \
  --rate 0 --count "$COUNT" --pair-count "$PAIRS" --seed 1 --topic bench_raw --stats-interval 1h 2>"$work/producer.log" \
  || { cat "$work/producer.log" >&2; exit 1; }

echo "draining with raw-consumer" >&2
unset KAFKA_PRODUCER_PROPERTIES
DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json "${RAW_CONSUMER_BIN:-./target/release/raw-consumer}" \
  --topic bench_raw --group "bench-$stamp" --exit-idle 3s --batch-size "$BATCH_SIZE" --stats-interval 1h 2>"$work/raw.log" \
  || { cat "$work/raw.log" >&2; exit 1; }
rows=$(sql "SELECT COUNT(*) FROM \`$db\`.raw_coin_data")
read -r written secs rate cpu rss <<<"$(log_fields "$work/raw.log" statistics rows_written active_seconds rows_per_second cpu_seconds peak_rss_mb)"
secs=$(printf '%.2f' "$secs"); rate=$(printf '%.0f' "$rate"); rss=$(printf '%.1f' "$rss")

echo "baseline: row-at-a-time on $BASELINE_COUNT updates" >&2
baseline=$(./target/release/row-at-a-time --bootstrap-servers "$bootstrap" --topic bench_raw --group "bench-rows-$stamp" \
  --database-url "$test_url/${db}_rows" --count "$BASELINE_COUNT")
base_rate=$(sed -n 's/.*rows_per_second=\([0-9]*\).*/\1/p' <<<"$baseline")

echo "| method | broker | rows | seconds | rows/s | consumer CPU s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|"
echo "| raw-consumer (batches of $BATCH_SIZE, one transaction each) | mock cluster, $PARTITIONS partitions | $written (table: $rows) | $secs | $rate | $cpu | $rss |"
echo "| row-at-a-time insert + commit (the original's method) | mock cluster | $BASELINE_COUNT | $(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$baseline") | $base_rate | | |"
