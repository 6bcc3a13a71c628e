//! The aggregator's figures: counts of what happened to events, and the latency from the
//! producer receiving an update to the commit of its window row (HDR histogram), reported as a
//! typed `service_stats` row and one log line.

use std::time::Instant;

use crate::metrics as m;
use chrono::Utc;
use common::figures::{
    AggregatorFigures, ConsumerFigures, Figures, FiguresRecorder, LatencyFigures, SpecificFigures,
};
use hdrhistogram::Histogram;

/// Upper bounds (ms) of the latency histogram's buckets in the statistics (compare's chart).
const BUCKETS_MS: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 3_600_000,
];

/// Running figures of the aggregator.
#[derive(Debug)]
pub struct RunningFigures {
    pub figures: AggregatorFigures,
    latency_us: Histogram<u64>,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
}

impl RunningFigures {
    pub fn new() -> anyhow::Result<Self> {
        Ok(RunningFigures {
            figures: AggregatorFigures::default(),
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            first_event: None,
            last_event: None,
        })
    }

    /// An event was taken at `now` (one clock read per batch of messages).
    pub fn event(&mut self, now: Instant) {
        self.figures.events += 1;
        self.first_event.get_or_insert(now);
        self.last_event = Some(now);
    }

    /// Latency samples: `received` (µs) of events committed at `committed_at` (µs), into the
    /// statistics' histogram and the metric.
    pub fn committed(&mut self, committed_at_us: i64, received: &[i64]) {
        // Observed locally and flushed once: one atomic update of the metric per commit.
        let metric = m::END_TO_END_LATENCY.local();
        for r in received {
            let us = (committed_at_us - r).max(1);
            let _ = self.latency_us.record(us as u64);
            metric.observe(us as f64 / 1e6);
        }
        metric.flush();
    }

    fn latency(&self) -> LatencyFigures {
        let h = &self.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut lower_us = 0u64;
        let histogram_ms = BUCKETS_MS
            .iter()
            .map(|&upper_ms| {
                let upper_us = upper_ms * 1000;
                let n = if h.is_empty() {
                    0
                } else {
                    h.count_between(lower_us, upper_us.saturating_sub(1))
                };
                lower_us = upper_us;
                (upper_ms as f64, n)
            })
            .collect();
        LatencyFigures {
            samples: h.len(),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
            histogram_ms,
        }
    }

    /// The figures now; `watermarks` are the held partitions' watermarks (µs).
    pub fn snapshot(
        &self,
        open_windows: usize,
        watermarks: impl Iterator<Item = i64>,
    ) -> AggregatorFigures {
        let now = Utc::now().timestamp_micros();
        let watermark_lag_seconds = watermarks
            .filter(|w| *w > i64::MIN)
            .map(|w| (now - w) as f64 / 1e6)
            .reduce(f64::max);
        AggregatorFigures {
            open_windows,
            watermark_lag_seconds,
            processing_seconds: match (self.first_event, self.last_event) {
                (Some(f), Some(l)) => (l - f).as_secs_f64(),
                _ => 0.0,
            },
            latency: self.latency(),
            ..self.figures.clone()
        }
    }
}

/// Submits the statistics row (stored in the background) and logs the statistics line.
pub fn report(recorder: &FiguresRecorder, runtime: &ConsumerFigures, f: AggregatorFigures) {
    let counters = Figures {
        events_in: f.events,
        events_out: f.windows_emitted,
        dead_letters: f.dead_letters,
        late_events: f.late,
        consumer_lag: runtime.lag,
        details: SpecificFigures {
            consumer: Some(runtime.clone()),
            aggregator: Some(f.clone()),
            ..SpecificFigures::default()
        },
    };
    let usage = recorder.submit(counters);
    let l = &f.latency;
    tracing::info!(
        events = f.events,
        applied = f.applied,
        late = f.late,
        duplicates = f.duplicates,
        dead_letters = f.dead_letters,
        rejected = f.rejected,
        windows_emitted = f.windows_emitted,
        open_windows = f.open_windows,
        watermark_lag_seconds = ?f.watermark_lag_seconds,
        lag = ?runtime.lag,
        partitions = runtime.partitions_held,
        rejoins = runtime.rejoins,
        latency_p50_ms = l.p50_ms,
        latency_p95_ms = l.p95_ms,
        latency_p99_ms = l.p99_ms,
        latency_max_ms = l.max_ms,
        processing_seconds = f.processing_seconds,
        cpu_seconds = usage.cpu_seconds,
        peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
        "stream-aggregator statistics"
    );
}
