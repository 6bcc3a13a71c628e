//! compare: recomputes the stream aggregator's windows in batch from `raw_coin_data` and reports
//! stream vs batch: accuracy window by window, latency, throughput and resource use. Every run is
//! stored in `comparison_runs`. `compare serve` shows the same live in a browser ([`serve`]).
//!
//! Under a live pipeline: both sides, the late events, the update counts and the consumers'
//! offsets are read in one consistent snapshot ([`queries::Snapshot`]), and the windows the
//! pipeline has not settled yet (the raw consumer behind the aggregator, or the other way round)
//! are *pending*, not failures ([`settle`] has the rule). A final window whose
//! `coin_update_count` row is missing or not final yet is pending too while its stream row is
//! younger than [`COUNT_GRACE_US`] (the update counter follows the aggregator's topic).

pub mod accuracy;
pub mod batch;
pub mod incremental;
pub mod queries;
pub mod report;
pub mod serve;
pub mod settle;
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
    accuracy::{compare, Agg, Key, Status, StreamWindow},
    batch::{Batch, Scope},
    incremental::BatchMode,
    queries::{CountCheck, ServiceFigures, Snapshot},
    report::Report,
    settle::Settlement,
};

/// How long a final window may wait for its `coin_update_count` row (or its finality) before
/// that is a mismatch (µs, by the database's clock).
pub const COUNT_GRACE_US: i64 = 30_000_000;

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
    /// The raw consumer's group: its stored offsets say which windows are settled (pending).
    #[arg(long = "raw-group", env = "RAW_CONSUMER_GROUP", value_name = "RAW_CONSUMER_GROUP", default_value = "raw-consumer", value_parser = non_empty)]
    pub raw_group: String,
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
    pub async fn spec(
        &self,
        conn: &mut sqlx::MySqlConnection,
    ) -> anyhow::Result<Option<WindowSpec>> {
        if let Some(w) = self.window {
            return Ok(Some(WindowSpec::from_settings(w, self.slide)?));
        }
        queries::recorded_spec(conn, &self.group).await
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

/// The report from both sides (pure).
pub fn assemble(s: Sides<'_>) -> Report {
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
    Report {
        run_at: Utc::now(),
        group: s.group.to_owned(),
        spec: s.spec,
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

/// The settlement of both sides read in the snapshot `conn`: the groups' offsets, then the
/// windows that would fail checked for raw rows the aggregator has not read.
pub async fn settlement(
    conn: &mut sqlx::MySqlConnection,
    source: &SourceArgs,
    spec: WindowSpec,
    (stream, batch): (&BTreeMap<Key, StreamWindow>, &BTreeMap<Key, Agg>),
) -> anyhow::Result<Settlement> {
    let mut settlement = settle::read(conn, &source.raw_group, &source.group).await?;
    if settlement.aggregator_behind() {
        let candidates = accuracy::failing(stream, batch, spec.size_us, &settlement);
        settle::check_unread(conn, spec, &mut settlement, candidates).await?;
    }
    Ok(settlement)
}

/// Builds the report of a scope from the database: everything it judges by is read in one
/// consistent snapshot. The batch side is incremental where it can be ([`incremental`]); `full`
/// recomputes everything.
pub async fn build_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    full: bool,
) -> anyhow::Result<Report> {
    let Some(spec) = source.spec(&mut *pool.acquire().await?).await? else {
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
    let lock = if scope == Scope::default() {
        incremental::Lock::try_acquire(pool, &source.group).await?
    } else {
        None
    };
    let report = read_report(pool, source, spec, full, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    report
}

/// [`build_report`] once the lock (if any) is held: the snapshot, then what the batch side stores.
async fn read_report(
    pool: &sqlx::MySqlPool,
    source: &SourceArgs,
    spec: WindowSpec,
    full: bool,
    lock: Option<&incremental::Lock>,
) -> anyhow::Result<Report> {
    let scope = source.scope();
    let mut snap = Snapshot::begin(pool).await?;
    let conn = snap.conn();
    let (batch, batch_mode, update) =
        incremental::batch_in(conn, spec, &source.group, &scope, full, lock).await?;
    let stream = queries::stream(conn, &scope).await?;
    let counts = queries::update_counts(conn, &scope).await?;
    let settlement = settlement(conn, source, spec, (&stream, &batch.windows)).await?;
    let services = queries::services(conn).await?;
    let batch_latency_ms = queries::batch_latency(conn, batch.seconds).await?;
    snap.end().await?;
    if let (Some(lock), Some(update)) = (lock, update) {
        incremental::store(pool, spec, lock, update).await?;
    }
    Ok(Report {
        batch_mode,
        ..assemble(Sides {
            group: &source.group,
            spec,
            stream: &stream,
            batch: &batch,
            counts: &counts,
            settlement: &settlement,
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
            "accuracy check failed: nothing was compared ({} batch windows, none matched a stream window; {} pending): is --group {:?} the aggregator's group, and has it written?",
            report.accuracy.windows_compared,
            report.accuracy.pending,
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
