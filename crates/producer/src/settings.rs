//! The producer's settings (flags and environment variables; see the README's table).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use common::{
    config::{non_empty, parse_duration, ConfigError, KafkaArgs, MySqlArgs, Secret, TelemetryArgs},
    observe::ObserveArgs,
    retention::RetentionArgs,
    Pair,
};

/// Where rate updates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// Poll CoinAPI REST (needs COINAPI_KEY).
    Coinapi,
    /// CoinAPI's exchange-rate WebSocket: rates pushed as they change (needs COINAPI_KEY).
    CoinapiWs,
    /// CoinAPI's history of a past range (--since, --until, --period), then exit (needs COINAPI_KEY).
    CoinapiHistory,
    /// Built-in random-walk generator.
    Simulate,
    /// CoinAPI-shaped JSON lines from a file or stdin.
    Replay,
}

/// Settings of the producer.
#[derive(Debug, Parser)]
#[command(
    name = "producer",
    version,
    about = "Publishes exchange-rate updates to Kafka"
)]
pub struct Settings {
    /// Source of updates; default: coinapi when COINAPI_KEY is set, else simulate.
    #[arg(
        long = "source",
        env = "PRODUCER_SOURCE",
        value_name = "PRODUCER_SOURCE",
        value_enum
    )]
    pub source: Option<Source>,
    /// Pairs, comma-separated (e.g. BTC/USD,ETH/USD,BTC/EUR,SOL/USD).
    #[arg(
        long = "pairs",
        env = "PAIRS",
        value_name = "PAIRS",
        default_value = "BTC/USD",
        value_delimiter = ','
    )]
    pub pairs: Vec<Pair>,
    /// Topic to publish rate updates to.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// Log and record statistics this often (simulate and replay; coinapi logs every round).
    #[arg(long = "stats-interval", env = "STATS_INTERVAL", value_name = "STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// CoinAPI key (sent as X-CoinAPI-Key; never logged).
    #[arg(
        long = "coinapi-key",
        env = "COINAPI_KEY",
        value_name = "COINAPI_KEY",
        hide_env_values = true,
        help_heading = "CoinAPI"
    )]
    pub coinapi_key: Option<Secret>,
    /// CoinAPI REST base URL.
    #[arg(long = "coinapi-base-url", env = "COINAPI_BASE_URL", value_name = "COINAPI_BASE_URL", default_value = "https://rest.coinapi.io", value_parser = non_empty, help_heading = "CoinAPI")]
    pub coinapi_base_url: String,
    /// CoinAPI exchange-rate WebSocket URL (--source coinapi-ws).
    #[arg(long = "coinapi-ws-url", env = "COINAPI_WS_URL", value_name = "COINAPI_WS_URL", default_value = "wss://api-realtime.exrates.coinapi.io", value_parser = non_empty, help_heading = "CoinAPI")]
    pub coinapi_ws_url: String,
    /// Poll every pair this often.
    #[arg(long = "interval", env = "POLL_INTERVAL", value_name = "POLL_INTERVAL", default_value = "10s", value_parser = parse_duration, help_heading = "CoinAPI")]
    pub interval: Duration,
    /// Timeout of one HTTP request.
    #[arg(long = "http-timeout", env = "COINAPI_TIMEOUT", value_name = "COINAPI_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "CoinAPI")]
    pub http_timeout: Duration,
    /// Retries of a request after 5xx, timeout or connection error, before skipping it this round.
    #[arg(
        long = "max-retries",
        env = "COINAPI_MAX_RETRIES",
        value_name = "COINAPI_MAX_RETRIES",
        default_value_t = 3,
        help_heading = "CoinAPI"
    )]
    pub max_retries: u32,
    /// First backoff delay (doubles per retry, with jitter).
    #[arg(long = "backoff-initial", env = "COINAPI_BACKOFF_INITIAL", value_name = "COINAPI_BACKOFF_INITIAL", default_value = "1s", value_parser = parse_duration, help_heading = "CoinAPI")]
    pub backoff_initial: Duration,
    /// Longest backoff delay (rate limits with a reset time wait until then instead).
    #[arg(long = "backoff-max", env = "COINAPI_BACKOFF_MAX", value_name = "COINAPI_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration, help_heading = "CoinAPI")]
    pub backoff_max: Duration,

    /// Number of pairs to simulate (overrides --pairs): BTC/USD, ETH/USD, ...
    #[arg(long = "pair-count", env = "SIM_PAIR_COUNT", value_name = "SIM_PAIR_COUNT", value_parser = clap::value_parser!(u16).range(1..), help_heading = "Simulator")]
    pub pair_count: Option<u16>,
    /// Events per second; 0 = as fast as possible.
    #[arg(long = "rate", env = "SIM_RATE", value_name = "SIM_RATE", default_value_t = 10.0, value_parser = non_negative, help_heading = "Simulator")]
    pub rate: f64,
    /// Total events, then exit; default unlimited.
    #[arg(
        long = "count",
        env = "SIM_COUNT",
        value_name = "SIM_COUNT",
        help_heading = "Simulator"
    )]
    pub count: Option<u64>,
    /// Random seed for a reproducible run; default random.
    #[arg(
        long = "seed",
        env = "SIM_SEED",
        value_name = "SIM_SEED",
        help_heading = "Simulator"
    )]
    pub seed: Option<u64>,
    /// Out-of-order delivery: events are published up to this long after their event time.
    #[arg(long = "jitter", env = "SIM_JITTER", value_name = "SIM_JITTER", default_value = "0s", value_parser = parse_duration, help_heading = "Simulator")]
    pub jitter: Duration,
    /// Fraction (0 to 1) of events that are late: their event time is --late-by in the past.
    #[arg(long = "late-fraction", env = "SIM_LATE_FRACTION", value_name = "SIM_LATE_FRACTION", default_value_t = 0.0, value_parser = fraction, help_heading = "Simulator")]
    pub late_fraction: f64,
    /// Fraction (0 to 1) of events published twice.
    #[arg(long = "duplicate-fraction", env = "SIM_DUPLICATE_FRACTION", value_name = "SIM_DUPLICATE_FRACTION", default_value_t = 0.0, value_parser = fraction, help_heading = "Simulator")]
    pub duplicate_fraction: f64,
    /// How far in the past late events are.
    #[arg(long = "late-by", env = "SIM_LATE_BY", value_name = "SIM_LATE_BY", default_value = "15m", value_parser = parse_duration, help_heading = "Simulator")]
    pub late_by: Duration,

    /// Simulated event time: advance the event clock by this much per event instead of following
    /// the wall clock (the run then covers count x interval of event time, ending now).
    #[arg(long = "event-interval", env = "SIM_EVENT_INTERVAL", value_name = "SIM_EVENT_INTERVAL", value_parser = parse_duration, help_heading = "Simulator")]
    pub event_interval: Option<Duration>,
    /// With --event-interval: the first event's time (RFC 3339); default so the run ends now.
    #[arg(long = "event-start", env = "SIM_EVENT_START", value_name = "SIM_EVENT_START", value_parser = parse_start, help_heading = "Simulator")]
    pub event_start: Option<chrono::DateTime<chrono::Utc>>,

    /// File of JSON lines to replay; `-` for stdin.
    #[arg(
        long = "file",
        env = "REPLAY_FILE",
        value_name = "REPLAY_FILE",
        help_heading = "Replay"
    )]
    pub file: Option<PathBuf>,
    /// Replay at this multiple of the original pace (by event time); default as fast as possible.
    #[arg(long = "speed", env = "REPLAY_SPEED", value_name = "REPLAY_SPEED", value_parser = positive, help_heading = "Replay")]
    pub speed: Option<f64>,

    #[command(flatten)]
    pub history: crate::sources::history::HistoryArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub observe: ObserveArgs,
}

