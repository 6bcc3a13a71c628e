//! compare: recomputes the stream aggregator's windows in batch from `raw_coin_data` and reports
//! stream vs batch: accuracy window by window, latency, throughput and resource use. Every run is
//! stored in `comparison_runs`. `compare serve` shows the same live in a browser ([`serve`]).

pub mod accuracy;
pub mod batch;
pub mod incremental;
pub mod queries;
pub mod report;
pub mod serve;
pub mod view;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::{
    config::{non_empty, parse_duration, ConfigError, MySqlArgs, TelemetryArgs},
    model::{parse_time, Pair},
    window::WindowSpec,
};

use crate::{
    accuracy::{compare, Agg, Key, StreamWindow},
    batch::{Batch, Scope},
    incremental::BatchMode,
    queries::ServiceFigures,
    report::Report,
};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
    Html,
}

/// Settings of compare: a one-shot report, or `serve`.
#[derive(Debug, Parser)]
#[command(
    name = "compare",
    version,
    about = "Stream vs batch: a report, or a live dashboard (compare serve)",
    args_conflicts_with_subcommands = true
)]
pub struct Settings {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Settings {
    /// `compare serve --healthcheck`: ask the dashboard at its `--listen` address, then exit.
    pub fn healthcheck(&self) -> Option<common::observe::ObserveArgs> {
        match &self.command {
            Some(Command::Serve(s)) if s.healthcheck => Some(common::observe::ObserveArgs {
                metrics_addr: Some(s.listen),
                healthcheck: true,
            }),
            _ => None,
        }
    }

    /// The logging settings of the command run.
    pub fn telemetry(&self) -> &TelemetryArgs {
        match &self.command {
            Some(Command::Serve(s)) => &s.telemetry,
            None => &self.telemetry,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the live dashboard: a web page and JSON API over the MySQL tables (read-only).
    Serve(serve::ServeSettings),
}

/// What to compare: the aggregator group, its window spec, and which windows.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Aggregator group whose recorded window spec is used.
    #[arg(long = "group", env = "AGGREGATOR_GROUP", value_name = "AGGREGATOR_GROUP", default_value = "stream-aggregator", value_parser = non_empty)]
    pub group: String,
    /// Window size, when the aggregator recorded none (or to override it).
    #[arg(long = "window", value_name = "WINDOW", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Slide, with --window (default: tumbling).
    #[arg(long = "slide", value_name = "SLIDE", value_parser = parse_duration)]
    pub slide: Option<Duration>,
    /// Only windows of this pair (BASE/QUOTE).
    #[arg(long = "pair", value_name = "PAIR", value_parser = parse_pair)]
    pub pair: Option<Pair>,
    /// Only windows starting at or after this time (RFC 3339, UTC).
    #[arg(long = "since", value_name = "TIME", value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,
    /// Only windows starting before this time (RFC 3339, UTC).
    #[arg(long = "until", value_name = "TIME", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
}

impl SourceArgs {
    pub fn scope(&self) -> Scope {
        Scope {
            pair: self.pair,
            since: self.since,
            until: self.until,
        }
    }

    /// The window spec: configured, or recorded by the aggregator group (`None`: neither yet).
    pub async fn spec(&self, pool: &sqlx::MySqlPool) -> anyhow::Result<Option<WindowSpec>> {
        if let Some(w) = self.window {
            return Ok(Some(WindowSpec::from_settings(w, self.slide)?));
        }
        queries::recorded_spec(pool, &self.group).await
    }
}

/// How the one-shot report is written.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
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
    /// Recompute every window (and store them afresh) instead of only the windows over rows
    /// added since the last run.
    #[arg(long = "full")]
    pub full: bool,
}

fn parse_pair(s: &str) -> Result<Pair, String> {
    s.parse::<Pair>().map_err(|e| e.to_string())
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s)
        .ok_or_else(|| format!("{s:?} is not a time (RFC 3339, e.g. 2024-08-05T12:00:00Z)"))
}

