//! compare: recomputes the stream aggregator's windows in batch from `raw_coin_data` (SQL in
//! MySQL) and reports stream vs batch: accuracy window by window, latency, throughput and
//! resource use. Every run is stored in `comparison_runs`.

pub mod accuracy;
pub mod queries;
pub mod report;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use chrono::Utc;
use clap::{Parser, ValueEnum};
use common::{
    config::{non_empty, parse_duration, ConfigError, MySqlArgs, TelemetryArgs},
    window::WindowSpec,
};

use crate::{
    accuracy::compare,
    report::{AvgPoint, Report},
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
    Html,
}

/// Settings of compare.
#[derive(Debug, Parser)]
#[command(name = "compare", version, about = "Stream vs batch report")]
pub struct Settings {
    /// Aggregator group whose recorded window spec is used.
    #[arg(long = "group", env = "AGGREGATOR_GROUP", value_name = "AGGREGATOR_GROUP", default_value = "stream-aggregator", value_parser = non_empty)]
    pub group: String,
    /// Window size, when the aggregator recorded none (or to override it).
    #[arg(long = "window", value_name = "WINDOW", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Slide, with --window (default: tumbling).
    #[arg(long = "slide", value_name = "SLIDE", value_parser = parse_duration)]
    pub slide: Option<Duration>,
    /// Report format on stdout (or in --output).
    #[arg(
        long = "format",
        env = "COMPARE_FORMAT",
        value_name = "COMPARE_FORMAT",
        default_value = "table",
        value_enum
    )]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the HTML report here.
    #[arg(long = "html", value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Exit non-zero when accuracy fails.
    #[arg(long = "fail-on-mismatch")]
    pub fail_on_mismatch: bool,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Builds the report from the database.
pub async fn build_report(pool: &sqlx::MySqlPool, settings: &Settings) -> anyhow::Result<Report> {
    let spec = match (
        settings.window,
        queries::recorded_spec(pool, &settings.group).await?,
    ) {
        (Some(w), _) => WindowSpec::from_settings(w, settings.slide)?,
        (None, Some(spec)) => spec,
        (None, None) => {
            return Err(ConfigError::new(
                "AGGREGATOR_GROUP",
                format!(
                "no window spec recorded for group {:?}: run the aggregator first or pass --window",
                settings.group
            ),
            )
            .into())
        }
    };
    let batch = queries::batch(pool, spec, &settings.group).await?;
    let stream = queries::stream(pool).await?;
    let accuracy = compare(&stream, &batch.windows);
    let counts = queries::update_counts(pool).await?;
    let mut checked = 0;
    let mut count_mismatches = 0;
    for (k, w) in &stream {
        if !w.is_final {
            continue;
        }
        if let Some(b) = batch.windows.get(k) {
            checked += 1;
            if counts.get(k) != Some(&(b.count, true)) {
                count_mismatches += 1;
            }
        }
    }
    let services = queries::services(pool).await?;
    let latency = services
        .iter()
        .find(|s| s.service == "stream-aggregator")
        .and_then(|s| s.details.aggregator.as_ref())
        .map(|a| a.latency.clone())
        .filter(|l| l.samples > 0);
    let stream_latency_ms = latency
        .as_ref()
        .map(|l| [l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms]);
    let latency_histogram = latency.map(|l| l.histogram_ms).unwrap_or_default();
    let batch_latency_ms = queries::batch_latency(pool, batch.seconds).await?;
    let mut averages: BTreeMap<String, Vec<AvgPoint>> = BTreeMap::new();
    for ((b, q, s), agg) in &batch.windows {
        averages
            .entry(format!("{b}/{q}"))
            .or_default()
            .push(AvgPoint {
                start_us: *s,
                stream: stream.get(&(b.clone(), q.clone(), *s)).map(|w| w.agg.avg),
                batch: agg.avg,
            });
    }
    Ok(Report {
        run_at: Utc::now(),
        group: settings.group.clone(),
        spec,
        accuracy,
        update_count_mismatches: count_mismatches,
        update_count_checked: checked,
        batch_seconds: batch.seconds,
        raw_rows: batch.raw_rows,
        batch_rows_per_second: if batch.seconds > 0.0 {
            batch.raw_rows as f64 / batch.seconds
        } else {
            0.0
        },
        stream_latency_ms,
        batch_latency_ms,
        latency_histogram,
        services,
        averages: averages.into_iter().collect(),
    })
}

/// Stores the run in `comparison_runs`.
pub async fn store(pool: &sqlx::MySqlPool, r: &Report) -> anyhow::Result<()> {
    let a = &r.accuracy;
    sqlx::query(
        "INSERT INTO comparison_runs (run_at, consumer_group, window_us, slide_us, windows_compared, mismatches, \
         missing, extra, open_windows, passed, batch_seconds, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.run_at.naive_utc())
    .bind(&r.group)
    .bind(r.spec.size_us)
    .bind(r.spec.slide_us)
    .bind(a.windows_compared as i64)
    .bind(a.mismatches as i64)
    .bind(a.missing as i64)
    .bind(a.extra as i64)
    .bind(a.open as i64)
    .bind(a.passed && r.update_count_mismatches == 0)
    .bind(r.batch_seconds)
    .bind(r.to_json())
    .execute(pool)
    .await?;
    Ok(())
}

/// Runs one comparison (a signal stops it at once: nothing is written until the report is ready).
pub async fn run(settings: Settings, _ctx: common::Context) -> anyhow::Result<()> {
    let pool = common::prepare(&settings.mysql, None).await?;
    let report = build_report(&pool, &settings).await?;
    store(&pool, &report).await?;
    pool.close().await;
    let text = match settings.format {
        Format::Table => report.to_table(),
        Format::Json => report.to_json(),
        Format::Markdown => report.to_markdown(),
        Format::Html => report.to_html(),
    };
    match &settings.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &settings.html {
        std::fs::write(path, report.to_html())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "HTML report written");
    }
    let passed = report.accuracy.passed && report.update_count_mismatches == 0;
    if settings.fail_on_mismatch && report.accuracy.compared_nothing() {
        anyhow::bail!(
            "accuracy check failed: nothing was compared ({} batch windows, none matched a stream window): is --group {:?} the aggregator's group, and has it written?",
            report.accuracy.windows_compared,
            settings.group
        );
    }
    if settings.fail_on_mismatch && !passed {
        anyhow::bail!(
            "accuracy check failed: {} mismatching, {} missing, {} extra windows, {} update-count mismatches{}",
            report.accuracy.mismatches,
            report.accuracy.missing,
            report.accuracy.extra,
            report.update_count_mismatches,
            report
                .accuracy
                .worst
                .first()
                .map(|d| format!("; worst: {}/{} window starting {} µs: {}", d.base, d.quote, d.start_us, d.what))
                .unwrap_or_default()
        );
    }
    Ok(())
}
