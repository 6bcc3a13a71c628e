//! One spec's section of a report, assembled from both sides of one run (pure): the accuracy
//! window by window, the update counts, the services' figures.

use std::collections::BTreeMap;

use chrono::Utc;
use common::window::WindowSpec;

use super::{
    accuracy::{compare, Agg, Key, Status, StreamWindow},
    settle::Settlement,
    view, SpecReport,
};
use crate::{
    batch::{incremental::BatchMode, queries::CountCheck, Batch},
    services::ServiceFigures,
};

/// How long a final window may wait for its `coin_update_count` row (or its finality) before
/// that is a mismatch (µs, by the database's clock).
pub const COUNT_GRACE_US: i64 = 30_000_000;

/// One spec's stream side, batch side and the figures its section puts beside the accuracy.
#[derive(Debug)]
pub struct Sides<'a> {
    pub group: &'a str,
    pub spec: WindowSpec,
    pub stream: &'a BTreeMap<Key, StreamWindow>,
    pub batch: &'a Batch,
    pub counts: &'a BTreeMap<Key, CountCheck>,
    pub settlement: &'a Settlement,
    pub services: Vec<ServiceFigures>,
    pub batch_latency_ms: Option<[f64; 4]>,
}

/// `coin_update_count` against the batch counts of the final windows: (checked, mismatches,
/// pending). Windows not settled are not checked; a missing or not yet final counter row is
/// pending while its stream row is younger than [`COUNT_GRACE_US`].
fn count_check(s: &Sides<'_>) -> (usize, usize, usize) {
    let (mut checked, mut mismatches, mut pending) = (0, 0, 0);
    for (k, c) in s.counts {
        let Some(b) = s.batch.windows.get(k) else {
            continue;
        };
        let end = k.2 + s.spec.size_us;
        if s.settlement.pending(k, end, Status::Differs).is_some() {
            continue;
        }
        match c.counter {
            Some((n, true)) if n == b.count => checked += 1,
            Some((_, true)) => {
                checked += 1;
                mismatches += 1;
            }
            _ if c.age_us < COUNT_GRACE_US => pending += 1,
            _ => {
                checked += 1;
                mismatches += 1;
            }
        }
    }
    (checked, mismatches, pending)
}

/// One spec's section from both sides (pure).
pub fn assemble(s: Sides<'_>) -> SpecReport {
    let accuracy = compare(s.stream, &s.batch.windows, s.spec.size_us, s.settlement);
    let (checked, count_mismatches, count_pending) = count_check(&s);
    let latency = s
        .services
        .iter()
        .find(|f| f.service == "stream-aggregator")
        .and_then(|f| f.details.aggregator.as_ref())
        .map(|a| a.latency.clone())
        .filter(|l| l.samples > 0);
    let batch_windows: &BTreeMap<Key, Agg> = &s.batch.windows;
    SpecReport {
        run_at: Utc::now(),
        group: s.group.to_owned(),
        spec: s.spec,
        label: s.spec.label(),
        accuracy,
        update_count_mismatches: count_mismatches,
        update_count_checked: checked,
        update_count_pending: count_pending,
        settlement: s.settlement.info.clone(),
        batch_seconds: s.batch.seconds,
        batch_mode: BatchMode::Full,
        raw_rows: s.batch.raw_rows,
        batch_rows_per_second: if s.batch.seconds > 0.0 {
            s.batch.raw_rows as f64 / s.batch.seconds
        } else {
            0.0
        },
        stream_latency_ms: latency
            .as_ref()
            .map(|l| [l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms]),
        batch_latency_ms: s.batch_latency_ms,
        latency_histogram: latency.map(|l| l.histogram_ms).unwrap_or_default(),
        services: s.services,
        windows: view::by_pair(s.spec.size_us, s.stream, batch_windows, s.settlement),
    }
}
