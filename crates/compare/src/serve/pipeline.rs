//! The pipeline panel: per service of the group's run, its instances' latest statistics rows
//! (read by id, a primary-key range), recent throughput, lag, latency, late events, dead letters,
//! and when it was last seen (stale when its rows stopped coming); and the dead letters not
//! replayed yet: how many, and the newest few (service, reason, error, when). Which instances are
//! the run's is [`crate::services`]' rule: the group's own aggregator, never another group's,
//! and the other services that ran with it (a finished run's, not a later one's).

use std::collections::BTreeMap;

use common::figures::{LatencyFigures, SpecificFigures};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::{
    batch::us,
    services::{self, Instance},
};

/// One `service_stats` row.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub id: i64,
    pub service: String,
    pub instance: String,
    /// The consumer group the instance runs in (none for the producer).
    pub group: Option<String>,
    pub started_us: i64,
    pub recorded_us: i64,
    pub events_in: i64,
    pub dead_letters: i64,
    pub late_events: i64,
    pub consumer_lag: Option<i64>,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: i64,
    pub details: SpecificFigures,
}

/// One service on the panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePanel {
    pub service: String,
    /// Instances whose rows still come.
    pub instances: usize,
    pub events_in: i64,
    /// Between each live instance's last two rows, summed.
    pub events_per_second: f64,
    pub lag: Option<i64>,
    pub late_events: i64,
    pub dead_letters: i64,
    pub last_seen_us: i64,
    pub seconds_since_seen: f64,
    /// No row for three of its statistics intervals.
    pub stale: bool,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The aggregator's end-to-end latency (its latest instance).
    pub latency: Option<LatencyFigures>,
}

/// One dead letter not replayed, as the panel lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub service: String,
    /// `malformed`, `invalid` or `rejected`.
    pub reason: String,
    /// The first [`ERROR_EXCERPT`] characters of the error.
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub recorded_us: i64,
}

/// The dead letters not replayed yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetters {
    /// How many (`replayed_at` NULL).
    pub not_replayed: i64,
    /// The newest few of them, newest first.
    pub newest: Vec<DeadLetter>,
}

/// Dead letters listed on the panel.
pub const NEWEST_DEAD_LETTERS: i64 = 5;
/// Characters of a dead letter's error shown.
pub const ERROR_EXCERPT: i64 = 160;

/// The latest two rows of every instance seen in the last hour (and of the run's, however old),
/// and the dead letters.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Last id read.
    pub cursor: i64,
    instances: BTreeMap<String, (Option<StatsRow>, StatsRow)>,
    pub dead_letters: DeadLetters,
}

/// Rows kept in view at start (the latest of them per instance).
const START_ROWS: i64 = 5_000;
/// Instances not seen for this long are dropped from the panel.
const FORGET_US: i64 = 3_600_000_000;
/// Statistics interval assumed before an instance's second row.
const DEFAULT_INTERVAL_US: i64 = 10_000_000;

impl Pipeline {
    pub fn add(&mut self, row: StatsRow) {
        self.cursor = self.cursor.max(row.id);
        match self.instances.get_mut(&row.instance) {
            Some((prev, last)) if row.id > last.id => {
                *prev = Some(std::mem::replace(last, row));
            }
            Some(_) => {}
            None => {
                self.instances.insert(row.instance.clone(), (None, row));
            }
        }
    }

