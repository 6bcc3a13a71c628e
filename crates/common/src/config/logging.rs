//! Logging settings.

use clap::{Args, ValueEnum};

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging settings. The filter comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "pretty",
        value_enum
    )]
    pub log_format: LogFormat,
}
