//! producer: fetches exchange rates and publishes them to topic `raw_coin_data`, keyed
//! `BASE/QUOTE` so one pair stays on one partition, in order. Every delivery is checked; a message
//! that cannot be delivered stops the producer with an error rather than being dropped.
//!
//! - [`sources`]: where rates come from, side by side and of one shape (run with the settings, a
//!   publisher, a reporter and the shutdown token): CoinAPI REST polling ([`sources::rest`]),
//!   CoinAPI's WebSocket feed ([`sources::ws`]), the built-in simulator ([`sources::simulate`]),
//!   a file replay ([`sources::replay`]).
//! - [`publisher`]: the Kafka producer with delivery accounting.
//! - [`report`]: the producer's figures (log, metrics, readiness, `service_stats`);
//!   [`metrics`]: its Prometheus series.
//! - [`settings`]: flags and environment.

pub mod metrics;
pub mod publisher;
pub mod report;
pub mod settings;
pub mod sources;

use std::time::Duration;

pub use settings::{Settings, Source};

use crate::{publisher::Publisher, report::Reporter};

/// How long shutdown waits for outstanding deliveries.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the producer until its source is exhausted or it is asked to stop.
pub async fn run(settings: Settings, ctx: common::Context) -> anyhow::Result<()> {
    metrics::init();
    let shutdown = ctx.shutdown.clone();
    let (source, defaulted) = settings.resolve_source()?;
    match (source, defaulted) {
        (Source::Simulate, true) => tracing::info!(
            "COINAPI_KEY is not set: using the built-in simulator (set COINAPI_KEY or --source to change)"
        ),
        _ => tracing::info!(source = ?source, "producer starting"),
    }
    settings.kafka.ensure_topics(&[&settings.topic]).await?;
    let reporter = Reporter {
        recorder: report::connect_statistics(
            &settings.mysql,
            &settings.retention,
            shutdown.clone(),
        )?,
        runtime: tokio::runtime::Handle::current(),
        health: ctx.health.clone(),
    };
    let publisher = Publisher::with_config(&settings.kafka.producer_config()?, &settings.topic)?;
    reporter.health.set_ready(Ok(()));
    let statistics = reporter.recorder.clone();
    let result = match source {
        Source::Coinapi => sources::rest::run(&settings, publisher, reporter, shutdown).await,
        Source::CoinapiWs => sources::ws::run(&settings, publisher, reporter, shutdown).await,
        Source::CoinapiHistory => sources::history::run(&settings, publisher, shutdown).await,
        Source::Simulate => sources::simulate::run(&settings, publisher, reporter, shutdown).await,
        Source::Replay => sources::replay::run(&settings, publisher, reporter, shutdown).await,
    };
    if let Some(recorder) = statistics.get() {
        recorder.close().await;
    }
    result
}