    /// The panel of `run` at `now_us` (the database's clock, like the rows').
    pub fn panel(&mut self, now_us: i64, run: &services::Run) -> Vec<ServicePanel> {
        let span = run.span(self.instances.values().map(|(_, last)| instance(last)));
        self.instances.retain(|_, (_, last)| {
            now_us - last.recorded_us < FORGET_US
                || (span.is_some() && run.belongs(&instance(last), span))
        });
        let mut by: BTreeMap<&str, Vec<Seen>> = BTreeMap::new();
        for (prev, last) in self.instances.values() {
            if !run.belongs(&instance(last), span) {
                continue;
            }
            let interval = prev
                .as_ref()
                .map_or(DEFAULT_INTERVAL_US, |p| last.recorded_us - p.recorded_us)
                .max(1_000_000);
            let stale = now_us - last.recorded_us > 3 * interval + 5_000_000;
            by.entry(last.service.as_str())
                .or_default()
                .push((prev, last, stale));
        }
        by.into_iter()
            .map(|(service, rows)| {
                let live: Vec<_> = rows.iter().filter(|(_, _, stale)| !stale).collect();
                // Figures of the live instances; of all when none is (the last known).
                let shown: Vec<_> = if live.is_empty() {
                    rows.iter().collect()
                } else {
                    live.clone()
                };
                let last_seen_us = rows
                    .iter()
                    .map(|(_, l, _)| l.recorded_us)
                    .max()
                    .unwrap_or(0);
                let rate = |(prev, last, _): &&(&Option<StatsRow>, &StatsRow, bool)| {
                    prev.as_ref().map_or(0.0, |p| {
                        let dt = (last.recorded_us - p.recorded_us) as f64 / 1e6;
                        if dt > 0.0 {
                            (last.events_in - p.events_in).max(0) as f64 / dt
                        } else {
                            0.0
                        }
                    })
                };
                let lags: Vec<i64> = shown
                    .iter()
                    .filter_map(|(_, l, _)| l.consumer_lag)
                    .collect();
                ServicePanel {
                    service: service.to_owned(),
                    instances: live.len(),
                    events_in: shown.iter().map(|(_, l, _)| l.events_in).sum(),
                    events_per_second: live.iter().map(rate).sum::<f64>() + 0.0,
                    lag: (!lags.is_empty()).then(|| lags.iter().sum()),
                    late_events: shown.iter().map(|(_, l, _)| l.late_events).sum(),
                    dead_letters: shown.iter().map(|(_, l, _)| l.dead_letters).sum(),
                    last_seen_us,
                    seconds_since_seen: (now_us - last_seen_us).max(0) as f64 / 1e6,
                    stale: live.is_empty(),
                    cpu_seconds: shown.iter().map(|(_, l, _)| l.cpu_seconds).sum(),
                    peak_rss_mb: shown
                        .iter()
                        .map(|(_, l, _)| l.peak_rss_bytes as f64 / 1_048_576.0)
                        .fold(0.0, f64::max),
                    latency: shown
                        .iter()
                        .max_by_key(|(_, l, _)| l.recorded_us)
                        .and_then(|(_, l, _)| l.details.aggregator.as_ref())
                        .map(|a| a.latency.clone())
                        .filter(|l| l.samples > 0),
                }
            })
            .collect()
    }
}

/// An instance's previous and last rows, and whether it is stale.
type Seen<'a> = (&'a Option<StatsRow>, &'a StatsRow, bool);

/// An instance as the rule sees it, from its last row.
fn instance(row: &StatsRow) -> Instance<'_> {
    Instance {
        service: &row.service,
        group: row.group.as_deref(),
        started_us: row.started_us,
        last_us: row.recorded_us,
    }
}

type Row = (
    i64,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    f64,
    i64,
    Option<String>,
);

/// The dead letters not replayed: their number (the `(service, replayed_at, id)` index) and the
/// newest few, their errors cut to an excerpt in SQL.
pub async fn dead_letters(pool: &MySqlPool) -> anyhow::Result<DeadLetters> {
    let not_replayed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
            .fetch_one(pool)
            .await?;
    type Row = (i64, String, String, String, String, i32, i64, i64);
    let rows: Vec<Row> = if not_replayed == 0 {
        Vec::new()
    } else {
        sqlx::query_as(&format!(
            "SELECT id, service, reason, LEFT(error, ?), topic, kafka_partition, kafka_offset, \
                    CAST({} AS SIGNED) \
             FROM dead_letters WHERE replayed_at IS NULL ORDER BY id DESC LIMIT ?",
            us("recorded_at")
        ))
        .bind(ERROR_EXCERPT)
        .bind(NEWEST_DEAD_LETTERS)
        .fetch_all(pool)
        .await?
    };
    let newest = rows
        .into_iter()
        .map(
            |(id, service, reason, error, topic, partition, offset, recorded_us)| DeadLetter {
                id,
                service,
                reason,
                error,
                topic,
                partition,
                offset,
                recorded_us,
            },
        )
        .collect();
    Ok(DeadLetters {
        not_replayed,
        newest,
    })
}

