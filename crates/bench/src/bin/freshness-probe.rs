//! `freshness-probe`: measures, per update, the time from its event `time` to the moment its
//! window row in `stream_agg` first reflects it, by watching the table from outside.
//!
//! Every `--interval` it reads the window rows changed in the last seconds (`updated_at`, indexed)
//! and notes when each (pair, window) count was first seen. After `--seconds` it reads
//! `raw_coin_data` (every update, stored by the raw consumer) and, for the k-th update of a pair in
//! a window (by event time; a source that sends each pair in time order, like CoinAPI's stream
//! and `fake-coinapi-ws`, is applied in that order), takes the first observation of that window
//! with a count of at least k. With `time` stamped when the source sent the update (as
//! `fake-coinapi-ws` does), that is freshness from send to row, measured on one clock, observed at
//! most one interval (plus one query) after the commit: an upper bound per update.
//!
//! Prints `key=value` figures (ms): `updates`, `unobserved`, `p50`, `p95`, `p99`, `max`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// mysql://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How often to read the changed window rows.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    interval: Duration,
    /// How long to watch.
    #[arg(long, value_parser = humantime::parse_duration)]
    seconds: Duration,
}

type Pair = (String, String);

/// Per window (pair, start, end): the counts it was seen with, each with when it was first seen
/// (µs since the epoch).
type Seen = HashMap<(Pair, i64, i64), Counts>;

/// (count, first seen µs), in increasing count order.
type Counts = Vec<(i64, i64)>;

/// A window row as read: base, quote, start, end, count.
type WindowRow = (String, String, DateTime<Utc>, DateTime<Utc>, i64);

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

async fn watch(pool: &sqlx::MySqlPool, args: &Args) -> anyhow::Result<Seen> {
    let mut seen = Seen::new();
    let until = Instant::now() + args.seconds;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let rows: Vec<WindowRow> = sqlx::query_as(
            "SELECT asset_id_base, asset_id_quote, start_time, end_time, update_count \
             FROM stream_agg WHERE updated_at >= UTC_TIMESTAMP(6) - INTERVAL 5 SECOND",
        )
        .fetch_all(pool)
        .await?;
        let now = us(Utc::now());
        for (base, quote, start, end, count) in rows {
            let counts = seen.entry(((base, quote), us(start), us(end))).or_default();
            if counts.last().is_none_or(|&(c, _)| count > c) {
                counts.push((count, now));
            }
        }
    }
    Ok(seen)
}

/// Freshness (µs) of every update that an observation covers, and how many none did.
fn freshness(seen: &Seen, updates: &[(Pair, i64)]) -> (Vec<i64>, usize) {
    let mut windows: HashMap<&Pair, Vec<(i64, i64, &Counts)>> = HashMap::new();
    for ((pair, start, end), counts) in seen {
        windows
            .entry(pair)
            .or_default()
            .push((*start, *end, counts));
    }
    let mut rank: HashMap<(&Pair, i64), i64> = HashMap::new();
    let (mut out, mut unobserved) = (Vec::with_capacity(updates.len()), 0);
    for (pair, time) in updates {
        let window = windows
            .get(pair)
            .and_then(|ws| ws.iter().find(|(s, e, _)| s <= time && time < e));
        let Some(&(start, _, counts)) = window else {
            unobserved += 1;
            continue;
        };
        let k = rank.entry((pair, start)).or_default();
        *k += 1;
        match counts.iter().find(|&&(c, _)| c >= *k) {
            Some(&(_, at)) => out.push(at - time),
            None => unobserved += 1,
        }
    }
    (out, unobserved)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await?;
    let seen = watch(&pool, &args).await?;
    let raw: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, `time` FROM raw_coin_data \
         ORDER BY asset_id_base, asset_id_quote, `time`",
    )
    .fetch_all(&pool)
    .await?;
    let updates: Vec<(Pair, i64)> = raw.into_iter().map(|(b, q, t)| ((b, q), us(t))).collect();
    let (mut f, unobserved) = freshness(&seen, &updates);
    anyhow::ensure!(!f.is_empty(), "no update was seen in a window row");
    f.sort_unstable();
    let q = |p: f64| f[((f.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!(
        "updates={} unobserved={unobserved} p50={:.1} p95={:.1} p99={:.1} max={:.1}",
        f.len(),
        q(0.5),
        q(0.95),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
