#!/usr/bin/env bash
# Retention's cost on a raw consumer writing at full speed (docs/benchmarks.md, "Retention").
# raw_coin_data holds OLD (10,000,000) rows 40 days old; the raw consumer drains a pre-filled topic
# of COUNT (1,000,000) updates (librdkafka's mock cluster), without retention and with
# --retention 30d (its pruning of the old rows running in the background meanwhile), each run into
# a database of its own holding the same old rows; RUNS pairs, alternated. Reports each run's
# rows/s and how many old rows the pruning removed while the drain ran. MariaDB only (the old rows
# are made with its SEQUENCE engine).
#
#   scripts/bench-retention.sh                        # OLD=10000000 COUNT=1000000 RUNS=1
#   OLD=1000000 COUNT=200000 RUNS=2 scripts/bench-retention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:-10000000}
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-1}
PARTITIONS=16

. scripts/bench-lib.sh
bench_setup producer raw-consumer bench
start_mock --topic "ret_raw:$PARTITIONS"

echo "filling topic ret_raw with $COUNT updates" >&2
fill_db="cstest_bench_ret_fill_$stamp"
bench_db "$fill_db"
KAFKA_PRODUCER_PROPERTIES="linger.ms=100,batch.num.messages=10000,queue.buffering.max.messages=200000" \
  DATABASE_URL="$test_url/$fill_db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap ./target/release/producer --source simulate \
  --rate 0 --count "$COUNT" --pair-count 40 --seed 1 --topic ret_raw --stats-interval 1h 2>"$work/producer.log" \
  || { cat "$work/producer.log" >&2; exit 1; }

# A database with the schema and OLD rows 40 days old (1 ms apart), built once and copied.
echo "making $OLD rows 40 days old" >&2
sql "CREATE TABLE \`$fill_db\`.old_rows LIKE \`$fill_db\`.raw_coin_data"
for ((from = 0; from < OLD; from += 1000000)); do
  n=$((OLD - from < 1000000 ? OLD - from : 1000000))
  sql "INSERT INTO \`$fill_db\`.old_rows (asset_id_base, asset_id_quote, rate, \`time\`) \
       SELECT 'OLD', 'USD', 1.5, UTC_TIMESTAMP(6) - INTERVAL 40 DAY - INTERVAL ($from + seq) * 1000 MICROSECOND \
       FROM \`$fill_db\`.seq_1_to_$n"
done

run() { # mode (off|on) run: prints a table row
  local mode=$1 i=$2 db="cstest_bench_ret_${1}_${2}_$stamp" args=()
  bench_db "$db"
  DATABASE_URL="$test_url/$db" ./target/release/raw-consumer --list-dead-letters >/dev/null 2>"$work/migrate.log" \
    || { cat "$work/migrate.log" >&2; exit 1; }
  sql "INSERT INTO \`$db\`.raw_coin_data SELECT * FROM \`$fill_db\`.old_rows"
  [ "$mode" = on ] && args=(--retention 30d --retention-interval 1s)
  DATABASE_URL="$test_url/$db" KAFKA_BOOTSTRAP_SERVERS=$bootstrap LOG_FORMAT=json ./target/release/raw-consumer \
    --topic ret_raw --group "ret-$mode-$i-$stamp" --exit-idle 3s --stats-interval 1h "${args[@]}" 2>"$work/raw-$mode-$i.log" \
    || { cat "$work/raw-$mode-$i.log" >&2; exit 1; }
  local written secs rate left
  read -r written secs rate <<<"$(log_fields "$work/raw-$mode-$i.log" statistics rows_written active_seconds rows_per_second)"
  left=$(sql "SELECT COUNT(*) FROM \`$db\`.raw_coin_data WHERE asset_id_base = 'OLD'")
  printf '| %s | %s | %s | %.2f | %.0f | %s |\n' "$mode" "$i" "$written" "$secs" "$rate" "$((OLD - left))"
  sql "DROP DATABASE \`$db\`"
}

echo "| retention | run | rows written | seconds | rows/s | old rows pruned meanwhile |"
echo "|---|---|---|---|---|---|"
for i in $(seq 1 "$RUNS"); do
  run off "$i"
  run on "$i"
done