/// Rows after `cursor`, and the database's clock. At start (`cursor` 0): the latest few
/// thousand rows, or from a few thousand before the group's aggregator's last row when that is
/// older (a finished run's figures).
pub async fn read(
    pool: &MySqlPool,
    cursor: i64,
    run: &services::Run,
) -> anyhow::Result<(Vec<StatsRow>, i64)> {
    let now_us: i64 = sqlx::query_scalar(&format!(
        "SELECT CAST({} AS SIGNED)",
        us("UTC_TIMESTAMP(6)")
    ))
    .fetch_one(pool)
    .await?;
    let after = if cursor > 0 {
        cursor
    } else {
        let (max, group_max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM service_stats), \
                    (SELECT MAX(id) FROM service_stats WHERE consumer_group = ? AND service = ?)",
        )
        .bind(&run.group)
        .bind(services::AGGREGATOR)
        .fetch_one(pool)
        .await?;
        max.unwrap_or(0).min(group_max.unwrap_or(i64::MAX)) - START_ROWS
    };
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT id, service, instance, consumer_group, CAST({} AS SIGNED), CAST({} AS SIGNED), events_in, \
                dead_letters, late_events, consumer_lag, cpu_seconds, peak_rss_bytes, details \
         FROM service_stats WHERE id > ? ORDER BY id LIMIT 10000",
        us("started_at"),
        us("recorded_at")
    ))
    .bind(after)
    .fetch_all(pool)
    .await?;
    Ok((rows.into_iter().map(stats_row).collect(), now_us))
}

fn stats_row(
    (
        id,
        service,
        instance,
        group,
        started_us,
        recorded_us,
        events_in,
        dead_letters,
        late_events,
        consumer_lag,
        cpu_seconds,
        peak_rss_bytes,
        details,
    ): Row,
) -> StatsRow {
    StatsRow {
        id,
        service,
        instance,
        group,
        started_us,
        recorded_us,
        events_in,
        dead_letters,
        late_events,
        consumer_lag,
        cpu_seconds,
        peak_rss_bytes,
        details: details
            .as_deref()
            .map(SpecificFigures::from_json)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, service: &str, instance: &str, t_s: i64, events: i64) -> StatsRow {
        StatsRow {
            id,
            service: service.into(),
            instance: instance.into(),
            group: None,
            started_us: 0,
            recorded_us: t_s * 1_000_000,
            events_in: events,
            dead_letters: 1,
            late_events: 0,
            consumer_lag: Some(5),
            cpu_seconds: 1.0,
            peak_rss_bytes: 10 << 20,
            details: SpecificFigures::default(),
        }
    }

    #[test]
    fn rates_instances_and_staleness() {
        let mut p = Pipeline::default();
        p.add(row(1, "raw-consumer", "a", 100, 0));
        p.add(row(2, "raw-consumer", "b", 100, 0));
        p.add(row(3, "raw-consumer", "a", 110, 1000));
        p.add(row(4, "raw-consumer", "b", 110, 500));
        p.add(row(5, "producer", "c", 50, 10));
        p.add(row(3, "raw-consumer", "a", 110, 1000)); // read again: ignored
        let run = services::Run::new("agg", "raw");
        let panel = p.panel(112_000_000, &run);
        let raw = panel.iter().find(|s| s.service == "raw-consumer").unwrap();
        assert_eq!(raw.instances, 2);
        assert!((raw.events_per_second - 150.0).abs() < 1e-9, "{raw:?}");
        assert_eq!(
            (raw.lag, raw.dead_letters, raw.events_in),
            (Some(10), 2, 1500)
        );
        assert!(!raw.stale);
        let producer = panel.iter().find(|s| s.service == "producer").unwrap();
        assert!(
            producer.stale,
            "one row 62 s ago, interval unknown (10 s): stale"
        );
        assert_eq!(producer.instances, 0);
        assert_eq!(producer.events_in, 10, "the last known figures stay shown");
        assert_eq!(p.cursor, 5);
        // An hour later everything is forgotten.
        assert!(p.panel(112_000_000 + FORGET_US, &run).is_empty());
    }
}
