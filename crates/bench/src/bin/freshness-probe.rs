//! `freshness-probe`: measures freshness per update from outside the services, by watching the
//! tables (and, optionally, the topic) as a user would.
//!
//! - `stream_agg`: every `--interval` it reads the window rows changed in the last seconds
//!   (`updated_at`, indexed) and notes when each (pair, window) count was first seen. After
//!   `--seconds` it reads `raw_coin_data` (every update, stored by the raw consumer) and, for the
//!   k-th update of a pair in a window (by event time; a source that sends each pair in time
//!   order, like CoinAPI's stream, `fake-coinapi-ws` and the simulator without jitter, is applied
//!   in that order), takes the first observation of that window with a count of at least k.
//! - `raw_coin_data`: every `--interval` it reads the rows added since the last read (by id) and
//!   notes when each was first seen.
//! - the floor (`--topic`): a plain librdkafka consumer of the raw topic (assigned at its end,
//!   doing nothing else) notes when each message arrives: the broker's own produce -> consume
//!   latency in the same run, which no consumer of the topic can beat.
//!
//! The origin of every measure is `--origin`: `time` (the update's event time: with `time`
//! stamped when the source sent the update, as `fake-coinapi-ws` does, freshness from send to
//! row) or `received` (when the producer received it, `received_at`). All on one clock; a table
//! observation is at most one interval (plus one query) late: an upper bound per update.
//!
//! Prints `key=value` figures (ms): `updates`, `unobserved`, `p50`, `p95`, `p99`, `max` for
//! `stream_agg`; the same prefixed `raw_` for `raw_coin_data` and `floor_` for the plain consumer.

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
    /// Where each update's freshness starts: its event `time` or `received` (by the producer).
    #[arg(long, value_enum, default_value = "time")]
    origin: Origin,
    /// The raw topic, for the floor: a plain consumer's own latency in the same run.
    #[arg(long, requires = "bootstrap_servers")]
    topic: Option<String>,
    #[arg(long)]
    bootstrap_servers: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Origin {
    Time,
    Received,
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

/// What the watch saw: window counts, and when each raw row was first seen (µs) with its
/// origin (µs).
struct Watched {
    windows: Seen,
    raw: Vec<i64>,
}

async fn watch(pool: &sqlx::MySqlPool, args: &Args) -> anyhow::Result<Watched> {
    let mut seen = Seen::new();
    let (mut raw, mut last_id) = (Vec::new(), 0i64);
    let origin = match args.origin {
        Origin::Time => "`time`",
        Origin::Received => "received_at",
    };
    let raw_sql = format!(
        "SELECT id, {origin} FROM raw_coin_data WHERE id > ? AND {origin} IS NOT NULL ORDER BY id"
    );
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
        let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(&raw_sql)
            .bind(last_id)
            .fetch_all(pool)
            .await?;
        let now = us(Utc::now());
        for (id, from) in rows {
            last_id = last_id.max(id);
            raw.push(now - us(from));
        }
    }
    Ok(Watched { windows: seen, raw })
}

/// The floor: a plain consumer assigned at the end of every partition of `topic`, noting each
/// message's latency from its origin (µs) until `until`.
fn floor(bootstrap: &str, topic: &str, origin: Origin, until: Instant) -> anyhow::Result<Vec<i64>> {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };
    let consumer: BaseConsumer =
        common::kafka::consumer_config(bootstrap, "freshness-probe").create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::End)?;
    }
    consumer.assign(&tpl)?;
    eprintln!("floor consumer assigned to {} partitions", tpl.count());
    let mut out = Vec::new();
    while Instant::now() < until {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let now = us(Utc::now());
        let Some(u) = m?
            .payload()
            .and_then(|p| common::RateEvent::from_json(p).ok())
        else {
            continue;
        };
        let from = match origin {
            Origin::Time => Some(u.time_us),
            Origin::Received => u.received_us,
        };
        out.extend(from.map(|f| now - f));
    }
    Ok(out)
}

/// `key=value` percentiles (ms) of `f` (µs), keys prefixed.
fn figures(prefix: &str, mut f: Vec<i64>, unobserved: usize) -> String {
    if f.is_empty() {
        return format!("{prefix}updates=0 {prefix}unobserved={unobserved}");
    }
    f.sort_unstable();
    let q = |p: f64| f[((f.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    format!(
        "{prefix}updates={} {prefix}unobserved={unobserved} {prefix}p50={:.1} {prefix}p95={:.1} {prefix}p99={:.1} {prefix}max={:.1}",
        f.len(),
        q(0.5),
        q(0.95),
        q(0.99),
        q(1.0)
    )
}

/// Freshness (µs, from each update's origin) of every update that an observation covers, and
/// how many none did. `updates`: (pair, event time, origin) in event-time order per pair.
fn freshness(seen: &Seen, updates: &[(Pair, i64, i64)]) -> (Vec<i64>, usize) {
    let mut windows: HashMap<&Pair, Vec<(i64, i64, &Counts)>> = HashMap::new();
    for ((pair, start, end), counts) in seen {
        windows
            .entry(pair)
            .or_default()
            .push((*start, *end, counts));
    }
    let mut rank: HashMap<(&Pair, i64), i64> = HashMap::new();
    let (mut out, mut unobserved) = (Vec::with_capacity(updates.len()), 0);
    for (pair, time, origin) in updates {
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
            Some(&(_, at)) => out.push(at - origin),
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
    let until = Instant::now() + args.seconds;
    let floor = match (&args.topic, &args.bootstrap_servers) {
        (Some(topic), Some(bootstrap)) => {
            let (topic, bootstrap, origin) = (topic.clone(), bootstrap.clone(), args.origin);
            Some(tokio::task::spawn_blocking(move || {
                floor(&bootstrap, &topic, origin, until)
            }))
        }
        _ => None,
    };
    eprintln!("watching");
    let watched = watch(&pool, &args).await?;
    let origin = match args.origin {
        Origin::Time => "`time`",
        Origin::Received => "COALESCE(received_at, `time`)",
    };
    let raw: Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT asset_id_base, asset_id_quote, `time`, {origin} FROM raw_coin_data \
         ORDER BY asset_id_base, asset_id_quote, `time`"
    ))
    .fetch_all(&pool)
    .await?;
    let updates: Vec<(Pair, i64, i64)> = raw
        .into_iter()
        .map(|(b, q, t, o)| ((b, q), us(t), us(o)))
        .collect();
    let (f, unobserved) = freshness(&watched.windows, &updates);
    anyhow::ensure!(!f.is_empty(), "no update was seen in a window row");
    let mut line = vec![figures("", f, unobserved), figures("raw_", watched.raw, 0)];
    if let Some(floor) = floor {
        line.push(figures("floor_", floor.await??, 0));
    }
    println!("{}", line.join(" "));
    Ok(())
}
