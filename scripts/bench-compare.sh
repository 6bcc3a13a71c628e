#!/usr/bin/env bash
# compare and `compare serve` benchmarks on the local MariaDB/MySQL (see docs/benchmarks.md).
#
# Full recompute: RAW_ROWS raw updates (10 pairs, 1 hour, 1-minute windows; 10,000,000 by
# default, the issue's case) and the matching stream_agg; `compare --full` run RUNS times, each
# timed whole (wall clock of the process) and its batch part as the report gives it; then one
# incremental run (`compare` without --full: only the windows over the newest rows, those of
# the re-read margin here, are recomputed).
# Dashboard: 50 pairs x 24 h of 1-minute windows (72,000 stream windows, 432,000 raw rows);
# `compare serve` started on it (time to its first full load), then `dashboard-load`: every window
# of one pair from /api/windows, and the page's first load in headless Chromium until every chart
# is drawn.
#
#   scripts/bench-compare.sh                    # RAW_ROWS=10000000 RUNS=3
#   RAW_ROWS=1000000 scripts/bench-compare.sh   # quicker
#   RUNS=0 scripts/bench-compare.sh             # the dashboard part only
set -euo pipefail
cd "$(dirname "$0")/.."
RAW_ROWS=${RAW_ROWS:-10000000}
RUNS=${RUNS:-3}

. scripts/bench-lib.sh
bench_setup compare bench
db="cstest_bench_cmp_$stamp"
dash="cstest_bench_dash_$stamp"
bench_db "$db"
bench_db "$dash"
serve_pid=
elapsed() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.2f}")' "$1"; }
trap '[ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; bench_cleanup' EXIT

if [ "$RUNS" -gt 0 ]; then
  # 10 pairs over one hour: one update per pair every 3,600,000,000 * 10 / RAW_ROWS µs.
  step_us=$((36000000000 / RAW_ROWS))
  echo "filling $db: $RAW_ROWS raw rows (10 pairs, 1 h, an update every $step_us us per pair)" >&2
  t0=$EPOCHREALTIME
  ./target/release/compare-data --database-url "$test_url/$db" --pairs 10 --hours 1 --step "${step_us}us" \
    --window 60s --group bench-cmp
  echo "filled in $(elapsed "$t0") s" >&2

  for run in $(seq 1 "$RUNS") incremental; do
    full=--full
    [ "$run" = incremental ] && full=
    t0=$EPOCHREALTIME
    DATABASE_URL="$test_url/$db" ./target/release/compare --group bench-cmp --format json \
      --fail-on-mismatch $full >"$work/report.json" 2>"$work/compare.log"
    wall=$(elapsed "$t0")
    python3 - "$work/report.json" "$run" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["sections"][0]
a = r["accuracy"]
print(f"compare run {sys.argv[2]} ({r['batch_mode']}): {float(sys.argv[3]):.2f} s wall; batch "
      f"{r['batch_seconds']:.2f} s over {r['raw_rows']} rows; windows compared {a['windows_compared']}, "
      f"matched {a['matched']}, passed {a['passed']}")
PY
  done

fi

echo "filling $dash: 50 pairs x 24 h, 1-minute windows" >&2
./target/release/compare-data --database-url "$test_url/$dash" --pairs 50 --hours 24 --step 10s \
  --window 60s --group bench-dash
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
t0=$EPOCHREALTIME
DATABASE_URL="$test_url/$dash" LOG_FORMAT=json ./target/release/compare serve --group bench-dash \
  --listen "127.0.0.1:$port" 2>"$work/serve.log" &
serve_pid=$!
until grep -q "both sides read" "$work/serve.log"; do
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.05
done
echo "compare serve: first full load (72,000 windows both sides) in $(elapsed "$t0") s" \
  "(started to loaded: $(log_fields "$work/serve.log" "both sides read" took))"
./target/release/dashboard-load --url "http://127.0.0.1:$port" --pair C7/USD
[ -z "${DASHBOARD_HOLD:-}" ] || { echo "serving on $port; DASHBOARD_HOLD set: holding" >&2; sleep "$DASHBOARD_HOLD"; }
