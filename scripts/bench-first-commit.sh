#!/usr/bin/env bash
# Assignment to first committed batch on the test broker (issue 10; docs/benchmarks.md).
#
# Part 1, backlog: a topic pre-filled with N updates (3 partitions) drained by a raw-consumer in a
# new group; the figure is its `first write after the assignment committed since_assignment`.
# Part 2, restarts under live traffic: the producer simulates RATE updates/s; raw-consumer and
# stream-aggregator run; each is SIGKILLed and started again at once RESTARTS times. Figures:
# assignment to first commit of the restarted instance, and restart to first commit (which adds
# the group join and, on the test broker, the watchdog's rejoin when the dead member kept its
# partitions).
#
#   scripts/bench-first-commit.sh                       # BACKLOGS="10000 50000 200000" RATE=300 RESTARTS=4
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOGS=${BACKLOGS:-10000 50000 200000}
RATE=${RATE:-300}
RESTARTS=${RESTARTS:-4}

. scripts/bench-lib.sh
bench_setup producer raw-consumer stream-aggregator
db="cstest_bench_first_$stamp"
bench_db "$db"
export DATABASE_URL="$test_url/$db" LOG_FORMAT=json STATS_INTERVAL=1h KAFKA_SESSION_TIMEOUT=6s
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; bench_cleanup' EXIT

# The `since_assignment` of the n-th "first write" line of a log, in ms (empty when absent).
first_commit_ms() { # log n
  python3 - "$1" "${2:-1}" <<'PY'
import json, re, sys
n, seen = int(sys.argv[2]), 0
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "first write after the assignment committed":
        seen += 1
        if seen == n:
            v = e["since_assignment"]
            m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", v)
            scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1, "s": 1000}[m.group(2)]
            print(f"{float(m.group(1)) * scale:.0f}")
PY
}

# Waits up to $4 s for the n-th first-write line of log $1; prints ms since $3 (epoch ns) or nothing.
wait_first_commit() { # log n started_ns limit_s
  local i
  for i in $(seq 1 $(($4 * 20))); do
    if [ -n "$(first_commit_ms "$1" "$2")" ]; then
      echo $((($(date +%s%N) - $3) / 1000000))
      return 0
    fi
    sleep 0.05
  done
}

echo "| backlog (updates, 3 partitions) | assignment to first commit ms | whole backlog in MySQL s |"
echo "|---|---|---|"
for n in $BACKLOGS; do
  topic="first_backlog_${n}_$stamp"
  ./target/release/producer --source simulate --rate 0 --count "$n" --pair-count 10 --seed 1 \
    --topic "$topic" --topic-partitions 3 2>"$work/fill-$n.log" || { cat "$work/fill-$n.log" >&2; exit 1; }
  ./target/release/raw-consumer --topic "$topic" --group "first-$n-$stamp" --exit-idle 2s --max-wait 120s \
    2>"$work/backlog-$n.log" || { tail -20 "$work/backlog-$n.log" >&2; exit 1; }
  read -r secs <<<"$(log_fields "$work/backlog-$n.log" statistics active_seconds)"
  echo "| $n | $(first_commit_ms "$work/backlog-$n.log") | $(printf '%.2f' "$secs") |"
done

raw="first_live_$stamp"
agg="first_live_agg_$stamp"
./target/release/producer --source simulate --rate "$RATE" --pair-count 6 --seed 2 --jitter 200ms \
  --topic "$raw" --topic-partitions 3 2>"$work/producer.log" &
pids+=($!)
start() { # service instance: starts it (log $work/<service>-<instance>.log), sets $started, $last_pid
  local svc=$1 args=()
  case $svc in
    raw-consumer) args=(--topic "$raw" --group "first-raw-$stamp") ;;
    stream-aggregator) args=(--topic "$raw" --output-topic "$agg" --group "first-agg-$stamp" --window 10s --watermark 5s) ;;
  esac
  started=$(date +%s%N)
  ./target/release/"$svc" "${args[@]}" 2>"$work/$svc-$2.log" &
  pids+=($!)
  last_pid=$!
}
echo
echo "| service, restart | assignment to first commit ms | restart to first commit ms |"
echo "|---|---|---|"
for svc in raw-consumer stream-aggregator; do
  start "$svc" 0
  wait_first_commit "$work/$svc-0.log" 1 "$started" 60 >/dev/null || true
  for r in $(seq 1 "$RESTARTS"); do
    sleep 2
    kill -9 "$last_pid"
    start "$svc" "$r"
    took=$(wait_first_commit "$work/$svc-$r.log" 1 "$started" 90)
    echo "| $svc, $r | $(first_commit_ms "$work/$svc-$r.log") | ${took:-none within 90 s} |"
  done
  kill -9 "$last_pid"
done