/// The stream side and the figures a report puts beside the accuracy.
#[derive(Debug)]
pub struct Sides<'a> {
    pub group: &'a str,
    pub spec: WindowSpec,
    pub stream: &'a BTreeMap<Key, StreamWindow>,
    pub batch: &'a Batch,
    pub counts: &'a BTreeMap<Key, (i64, bool)>,
    pub services: Vec<ServiceFigures>,
    pub batch_latency_ms: Option<[f64; 4]>,
}

/// The report from both sides (pure).
pub fn assemble(s: Sides<'_>) -> Report {
    let accuracy = compare(s.stream, &s.batch.windows);
    let mut checked = 0;
    let mut count_mismatches = 0;
    for (k, w) in s.stream {
        if !w.is_final {
            continue;
        }
        if let Some(b) = s.batch.windows.get(k) {
            checked += 1;
            if s.counts.get(k) != Some(&(b.count, true)) {
                count_mismatches += 1;
            }
        }
    }
    let latency = s
        .services
        .iter()
        .find(|f| f.service == "stream-aggregator")
        .and_then(|f| f.details.aggregator.as_ref())
        .map(|a| a.latency.clone())
        .filter(|l| l.samples > 0);
    let batch_windows: &BTreeMap<Key, Agg> = &s.batch.windows;
    Report {
        run_at: Utc::now(),
        group: s.group.to_owned(),
        spec: s.spec,
        accuracy,
        update_count_mismatches: count_mismatches,
        update_count_checked: checked,
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
        windows: view::by_pair(s.spec.size_us, s.stream, batch_windows),
    }
}

/// Builds the report of a scope from the database.
/// The batch side is incremental where it can be ([`incremental`]); `full` recomputes everything.
pub async fn build_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    full: bool,
) -> anyhow::Result<Report> {
    let Some(spec) = source.spec(pool).await? else {
        return Err(ConfigError::new(
            "AGGREGATOR_GROUP",
            format!(
                "no window spec recorded for group {:?}: run the aggregator first or pass --window",
                source.group
            ),
        )
        .into());
    };
    let scope = source.scope();
    let (batch, batch_mode) = incremental::batch(pool, spec, &source.group, &scope, full).await?;
    let stream = queries::stream(pool, &scope).await?;
    let counts = queries::update_counts(pool, &scope).await?;
    let services = queries::services(pool).await?;
    let batch_latency_ms = queries::batch_latency(pool, batch.seconds).await?;
    Ok(Report {
        batch_mode,
        ..assemble(Sides {
            group: &source.group,
            spec,
            stream: &stream,
            batch: &batch,
            counts: &counts,
            services,
            batch_latency_ms,
        })
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

/// Runs one comparison (a signal stops it at once: nothing is written until the report is ready),
/// or serves the dashboard.
pub async fn run(settings: Settings, ctx: common::Context) -> anyhow::Result<()> {
    if let Some(Command::Serve(serve)) = settings.command {
        return serve::run(serve, ctx).await;
    }
    let pool = common::prepare(&settings.mysql, None).await?;
    let report = build_report(&pool, &settings.source, settings.report.full).await?;
    store(&pool, &report).await?;
    pool.close().await;
    let out = &settings.report;
    let text = match out.format {
        Format::Table => report.to_table(),
        Format::Json => report.to_json(),
        Format::Markdown => report.to_markdown(),
        Format::Html => report.to_html(),
    };
    match &out.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &out.html {
        std::fs::write(path, report.to_html())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "HTML report written");
    }
    let passed = report.accuracy.passed && report.update_count_mismatches == 0;
    if out.fail_on_mismatch && report.accuracy.compared_nothing() {
        anyhow::bail!(
            "accuracy check failed: nothing was compared ({} batch windows, none matched a stream window): is --group {:?} the aggregator's group, and has it written?",
            report.accuracy.windows_compared,
            settings.source.group
        );
    }
    if out.fail_on_mismatch && !passed {
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
