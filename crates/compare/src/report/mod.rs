//! The comparison report: one section per window spec of the aggregator group ([`SpecReport`]:
//! the verdict window by window, update counts, pending windows, both sides' figures), in one
//! [`Report`] of the run; and its renderings (`render`): a terminal table, JSON, Markdown, and
//! one self-contained HTML file whose charts are drawn by the dashboard's own chart script
//! (inlined, with the report's data: the same charts as `compare serve`, offline).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use common::window::WindowSpec;

pub mod accuracy;
mod assemble;
mod render;
pub mod settle;
pub mod view;

pub use assemble::{assemble, Sides, COUNT_GRACE_US};

use crate::{batch::incremental::BatchMode, services::ServiceFigures};
use accuracy::Accuracy;
use settle::SettlementInfo;
use view::WindowView;

/// The report of one run on one aggregator group: a section per window spec compared.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_at: DateTime<Utc>,
    pub group: String,
    /// Every section passed (accuracy and update counts).
    pub passed: bool,
    /// One per spec, in the group's order (size, then slide).
    pub sections: Vec<SpecReport>,
}

impl Report {
    pub fn new(group: &str, sections: Vec<SpecReport>) -> Self {
        Report {
            run_at: Utc::now(),
            group: group.to_owned(),
            passed: sections.iter().all(SpecReport::passed),
            sections,
        }
    }

    /// The section of `spec`, if compared.
    pub fn section(&self, spec: WindowSpec) -> Option<&SpecReport> {
        self.sections.iter().find(|s| s.spec == spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }
}

/// Everything a run found for one window spec of the group.
#[derive(Debug, Clone, Serialize)]
pub struct SpecReport {
    pub run_at: DateTime<Utc>,
    pub group: String,
    pub spec: WindowSpec,
    /// The spec as written in settings (`1m`, `1h/1m`): what `--window` and `?window=` take.
    pub label: String,
    pub accuracy: Accuracy,
    /// `coin_update_count` rows whose count differs from the batch count of a final window.
    pub update_count_mismatches: usize,
    pub update_count_checked: usize,
    /// Final windows whose `coin_update_count` row has not caught up yet (within the grace).
    pub update_count_pending: usize,
    /// Which windows the pipeline had not settled (pending), and from what.
    pub settlement: SettlementInfo,
    pub batch_seconds: f64,
    /// Every window recomputed, or only those over rows new since the last run.
    pub batch_mode: BatchMode,
    /// Raw rows the batch side read (in an incremental run: of the recomputed windows).
    pub raw_rows: i64,
    pub batch_rows_per_second: f64,
    /// Stream latency from the aggregator: producer received -> committed in its window's row.
    pub stream_latency_ms: Option<[f64; 4]>,
    /// Batch latency: age of the data when this run saw it, plus the query time.
    pub batch_latency_ms: Option<[f64; 4]>,
    /// The aggregator's latency histogram: [upper bound ms, updates].
    pub latency_histogram: Vec<(f64, u64)>,
    /// The group's services (the same in every section of a run).
    pub services: Vec<ServiceFigures>,
    /// Per pair (`BASE/QUOTE`): every window, both sides and its status.
    pub windows: BTreeMap<String, Vec<WindowView>>,
}

fn fmt_lat(l: &Option<[f64; 4]>) -> String {
    match l {
        Some([p50, p95, p99, max]) => format!("{p50:.1} / {p95:.1} / {p99:.1} / {max:.1} ms"),
        None => "n/a".into(),
    }
}

fn window_text(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| us.to_string())
}

impl SpecReport {
    /// Accuracy passed and no update count differs.
    pub fn passed(&self) -> bool {
        self.accuracy.passed && self.update_count_mismatches == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    /// What the pending count rests on: the partitions a consumer is behind on, or why pending
    /// windows were not derived.
    fn pending_text(&self) -> String {
        let s = &self.settlement;
        let mut parts: Vec<String> = s
            .partitions
            .iter()
            .filter(|p| p.raw_next_offset != p.aggregator_next_offset)
            .map(|p| {
                format!(
                    "partition {}: raw consumer at {}, aggregator at {}",
                    p.partition, p.raw_next_offset, p.aggregator_next_offset
                )
            })
            .collect();
        if s.derived && parts.is_empty() {
            parts.push("both consumers at the same offsets".into());
        }
        if let Some(note) = &s.note {
            parts.push(note.clone());
        }
        format!("{} ({})", self.accuracy.pending, parts.join("; "))
    }

    /// Rows of the summary: (figure, stream, batch).
    fn summary(&self) -> Vec<(String, String, String)> {
        let a = &self.accuracy;
        let agg = self
            .services
            .iter()
            .find(|s| s.service == "stream-aggregator");
        vec![
            (
                "accuracy".into(),
                if a.passed {
                    "PASS".into()
                } else if a.compared_nothing() {
                    "FAIL: nothing compared (no stream window matched; wrong --group?)".into()
                } else {
                    "FAIL".into()
                },
                match self.batch_mode {
                    BatchMode::Full => format!("{} windows recomputed", a.windows_compared),
                    BatchMode::Incremental { recomputed, stored } => format!(
                        "{recomputed} windows recomputed, {stored} as of the last run (incremental)"
                    ),
                },
            ),
            (
                "windows matched / mismatched".into(),
                format!("{} / {}", a.matched, a.mismatches),
                String::new(),
            ),
            (
                "windows missing / extra / open / pending".into(),
                format!("{} / {} / {} / {}", a.missing, a.extra, a.open, a.pending),
                String::new(),
            ),
            (
                "coin_update_count mismatches".into(),
                format!(
                    "{} of {} ({} pending)",
                    self.update_count_mismatches,
                    self.update_count_checked,
                    self.update_count_pending
                ),
                String::new(),
            ),
            ("pending windows".into(), self.pending_text(), String::new()),
            (
                "latency p50 / p95 / p99 / max".into(),
                fmt_lat(&self.stream_latency_ms),
                fmt_lat(&self.batch_latency_ms),
            ),
            (
                "throughput".into(),
                agg.map_or("n/a".into(), |s| {
                    format!("{:.0} events/s", s.events_per_second)
                }),
                format!(
                    "{:.0} rows/s ({} rows in {:.3} s)",
                    self.batch_rows_per_second, self.raw_rows, self.batch_seconds
                ),
            ),
            (
                "CPU seconds / peak RSS".into(),
                agg.map_or("n/a".into(), |s| {
                    format!("{:.2} s / {:.1} MB", s.cpu_seconds, s.peak_rss_mb)
                }),
                "in the MySQL server (not attributable per query)".into(),
            ),
        ]
    }
}
