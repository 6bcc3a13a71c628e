//! compare's settings: a one-shot report (what to compare, how to print it) or `serve`.

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::{
    config::{non_empty, parse_duration, MySqlArgs, TelemetryArgs},
    model::{parse_time, Pair},
    window::WindowSpec,
};

use crate::{batch::Scope, queries, serve};

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
