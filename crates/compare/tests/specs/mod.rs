//! A database as a pipeline leaves it for one or more aggregator groups, each computing several
//! window specs: the raw rows, and per group and spec the spec recorded, the stream windows (as
//! an exact aggregator writes them: every event of the group's applied, late ones left out of the
//! windows they missed), the update counter's rows, the late events; and the services' statistics
//! rows. Written directly (no service runs): what compare reads.
#![allow(dead_code)]

use std::collections::BTreeMap;

use common::window::WindowSpec;
use testkit::TestDb;

/// 2024-08-05 12:00:00 UTC, µs.
pub const T0: i64 = 1_722_859_200_000_000;
pub const SEC: i64 = 1_000_000;
pub const WATERMARK: i64 = 5 * SEC;

/// One update (one message of the raw topic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub base: &'static str,
    pub partition: i32,
    pub offset: i64,
    pub time_us: i64,
    pub rate: f64,
}

/// `seconds` updates of each of `bases` (the i-th on partition i), one a second from [`T0`],
/// rates that go up and down.
pub fn events(bases: &[&'static str], seconds: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        for k in 0..seconds {
            out.push(Event {
                base,
                partition: i as i32,
                offset: k,
                time_us: T0 + k * SEC,
                rate: 100.0 * (i as f64 + 1.0) + ((k * 7) % 13) as f64 + 0.25,
            });
        }
    }
    out
}

pub fn time(us: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .naive_utc()
}

/// The raw consumer's rows of `events`.
pub async fn raw(db: &TestDb, events: &[Event]) {
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
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// The group's spec, as the aggregator records it.
pub async fn record(db: &TestDb, group: &str, spec: WindowSpec) {
    sqlx::query(
        "INSERT INTO stream_agg_specs (consumer_group, window_us, slide_us, watermark_us, mode) \
         VALUES (?, ?, ?, ?, 'update')",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(WATERMARK)
    .execute(&db.pool)
    .await
    .unwrap();
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

/// The windows of `spec` over `events`: `(base, start µs)` to the window.
pub fn windows(spec: WindowSpec, events: &[Event]) -> BTreeMap<(&'static str, i64), Window> {
    let mut out: BTreeMap<(&'static str, i64), Window> = BTreeMap::new();
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.time_us);
    for e in sorted {
        for start in spec.starts(e.time_us) {
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
    }
    out
}

/// The group's final windows of `spec` over `applied` (every event it applied to that spec) and
/// the update counter's rows of them (replacing those of the same windows); returns how many
/// windows.
pub async fn stream(db: &TestDb, group: &str, spec: WindowSpec, applied: &[Event]) -> usize {
    let all = windows(spec, applied);
    for ((base, start), w) in &all {
        sqlx::query(
            "INSERT INTO stream_agg (consumer_group, window_us, slide_us, start_time, end_time, \
             asset_id_base, asset_id_quote, update_count, avg_rate, min_rate, max_rate, sum_rate, \
             first_rate, last_rate, last_event_time, is_final, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, ?, ?, ?, ?, ?, ?, ?, TRUE, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE update_count = VALUES(update_count), avg_rate = VALUES(avg_rate), \
             min_rate = VALUES(min_rate), max_rate = VALUES(max_rate), sum_rate = VALUES(sum_rate), \
             first_rate = VALUES(first_rate), last_rate = VALUES(last_rate), \
             last_event_time = VALUES(last_event_time), updated_at = VALUES(updated_at)",
        )
        .bind(group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(time(*start))
        .bind(time(start + spec.size_us))
        .bind(base)
        .bind(w.count)
        .bind(w.sum / w.count as f64)
        .bind(w.min)
        .bind(w.max)
        .bind(w.sum)
        .bind(w.first)
        .bind(w.last)
        .bind(time(w.last_time))
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO coin_update_count (consumer_group, window_us, slide_us, start_time, \
             end_time, asset_id_base, asset_id_quote, update_count, is_final) \
             VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, TRUE) \
             ON DUPLICATE KEY UPDATE update_count = VALUES(update_count)",
        )
        .bind(group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(time(*start))
        .bind(time(start + spec.size_us))
        .bind(base)
        .bind(w.count)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    all.len()
}

/// `e` recorded by the group as late for `spec` (not applied to any of its windows).
pub async fn late(db: &TestDb, group: &str, spec: WindowSpec, e: &Event) {
    sqlx::query(
        "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, window_us, \
         slide_us, asset_id_base, asset_id_quote, rate, `time`, watermark, windows_missed, applied) \
         VALUES (?, 't', ?, ?, ?, ?, ?, 'USD', ?, ?, ?, ?, FALSE)",
    )
    .bind(group)
    .bind(e.partition)
    .bind(e.offset)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(e.base)
    .bind(e.rate)
    .bind(time(e.time_us))
    .bind(time(e.time_us + 60 * SEC))
    .bind(spec.windows_per_event())
    .execute(&db.pool)
    .await
    .unwrap();
}

/// One instance's statistics: rows every 10 s from `from_s` to `to_s` seconds ago (by the
/// database's clock), `events_in` in the last; an aggregator's carry a latency of `p50_ms`.
pub struct Stats<'a> {
    pub service: &'a str,
    pub group: Option<&'a str>,
    pub instance: &'a str,
    pub from_s: i64,
    pub to_s: i64,
    pub events_in: i64,
    pub p50_ms: f64,
}

pub async fn stats(db: &TestDb, s: Stats<'_>) {
    let details = (s.service == "stream-aggregator").then(|| {
        serde_json::json!({ "aggregator": { "latency": {
            "samples": 100, "p50_ms": s.p50_ms, "p95_ms": s.p50_ms, "p99_ms": s.p50_ms,
            "max_ms": s.p50_ms, "histogram_ms": [[s.p50_ms, 100]] } } })
        .to_string()
    });
    let mut ago = s.from_s;
    while ago >= s.to_s {
        let last = ago - 10 < s.to_s;
        sqlx::query(
            "INSERT INTO service_stats (service, instance, consumer_group, recorded_at, started_at, \
             events_in, events_out, cpu_seconds, peak_rss_bytes, details) \
             VALUES (?, ?, ?, UTC_TIMESTAMP(6) - INTERVAL ? SECOND, \
                     UTC_TIMESTAMP(6) - INTERVAL ? SECOND, ?, ?, 1.5, 10485760, ?)",
        )
        .bind(s.service)
        .bind(s.instance)
        .bind(s.group)
        .bind(ago)
        .bind(s.from_s)
        .bind(if last { s.events_in } else { 0 })
        .bind(if last { s.events_in } else { 0 })
        .bind(details.as_deref())
        .execute(&db.pool)
        .await
        .unwrap();
        ago -= 10;
    }
}
