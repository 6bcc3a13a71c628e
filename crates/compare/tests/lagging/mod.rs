//! A pipeline's tables written as its consumers write them, so that a test can put the raw
//! consumer and the aggregator at chosen offsets: each write is one transaction holding its rows
//! and its group's next offsets in `kafka_offsets`, as the services' are.
//!
//! Two pairs on topic `t`: BTC/USD on partition 0, ETH/USD on partition 1, one update a second
//! from [`T0`] (offset `k` at `T0 + k` s); windows of 10 s, watermark 5 s (aggregator group
//! [`GROUP`], its one spec; raw consumer group [`RAW_GROUP`]).
#![allow(dead_code)]

use std::collections::BTreeMap;

use sqlx::{Connection, MySqlConnection};
use testkit::TestDb;

/// 2024-08-05 12:00:00 UTC, µs.
pub const T0: i64 = 1_722_859_200_000_000;
pub const SEC: i64 = 1_000_000;
pub const WINDOW: i64 = 10 * SEC;
pub const WATERMARK: i64 = 5 * SEC;
pub const GROUP: &str = "agg";
pub const RAW_GROUP: &str = "raw";
pub const TOPIC: &str = "t";
pub const PAIRS: [(&str, i32); 2] = [("BTC", 0), ("ETH", 1)];

/// One message on the topic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub base: &'static str,
    pub partition: i32,
    pub offset: i64,
    pub time_us: i64,
    pub rate: f64,
}

/// The updates of pair `i` at offsets `offsets`.
pub fn events(i: usize, offsets: std::ops::Range<i64>) -> Vec<Event> {
    let (base, partition) = PAIRS[i];
    offsets
        .map(|k| Event {
            base,
            partition,
            offset: k,
            time_us: T0 + k * SEC,
            rate: 100.0 * (i as f64 + 1.0) + (k % 7) as f64 + 0.25,
        })
        .collect()
}

/// Both pairs' first 100 updates.
pub fn all() -> Vec<Event> {
    let mut e = events(0, 0..100);
    e.extend(events(1, 0..100));
    e
}

/// A message of ETH at offset 100 with an event time long past (late for the aggregator, whose
/// watermark is then at T0 + 94 s).
pub fn late_eth() -> Event {
    Event {
        base: "ETH",
        partition: 1,
        offset: 100,
        time_us: T0 + 15 * SEC + SEC / 2,
        rate: 999.0,
    }
}

pub fn time(us: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .naive_utc()
}

async fn conn(db: &TestDb) -> MySqlConnection {
    use sqlx::ConnectOptions;
    db.connect_options().connect().await.unwrap()
}

