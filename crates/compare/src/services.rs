//! Which services' figures (`service_stats`) belong to a report on one aggregator group, and
//! those figures per service. Several runs, each with its own aggregator group, may share one
//! database; a report on group `G` never shows another group's aggregator, and never a later
//! run's services beside a finished one:
//! - the aggregator's instances are those whose rows say consumer group `G`;
//! - the raw consumer's are those of `RAW_CONSUMER_GROUP` (or of no recorded group: rows from
//!   before groups were recorded);
//! - every other service (the producer, which has no group, and the update counter, in a group
//!   of its own) counts when its instance ran while `G`'s aggregator did: its first and last rows
//!   within `G`'s aggregator's first and last rows, widened by [`SLACK_US`] on each side. Before
//!   `G`'s aggregator has recorded a row there is nothing to go by, and every instance of those
//!   services counts (the raw consumer's in its group only).
//!
//! The rule ([`Run`]) is pure; the one-shot report reads each instance's latest row
//! ([`read`]), and the dashboard's pipeline panel applies the same rule to the rows it follows.

use std::collections::BTreeMap;

use common::figures::SpecificFigures;
use serde::Serialize;
use sqlx::MySqlConnection;

use crate::batch::us;

/// The aggregator's `service` name in `service_stats`.
pub const AGGREGATOR: &str = "stream-aggregator";
/// The raw consumer's.
pub const RAW_CONSUMER: &str = "raw-consumer";
/// How far outside the aggregator's lifetime another service's instance may have run and still
/// count (statistics rows come every few seconds; a producer may stop just before).
pub const SLACK_US: i64 = 30_000_000;

/// One instance as the rule sees it: its service, the consumer group its rows record, and its
/// first (`started_at`) and last (`recorded_at`) times, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance<'a> {
    pub service: &'a str,
    pub group: Option<&'a str>,
    pub started_us: i64,
    pub last_us: i64,
}

/// The run a report is about: the aggregator group and the raw consumer's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub group: String,
    pub raw_group: String,
}

impl Run {
    pub fn new(group: &str, raw_group: &str) -> Self {
        Run {
            group: group.to_owned(),
            raw_group: raw_group.to_owned(),
        }
    }

    /// Whether `i` is one of the group's aggregator instances.
    fn is_aggregator(&self, i: &Instance<'_>) -> bool {
        i.service == AGGREGATOR && i.group == Some(self.group.as_str())
    }

    /// From the first start to the last row of the group's aggregator instances (`None`: it has
    /// recorded none).
    pub fn span<'a>(
        &self,
        instances: impl IntoIterator<Item = Instance<'a>>,
    ) -> Option<(i64, i64)> {
        instances
            .into_iter()
            .filter(|i| self.is_aggregator(i))
            .map(|i| (i.started_us, i.last_us))
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    /// Whether `i`'s figures belong to the run, given the aggregator's [`span`](Run::span).
    pub fn belongs(&self, i: &Instance<'_>, span: Option<(i64, i64)>) -> bool {
        if i.service == AGGREGATOR {
            return self.is_aggregator(i);
        }
        if i.service == RAW_CONSUMER && i.group.is_some_and(|g| g != self.raw_group) {
            return false;
        }
        span.is_none_or(|(from, to)| {
            i.started_us <= to.saturating_add(SLACK_US)
                && i.last_us >= from.saturating_sub(SLACK_US)
        })
    }
}

/// One service's figures, summed over its instances' latest statistics rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceFigures {
    pub service: String,
    pub instances: i64,
    pub events_in: i64,
    pub events_out: i64,
    pub dead_letters: i64,
    pub late_events: i64,
    pub running_seconds: f64,
    pub events_per_second: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The latest service-specific figures (the aggregator's latency among them).
    pub details: SpecificFigures,
}

/// An instance's latest row: service, group, started and recorded µs, events in, events out, dead
/// letters, late, CPU s, peak RSS, details.
type LatestRow = (
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    f64,
    i64,
    Option<String>,
);

/// An instance as the rule sees it, from its latest row.
fn instance(r: &LatestRow) -> Instance<'_> {
    Instance {
        service: &r.0,
        group: r.1.as_deref(),
        started_us: r.2,
        last_us: r.3,
    }
}

