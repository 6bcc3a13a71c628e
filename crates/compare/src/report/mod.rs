//! The comparison report and its renderings: a terminal table, JSON, Markdown, and one
//! self-contained HTML file whose charts are drawn by the dashboard's own chart script (inlined,
//! with the report's data: the same charts as `compare serve`, offline).

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL, Table};
use serde::Serialize;

use common::window::WindowSpec;

pub mod accuracy;
mod assemble;
pub mod settle;
pub mod view;

pub use assemble::{assemble, Sides, COUNT_GRACE_US};

use crate::{
    batch::{incremental::BatchMode, queries::ServiceFigures},
    serve::assets,
};
use accuracy::Accuracy;
use settle::SettlementInfo;
use view::WindowView;

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_at: DateTime<Utc>,
    pub group: String,
    pub spec: WindowSpec,
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

impl Report {
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

    /// A readable terminal table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut t = Table::new();
        t.load_preset(UTF8_FULL)
            .set_header(vec!["", "stream", "batch"]);
        for (a, b, c) in self.summary() {
            t.add_row(vec![a, b, c]);
        }
        let _ = writeln!(
            out,
            "coinstream: stream vs batch ({} window {} s, slide {} s)",
            self.group,
            self.spec.size_us as f64 / 1e6,
            self.spec.slide_us as f64 / 1e6
        );
        let _ = writeln!(out, "{t}");
        let mut s = Table::new();
        s.load_preset(UTF8_FULL).set_header(vec![
            "service",
            "instances",
            "events in",
            "events out",
            "events/s",
            "dead letters",
            "late",
            "CPU s",
            "peak RSS MB",
        ]);
        for f in &self.services {
            s.add_row(vec![
                f.service.clone(),
                f.instances.to_string(),
                f.events_in.to_string(),
                f.events_out.to_string(),
                format!("{:.0}", f.events_per_second),
                f.dead_letters.to_string(),
                f.late_events.to_string(),
                format!("{:.2}", f.cpu_seconds),
                format!("{:.1}", f.peak_rss_mb),
            ]);
        }
        let _ = writeln!(out, "{s}");
        if !self.accuracy.worst.is_empty() {
            let mut w = Table::new();
            w.load_preset(UTF8_FULL)
                .set_header(vec!["pair", "window start (UTC)", "difference"]);
            for d in &self.accuracy.worst {
                w.add_row(vec![
                    format!("{}/{}", d.base, d.quote),
                    window_text(d.start_us),
                    d.what.clone(),
                ]);
            }
            let _ = writeln!(out, "worst differences:\n{w}");
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# coinstream: stream vs batch\n\nGroup `{}`, window {} s, slide {} s, run at {}.\n\n",
            self.group,
            self.spec.size_us as f64 / 1e6,
            self.spec.slide_us as f64 / 1e6,
            self.run_at.to_rfc3339()
        );
        out.push_str("| figure | stream | batch |\n|---|---|---|\n");
        for (a, b, c) in self.summary() {
            let _ = writeln!(out, "| {a} | {b} | {c} |");
        }
        out.push_str("\n| service | instances | events in | events out | events/s | CPU s | peak RSS MB |\n|---|---|---|---|---|---|---|\n");
        for f in &self.services {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.1} |",
                f.service,
                f.instances,
                f.events_in,
                f.events_out,
                f.events_per_second,
                f.cpu_seconds,
                f.peak_rss_mb
            );
        }
        if !self.accuracy.worst.is_empty() {
            out.push_str("\n## Worst differences\n\n| pair | window start (UTC) | difference |\n|---|---|---|\n");
            for d in &self.accuracy.worst {
                let _ = writeln!(
                    out,
                    "| {}/{} | {} | {} |",
                    d.base,
                    d.quote,
                    window_text(d.start_us),
                    d.what
                );
            }
        }
        out
    }

    /// One self-contained HTML file: the summary and services as tables; the latency histogram
    /// and a chart per pair drawn by the dashboard's chart script from the report's JSON.
    pub fn to_html(&self) -> String {
        let mut out = format!("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>coinstream: stream vs batch</title>\n<script>{}</script><style>{}</style></head><body class=\"report\">\n", assets::ERRORS_JS, assets::STYLE);
        let verdict = if self.accuracy.passed {
            "<span class=\"pass\">PASS</span>"
        } else if self.accuracy.compared_nothing() {
            "<span class=\"fail\">FAIL: nothing compared (no stream window matched; wrong group?)</span>"
        } else {
            "<span class=\"fail\">FAIL</span>"
        };
        let _ = writeln!(out, "<h1>coinstream: stream vs batch</h1><p>Accuracy: {verdict}. Group <code>{}</code>, window {} s, slide {} s, run at {}.</p>", esc(&self.group), self.spec.size_us as f64 / 1e6, self.spec.slide_us as f64 / 1e6, self.run_at.to_rfc3339());
        out.push_str("<table><tr><th></th><th>stream</th><th>batch</th></tr>\n");
        for (a, b, c) in self.summary() {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a),
                esc(&b),
                esc(&c)
            );
        }
        out.push_str("</table>\n<h2>Services</h2><table><tr><th>service</th><th>instances</th><th>events in</th><th>events out</th><th>events/s</th><th>CPU s</th><th>peak RSS MB</th></tr>\n");
        for f in &self.services {
            let _ = writeln!(out, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.1}</td></tr>", esc(&f.service), f.instances, f.events_in, f.events_out, f.events_per_second, f.cpu_seconds, f.peak_rss_mb);
        }
        out.push_str("</table>\n<h2>Stream latency: producer received to committed in MySQL</h2>\n<div id=\"latency\"></div>\n<h2>Windows per pair: stream vs batch</h2>\n<div id=\"charts\"></div>\n<noscript>The charts are drawn by JavaScript; the tables need none.</noscript>\n");
        if !self.accuracy.worst.is_empty() {
            out.push_str("<h2>Worst differences</h2><table><tr><th>pair</th><th>window start (UTC)</th><th>difference</th></tr>\n");
            for d in &self.accuracy.worst {
                let _ = writeln!(
                    out,
                    "<tr><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&d.base),
                    esc(&d.quote),
                    window_text(d.start_us),
                    esc(&d.what)
                );
            }
            out.push_str("</table>\n");
        }
        // The data as JSON inside a script element: `<` escaped so nothing can close it.
        let data = serde_json::json!({
            "spec": self.spec,
            "windows": self.windows,
            "latency_histogram": self.latency_histogram,
        })
        .to_string()
        .replace('<', "\\u003c");
        let _ = writeln!(
            out,
            "<script type=\"application/json\" id=\"report-data\">{data}</script>"
        );
        let _ = writeln!(
            out,
            "<script>{}</script>\n<script>{}</script>",
            assets::CHART_JS,
            assets::REPORT_JS
        );
        out.push_str("</body></html>\n");
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