/// The aggregator group's window spec.
pub async fn spec(db: &TestDb) {
    sqlx::query(
        "INSERT INTO stream_agg_specs (consumer_group, window_us, slide_us, watermark_us, mode) \
         VALUES (?, ?, ?, ?, 'update')",
    )
    .bind(GROUP)
    .bind(WINDOW)
    .bind(WINDOW)
    .bind(WATERMARK)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn offsets(tx: &mut MySqlConnection, group: &str, next: &[(i32, i64)]) {
    for (p, o) in next {
        sqlx::query(
            "INSERT INTO kafka_offsets (consumer_group, topic, kafka_partition, next_offset) \
             VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
        )
        .bind(group)
        .bind(TOPIC)
        .bind(p)
        .bind(o)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
}

/// The raw consumer stores `events` and its next offsets, in one transaction.
pub async fn raw(db: &TestDb, events: &[Event], next: &[(i32, i64)]) {
    let mut c = conn(db).await;
    let mut tx = c.begin().await.unwrap();
    for e in events {
        sqlx::query(
            "INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`, received_at, \
             kafka_partition, kafka_offset) VALUES (?, 'USD', ?, ?, ?, ?, ?)",
        )
        .bind(e.base)
        .bind(e.rate)
        .bind(time(e.time_us))
        .bind(time(e.time_us))
        .bind(e.partition)
        .bind(e.offset)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    offsets(&mut tx, RAW_GROUP, next).await;
    tx.commit().await.unwrap();
}

/// A window as the aggregator keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub last: f64,
    pub last_time: i64,
}

/// The aggregator's windows of `events` (all applied): `(base, start µs)` to the window.
pub fn windows(events: &[Event]) -> BTreeMap<(&'static str, i64), Window> {
    let mut out: BTreeMap<(&'static str, i64), Window> = BTreeMap::new();
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.time_us);
    for e in sorted {
        let start = e.time_us.div_euclid(WINDOW) * WINDOW;
        out.entry((e.base, start))
            .and_modify(|w| {
                w.count += 1;
                w.sum += e.rate;
                w.min = w.min.min(e.rate);
                w.max = w.max.max(e.rate);
                w.last = e.rate;
                w.last_time = e.time_us;
            })
            .or_insert(Window {
                count: 1,
                sum: e.rate,
                min: e.rate,
                max: e.rate,
                first: e.rate,
                last: e.rate,
                last_time: e.time_us,
            });
    }
    out
}

/// The aggregator's flush after applying `events` (every event the group has applied): its
/// windows upserted (final once the watermark, the largest event time of their partition less
/// 5 s, passed their end), the update counter's rows of the final ones, and the aggregator's
/// next offsets, in one transaction.
pub async fn stream(db: &TestDb, events: &[Event], next: &[(i32, i64)]) {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for e in events {
        let l = latest.entry(e.base).or_insert(e.time_us);
        *l = (*l).max(e.time_us);
    }
    let mut c = conn(db).await;
    let mut tx = c.begin().await.unwrap();
    for ((base, start), w) in windows(events) {
        let is_final = start + WINDOW <= latest[base] - WATERMARK;
        upsert_window(&mut tx, base, start, &w, is_final).await;
        if is_final {
            sqlx::query(
                "INSERT INTO coin_update_count (consumer_group, window_us, slide_us, start_time, \
                 end_time, asset_id_base, asset_id_quote, update_count, is_final) \
                 VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, TRUE) \
                 ON DUPLICATE KEY UPDATE update_count = VALUES(update_count), is_final = TRUE",
            )
            .bind(GROUP)
            .bind(WINDOW)
            .bind(WINDOW)
            .bind(time(start))
            .bind(time(start + WINDOW))
            .bind(base)
            .bind(w.count)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    offsets(&mut tx, GROUP, next).await;
    tx.commit().await.unwrap();
}

/// Upserts one `stream_agg` row (stamped by the database's clock).
pub async fn upsert_window(
    conn: &mut MySqlConnection,
    base: &str,
    start: i64,
    w: &Window,
    is_final: bool,
) {
    sqlx::query(
        "INSERT INTO stream_agg (consumer_group, window_us, slide_us, start_time, end_time, \
         asset_id_base, asset_id_quote, update_count, avg_rate, min_rate, max_rate, sum_rate, \
         first_rate, last_rate, last_event_time, is_final, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE update_count = VALUES(update_count), avg_rate = VALUES(avg_rate), \
         min_rate = VALUES(min_rate), max_rate = VALUES(max_rate), sum_rate = VALUES(sum_rate), \
         first_rate = VALUES(first_rate), last_rate = VALUES(last_rate), \
         last_event_time = VALUES(last_event_time), is_final = VALUES(is_final), updated_at = VALUES(updated_at)",
    )
    .bind(GROUP)
    .bind(WINDOW)
    .bind(WINDOW)
    .bind(time(start))
    .bind(time(start + WINDOW))
    .bind(base)
    .bind(w.count)
    .bind(w.sum / w.count as f64)
    .bind(w.min)
    .bind(w.max)
    .bind(w.sum)
    .bind(w.first)
    .bind(w.last)
    .bind(time(w.last_time))
    .bind(is_final)
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// The aggregator reads the late ETH message: recorded in `late_events` (not applied, watermark
/// T0 + 94 s) with its next offset on partition 1, in one transaction.
pub async fn aggregator_reads_late_eth(db: &TestDb) {
    let e = late_eth();
    let mut c = conn(db).await;
    let mut tx = c.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, window_us, \
         slide_us, asset_id_base, asset_id_quote, rate, `time`, watermark, windows_missed, applied) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 'USD', ?, ?, ?, 1, FALSE)",
    )
    .bind(GROUP)
    .bind(TOPIC)
    .bind(e.partition)
    .bind(e.offset)
    .bind(WINDOW)
    .bind(WINDOW)
    .bind(e.base)
    .bind(e.rate)
    .bind(time(e.time_us))
    .bind(time(T0 + 94 * SEC))
    .execute(&mut *tx)
    .await
    .unwrap();
    offsets(&mut tx, GROUP, &[(1, 101)]).await;
    tx.commit().await.unwrap();
}

/// A live moment: the aggregator has applied offsets 0..100 of both partitions; the raw consumer
/// has stored only BTC's first 65 (it is behind on partition 0), but ETH's 100 and the late ETH
/// message the aggregator has not read yet (it is ahead on partition 1).
pub async fn lagging(db: &TestDb) {
    spec(db).await;
    stream(db, &all(), &[(0, 100), (1, 100)]).await;
    let mut raw_events = events(0, 0..65);
    raw_events.extend(events(1, 0..100));
    raw_events.push(late_eth());
    raw(db, &raw_events, &[(0, 65), (1, 101)]).await;
}

/// Both consumers catch up: the raw consumer stores BTC's offsets 65..100; the aggregator reads
/// the late ETH message.
pub async fn catch_up(db: &TestDb) {
    raw(db, &events(0, 65..100), &[(0, 100)]).await;
    aggregator_reads_late_eth(db).await;
}