/// Figures per service of the run (each instance's latest row, those [`Run::belongs`] keeps).
pub async fn read(conn: &mut MySqlConnection, run: &Run) -> anyhow::Result<Vec<ServiceFigures>> {
    let rows: Vec<LatestRow> = sqlx::query_as(&format!(
        "SELECT s.service, s.consumer_group, CAST({} AS SIGNED), CAST({} AS SIGNED), s.events_in, \
                s.events_out, s.dead_letters, s.late_events, s.cpu_seconds, s.peak_rss_bytes, s.details \
         FROM service_stats s JOIN (SELECT instance, MAX(id) AS id FROM service_stats GROUP BY instance) last \
           ON last.id = s.id ORDER BY s.service, s.id",
        us("s.started_at"),
        us("s.recorded_at"),
    ))
    .fetch_all(conn)
    .await?;
    let span = run.span(rows.iter().map(instance));
    let mut by: BTreeMap<String, ServiceFigures> = BTreeMap::new();
    for r in rows.iter().filter(|r| run.belongs(&instance(r), span)) {
        let f = by.entry(r.0.clone()).or_insert_with(|| ServiceFigures {
            service: r.0.clone(),
            ..Default::default()
        });
        f.instances += 1;
        f.events_in += r.4;
        f.events_out += r.5;
        f.dead_letters += r.6;
        f.late_events += r.7;
        f.running_seconds = f.running_seconds.max((r.3 - r.2) as f64 / 1e6);
        f.cpu_seconds += r.8;
        f.peak_rss_mb = f.peak_rss_mb.max(r.9 as f64 / 1_048_576.0);
        if let Some(d) = &r.10 {
            f.details = SpecificFigures::from_json(d);
        }
    }
    let mut out: Vec<ServiceFigures> = by.into_values().collect();
    for f in &mut out {
        if f.running_seconds > 0.0 {
            f.events_per_second = f.events_in as f64 / f.running_seconds;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn inst<'a>(service: &'a str, group: Option<&'a str>, from_s: i64, to_s: i64) -> Instance<'a> {
        Instance {
            service,
            group,
            started_us: from_s * S,
            last_us: to_s * S,
        }
    }

    #[test]
    fn only_the_groups_aggregator_and_the_services_that_ran_with_it() {
        let run = Run::new("agg-a", "raw");
        let all = [
            inst(AGGREGATOR, Some("agg-a"), 100, 200),
            inst(AGGREGATOR, Some("agg-a"), 150, 300),
            // A later run of another group, and a row of no group.
            inst(AGGREGATOR, Some("agg-b"), 1000, 1100),
            inst(AGGREGATOR, None, 100, 300),
            inst("producer", None, 90, 250),
            inst("producer", None, 1000, 1100),
            inst(RAW_CONSUMER, Some("raw"), 95, 310),
            inst(RAW_CONSUMER, Some("raw"), 1000, 1100),
            inst(RAW_CONSUMER, Some("other-raw"), 95, 310),
            inst(RAW_CONSUMER, None, 95, 310),
            inst("update-counter", Some("cnt"), 110, 320),
            // Within the slack: stopped 20 s before the aggregator started.
            inst("producer", None, 40, 80),
        ];
        let span = run.span(all);
        assert_eq!(span, Some((100 * S, 300 * S)));
        let kept: Vec<usize> = (0..all.len())
            .filter(|i| run.belongs(&all[*i], span))
            .collect();
        assert_eq!(kept, vec![0, 1, 4, 6, 9, 10, 11]);
    }

    #[test]
    fn before_the_aggregator_recorded_a_row_the_other_services_all_count() {
        let run = Run::new("agg-a", "raw");
        let all = [
            inst(AGGREGATOR, Some("agg-b"), 1000, 1100),
            inst("producer", None, 1000, 1100),
            inst(RAW_CONSUMER, Some("raw"), 1000, 1100),
            inst(RAW_CONSUMER, Some("other"), 1000, 1100),
        ];
        let span = run.span(all);
        assert_eq!(span, None);
        let kept: Vec<bool> = all.iter().map(|i| run.belongs(i, span)).collect();
        assert_eq!(kept, vec![false, true, true, false]);
    }
}
