//! The report's renderings: a terminal table, Markdown and one self-contained HTML file, each a
//! section per window spec (its summary and worst differences) and the group's services once.
//! (JSON is the report serialized: [`Report::to_json`].)

use std::fmt::Write as _;

use comfy_table::{presets::UTF8_FULL, Table};

use super::{window_text, Report, SpecReport};
use crate::{serve::assets, services::ServiceFigures};

/// `PASS`, or `FAIL` and why.
fn verdict(s: &SpecReport) -> &'static str {
    if s.passed() {
        "PASS"
    } else if s.accuracy.compared_nothing() {
        "FAIL: nothing compared (no stream window matched; wrong group?)"
    } else {
        "FAIL"
    }
}

/// The services' figures: those of the first section (every section has the group's).
fn services(r: &Report) -> &[ServiceFigures] {
    r.sections.first().map_or(&[], |s| s.services.as_slice())
}

/// `10 s windows` or `1 h windows every 1 min`, with the spec's label.
fn spec_title(s: &SpecReport) -> String {
    let secs = |us: i64| us as f64 / 1e6;
    if s.spec.slide_us == s.spec.size_us {
        format!("{}: {} s windows", s.label, secs(s.spec.size_us))
    } else {
        format!(
            "{}: {} s windows every {} s",
            s.label,
            secs(s.spec.size_us),
            secs(s.spec.slide_us)
        )
    }
}

impl Report {
    /// One line on the whole run: which specs, and whether every one passed.
    fn headline(&self) -> String {
        let labels: Vec<&str> = self.sections.iter().map(|s| s.label.as_str()).collect();
        format!(
            "coinstream: stream vs batch, group {}: {} window spec{} ({}): {}",
            self.group,
            labels.len(),
            if labels.len() == 1 { "" } else { "s" },
            labels.join(", "),
            if self.passed { "PASS" } else { "FAIL" }
        )
    }

    /// A readable terminal table: a summary per spec, then the services.
    pub fn to_table(&self) -> String {
        let mut out = format!("{}\n", self.headline());
        for s in &self.sections {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL).set_header(vec![
                spec_title(s),
                "stream".into(),
                "batch".into(),
            ]);
            for (a, b, c) in s.summary() {
                t.add_row(vec![a, b, c]);
            }
            let _ = writeln!(out, "\n{t}");
            if !s.accuracy.worst.is_empty() {
                let mut w = Table::new();
                w.load_preset(UTF8_FULL).set_header(vec![
                    "pair",
                    "window start (UTC)",
                    "difference",
                ]);
                for d in &s.accuracy.worst {
                    w.add_row(vec![
                        format!("{}/{}", d.base, d.quote),
                        window_text(d.start_us),
                        d.what.clone(),
                    ]);
                }
                let _ = writeln!(out, "worst differences ({}):\n{w}", s.label);
            }
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL).set_header(vec![
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
        for f in services(self) {
            t.add_row(vec![
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
        let _ = writeln!(out, "\nservices of group {}:\n{t}", self.group);
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# coinstream: stream vs batch\n\nGroup `{}`, run at {}: {}.\n",
            self.group,
            self.run_at.to_rfc3339(),
            if self.passed { "PASS" } else { "FAIL" }
        );
        for s in &self.sections {
            let _ = write!(
                out,
                "\n## Window {}\n\nAccuracy: {}.\n\n| figure | stream | batch |\n|---|---|---|\n",
                spec_title(s),
                verdict(s)
            );
            for (a, b, c) in s.summary() {
                let _ = writeln!(out, "| {a} | {b} | {c} |");
            }
            if !s.accuracy.worst.is_empty() {
                out.push_str("\n### Worst differences\n\n| pair | window start (UTC) | difference |\n|---|---|---|\n");
                for d in &s.accuracy.worst {
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
        }
        out.push_str("\n## Services\n\n| service | instances | events in | events out | events/s | CPU s | peak RSS MB |\n|---|---|---|---|---|---|---|\n");
        for f in services(self) {
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
        out
    }

    /// One self-contained HTML file: per spec a section with its summary table and a chart per
    /// pair; the services and the latency histogram once. The charts are drawn by the dashboard's
    /// chart script from the report's JSON.
    pub fn to_html(&self) -> String {
        let mut out = format!("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>coinstream: stream vs batch</title>\n<script>{}</script><style>{}</style></head><body class=\"report\">\n", assets::ERRORS_JS, assets::STYLE);
        let overall = if self.passed {
            "<span class=\"pass\">PASS</span>"
        } else {
            "<span class=\"fail\">FAIL</span>"
        };
        let _ = writeln!(
            out,
            "<h1>coinstream: stream vs batch</h1><p>Accuracy: {overall}. Group <code>{}</code>, run at {}.</p>",
            esc(&self.group),
            self.run_at.to_rfc3339()
        );
        for s in &self.sections {
            section_html(&mut out, s);
        }
        out.push_str("<h2>Services</h2><table><tr><th>service</th><th>instances</th><th>events in</th><th>events out</th><th>events/s</th><th>CPU s</th><th>peak RSS MB</th></tr>\n");
        for f in services(self) {
            let _ = writeln!(out, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.1}</td></tr>", esc(&f.service), f.instances, f.events_in, f.events_out, f.events_per_second, f.cpu_seconds, f.peak_rss_mb);
        }
        out.push_str("</table>\n<h2>Stream latency: producer received to committed in MySQL</h2>\n<div id=\"latency\"></div>\n<noscript>The charts are drawn by JavaScript; the tables need none.</noscript>\n");
        // The data as JSON inside a script element: `<` escaped so nothing can close it.
        let sections: Vec<_> = self
            .sections
            .iter()
            .map(|s| serde_json::json!({ "label": s.label, "spec": s.spec, "windows": s.windows }))
            .collect();
        let data = serde_json::json!({
            "sections": sections,
            "latency_histogram": self.sections.first().map(|s| &s.latency_histogram),
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

/// One spec's section: its verdict, summary table, charts (drawn into `.charts`) and worst
/// differences.
fn section_html(out: &mut String, s: &SpecReport) {
    let class = if s.passed() { "pass" } else { "fail" };
    let _ = writeln!(
        out,
        "<section class=\"spec\" data-window=\"{}\"><h2>Window {}</h2><p>Accuracy: <span class=\"{class}\">{}</span>.</p>",
        esc(&s.label),
        esc(&spec_title(s)),
        esc(verdict(s))
    );
    out.push_str("<table><tr><th></th><th>stream</th><th>batch</th></tr>\n");
    for (a, b, c) in s.summary() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a),
            esc(&b),
            esc(&c)
        );
    }
    out.push_str("</table>\n<h3>Windows per pair: stream candles, batch average</h3>\n<div class=\"charts\"></div>\n");
    if !s.accuracy.worst.is_empty() {
        out.push_str("<h3>Worst differences</h3><table><tr><th>pair</th><th>window start (UTC)</th><th>difference</th></tr>\n");
        for d in &s.accuracy.worst {
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
    out.push_str("</section>\n");
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
