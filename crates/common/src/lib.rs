//! Shared parts of the coinstream services.
//!
//! - [`model`]: the rate update on `raw_coin_data` (CoinAPI JSON), pairs and asset ids.
//! - [`config`]: settings from flags, environment and `.env`; secrets; bad settings exit 2.
//! - [`db`]: MySQL pool with start-up retry, embedded migrations.
//! - [`kafka`]: producer/consumer defaults, idempotent topic creation.
//! - [`consumer`]: the one consumer runtime (offsets in MySQL, rebalances, watchdog, drained
//!   exit) behind raw-consumer, update-counter and the stream aggregator; [`ingest`]: its batch
//!   processor for services that only parse and write rows.
//! - [`window`]: the validated window spec and the window result message.
//! - [`stats`]: typed statistics rows; [`exit`]: the exit statuses.
//! - [`telemetry`]: tracing setup with the service name on every line.
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - `testing` (feature `testing`): a fresh database and unique topics per test.

pub mod backoff;
pub mod config;
pub mod consumer;
pub mod db;
pub mod exit;
pub mod ingest;
pub mod kafka;
pub mod model;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod window;

use std::process::ExitCode;

pub use config::{ConfigError, Secret};
pub use model::{AssetId, ModelError, Pair, RateEvent, RateUpdate};

/// Runs a service on a multi-threaded runtime: `main` gets the shutdown token (cancelled on
/// SIGINT/SIGTERM) and its outcome becomes the exit status: 0 on success, 2 for a
/// [`ConfigError`], 3 and 4 for an [`exit::Stopped`], 1 for any other error (logged with its
/// causes).
pub fn run_service<F, Fut>(service: &'static str, main: F) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async { main(shutdown::on_signal()).await });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cfg) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {cfg}");
                return ExitCode::from(exit::CONFIG);
            }
            if let Some(stop) = e.downcast_ref::<exit::Stopped>() {
                tracing::error!(status = stop.status(), "{service} stopped: {stop}");
                return ExitCode::from(stop.status());
            }
            tracing::error!(error = format!("{e:#}"), "{service} failed");
            ExitCode::FAILURE
        }
    }
}

/// What every service does before its loop: MySQL reachable and migrated, its topics present.
pub async fn prepare(
    mysql: &config::MySqlArgs,
    kafka: Option<(&config::KafkaArgs, &[&str])>,
) -> anyhow::Result<sqlx::MySqlPool> {
    use anyhow::Context;
    let pool = db::connect_and_migrate(mysql).await?;
    if let Some((k, topics)) = kafka {
        let specs: Vec<kafka::TopicSpec> = topics
            .iter()
            .map(|t| kafka::TopicSpec::new(*t, k.partitions, k.replication))
            .collect();
        kafka::ensure_topics(&k.bootstrap_servers, &specs, k.connect_timeout)
            .await
            .with_context(|| format!("creating topics {topics:?} at {}", k.bootstrap_servers))?;
    }
    Ok(pool)
}
