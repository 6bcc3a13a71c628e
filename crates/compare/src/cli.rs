//! compare's settings: a one-shot report (what to compare, how to print it) or `serve`.

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::{
    config::{non_empty, parse_duration, ConfigError, MySqlArgs, TelemetryArgs},
    model::{parse_time, Pair},
    window::WindowSpec,
};

use crate::{
    batch::Scope,
    queries::{self, RecordedSpec},
    serve, services,
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
    pub retention: common::retention::RetentionArgs,
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

/// What to compare: the aggregator group, which of its window specs, and which windows.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Aggregator group whose results are compared (every window spec it recorded, or the one
    /// --window names).
    #[arg(long = "group", env = "AGGREGATOR_GROUP", value_name = "AGGREGATOR_GROUP", default_value = "stream-aggregator", value_parser = non_empty)]
    pub group: String,
    /// Only this window size of the group's specs (default: every spec it recorded).
    #[arg(long = "window", value_name = "WINDOW", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Slide, with --window (default: tumbling).
    #[arg(long = "slide", value_name = "SLIDE", value_parser = parse_duration, requires = "window")]
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

    /// The run the report is about (which services' figures it shows).
    pub fn run(&self) -> services::Run {
        services::Run::new(&self.group, &self.raw_group)
    }

    /// The specs to compare out of those the group `recorded`: every one, or the one `--window`
    /// (and `--slide`) name. An error names the setting: `WINDOW` when the group has no such
    /// spec (listing those it has), `AGGREGATOR_GROUP` when it recorded none.
    pub fn choose(&self, recorded: &[RecordedSpec]) -> Result<Vec<RecordedSpec>, ConfigError> {
        if recorded.is_empty() {
            return Err(ConfigError::new(
                "AGGREGATOR_GROUP",
                format!(
                    "no window spec recorded for group {:?}: run the aggregator with --group {:?} first",
                    self.group, self.group
                ),
            ));
        }
        let Some(window) = self.window else {
            return Ok(recorded.to_vec());
        };
        let wanted = WindowSpec::from_settings(window, self.slide)?;
        match recorded.iter().find(|r| r.spec == wanted) {
            Some(r) => Ok(vec![*r]),
            None => Err(ConfigError::new(
                "WINDOW",
                format!(
                    "group {:?} has no window spec {wanted}; its specs: {}",
                    self.group,
                    labels(recorded)
                ),
            )),
        }
    }

    /// The specs the group recorded, read on `conn`, then [`SourceArgs::choose`]n.
    pub async fn specs(
        &self,
        conn: &mut sqlx::MySqlConnection,
    ) -> anyhow::Result<Vec<RecordedSpec>> {
        let recorded = queries::recorded_specs(conn, &self.group).await?;
        Ok(self.choose(&recorded)?)
    }
}

/// `10s, 1m, 30s/10s`.
pub fn labels(specs: &[RecordedSpec]) -> String {
    specs
        .iter()
        .map(|r| r.spec.label())
        .collect::<Vec<_>>()
        .join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(window: Option<&str>, slide: Option<&str>) -> SourceArgs {
        let d = |s: &str| parse_duration(s).unwrap();
        SourceArgs {
            group: "agg".into(),
            window: window.map(d),
            slide: slide.map(d),
            pair: None,
            since: None,
            until: None,
            raw_group: "raw".into(),
        }
    }

    fn recorded(specs: &[WindowSpec]) -> Vec<RecordedSpec> {
        specs
            .iter()
            .map(|&spec| RecordedSpec {
                spec,
                watermark_us: 5_000_000,
            })
            .collect()
    }

    #[test]
    fn every_spec_or_the_one_named() {
        let s = 1_000_000;
        let specs = recorded(&[
            WindowSpec::tumbling(10 * s),
            WindowSpec::sliding(30 * s, 10 * s),
            WindowSpec::tumbling(60 * s),
        ]);
        assert_eq!(source(None, None).choose(&specs).unwrap(), specs);
        assert_eq!(
            source(Some("1m"), None).choose(&specs).unwrap(),
            vec![specs[2]]
        );
        assert_eq!(
            source(Some("30s"), Some("10s")).choose(&specs).unwrap(),
            vec![specs[1]]
        );
        // 30 s tumbling is not 30 s every 10 s.
        let e = source(Some("30s"), None).choose(&specs).unwrap_err();
        assert_eq!(e.setting, "WINDOW");
        assert!(
            e.reason.contains("no window spec 30s") && e.reason.contains("10s, 30s/10s, 1m"),
            "{e}"
        );
        let e = source(Some("1m"), None).choose(&[]).unwrap_err();
        assert_eq!(e.setting, "AGGREGATOR_GROUP");
        assert!(e.reason.contains("no window spec recorded"), "{e}");
    }
}

#[cfg(test)]
mod flags {
    /// Every flag and variable is unique and well formed (clap's own checks, which a release build
    /// skips): the settings shared by every service must not clash with this one's own.
    #[test]
    fn the_settings_are_well_formed() {
        <super::Settings as clap::CommandFactory>::command().debug_assert();
    }
}