fn parse_start(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    common::model::parse_time(s)
        .ok_or_else(|| "expected an RFC 3339 time such as 2024-08-05T13:00:00Z".into())
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err("must be a number >= 0".into()),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("must be a number > 0".into()),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

impl Settings {
    /// The key, when set and not empty.
    pub fn key(&self) -> Option<&Secret> {
        self.coinapi_key.as_ref().filter(|k| !k.is_empty())
    }

    /// The source to run, and whether it was chosen by default. Checks the settings it needs.
    pub fn resolve_source(&self) -> Result<(Source, bool), ConfigError> {
        let (source, defaulted) = match self.source {
            Some(s) => (s, false),
            None if self.key().is_some() => (Source::Coinapi, true),
            None => (Source::Simulate, true),
        };
        match source {
            Source::Coinapi | Source::CoinapiWs | Source::CoinapiHistory if self.key().is_none() => {
                Err(ConfigError::new(
                    "COINAPI_KEY",
                    "required for --source coinapi, coinapi-ws and coinapi-history (or choose --source simulate)",
                ))
            }
            Source::Replay if self.file.is_none() => Err(ConfigError::new(
                "REPLAY_FILE",
                "required for --source replay (a path, or - for stdin)",
            )),
            _ => Ok((source, defaulted)),
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
