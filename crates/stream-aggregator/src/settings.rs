//! The stream aggregator's settings (flags and environment variables; see the README's table).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use common::config::{non_empty, parse_duration, ConfigError, KafkaArgs, MySqlArgs, TelemetryArgs};
use common::{observe::ObserveArgs, retention::RetentionArgs};
use consumer::{dead_letters::ReplayArgs, ConsumerArgs};

use crate::engine::{Mode, Specs, WindowSpec};
use common::window::parse_specs;

/// Output mode (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    /// Changed windows are upserted at every flush; `is_final` set when the window closes.
    Update,
    /// Each window written once, when it closes.
    Append,
}

/// Settings of the stream aggregator.
#[derive(Debug, Parser)]
#[command(
    name = "stream-aggregator",
    version,
    about = "Event-time windowed aggregation of rate updates"
)]
pub struct Settings {
    /// Topic to read rate updates from.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// Topic to publish window results to.
    #[arg(long = "output-topic", env = "AGG_TOPIC", value_name = "AGG_TOPIC", default_value = "aggregated_data", value_parser = non_empty)]
    pub output_topic: String,
    /// Kafka consumer group (also the key of the aggregator's state in MySQL).
    #[arg(long = "group", env = "AGGREGATOR_GROUP", value_name = "AGGREGATOR_GROUP", default_value = "stream-aggregator", value_parser = non_empty)]
    pub group: String,
    /// Window specs computed together, `SPEC[,SPEC...]`, each `SIZE` (tumbling) or `SIZE/SLIDE`:
    /// `1m,5m,1h/1m`. Instead of WINDOW and SLIDE.
    #[arg(long = "windows", env = "WINDOWS", value_name = "WINDOWS", value_parser = non_empty)]
    pub windows: Option<String>,
    /// Window size of the one-spec form [default: 5m].
    #[arg(long = "window", env = "WINDOW", value_name = "WINDOW", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Slide for sliding windows (default: tumbling, slide = window).
    #[arg(long = "slide", env = "SLIDE", value_name = "SLIDE", value_parser = parse_duration)]
    pub slide: Option<Duration>,
    /// Allowed lateness: watermark = largest event time seen minus this.
    #[arg(long = "watermark", env = "WATERMARK", value_name = "WATERMARK", default_value = "10m", value_parser = parse_duration)]
    pub watermark: Duration,
    /// How long after the watermark closed a window it still takes late updates: each is applied
    /// and the window written and published final again (with its revision). 0: none (an update
    /// later than the watermark is a late event).
    #[arg(long = "allowed-lateness", env = "ALLOWED_LATENESS", value_name = "ALLOWED_LATENESS", default_value = "0s", value_parser = parse_duration)]
    pub allowed_lateness: Duration,
    /// After this long without events on a partition its watermark follows the wall clock.
    #[arg(long = "idle-timeout", env = "IDLE_TIMEOUT", value_name = "IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Output mode.
    #[arg(
        long = "mode",
        env = "AGG_MODE",
        value_name = "AGG_MODE",
        default_value = "update",
        value_enum
    )]
    pub mode: OutputMode,
    /// Write results, state and offsets this often (one transaction).
    #[arg(long = "flush-interval", env = "FLUSH_INTERVAL", value_name = "FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub replay: ReplayArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

impl Settings {
    /// The window specs, checked: `WINDOWS`, or the one spec of `WINDOW` (default 5m) and
    /// `SLIDE` (see [`WindowSpec::from_settings`]).
    pub fn specs(&self) -> Result<Specs, ConfigError> {
        match (&self.windows, self.window, self.slide) {
            (Some(list), None, None) => Ok(Specs::new(parse_specs(list)?)),
            (Some(_), _, _) => Err(ConfigError::new(
                "WINDOWS",
                "give either WINDOWS or WINDOW (and SLIDE), not both",
            )),
            (None, window, slide) => {
                let window = window.unwrap_or(Duration::from_secs(300));
                Ok(Specs::one(WindowSpec::from_settings(window, slide)?))
            }
        }
    }

    pub fn lateness_us(&self) -> i64 {
        self.watermark.as_micros() as i64
    }

    pub fn allowed_lateness_us(&self) -> i64 {
        i64::try_from(self.allowed_lateness.as_micros()).unwrap_or(i64::MAX)
    }

    pub fn engine_mode(&self) -> Mode {
        match self.mode {
            OutputMode::Update => Mode::Update,
            OutputMode::Append => Mode::Append,
        }
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
