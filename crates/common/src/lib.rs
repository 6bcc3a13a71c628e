//! Shared parts of the coinstream services.
//!
//! - [`model`]: the rate update on `raw_coin_data` (CoinAPI JSON), pairs and asset ids.
//! - [`config`]: settings from flags, environment and `.env`; secrets; bad settings exit 2.
//! - [`db`]: MySQL pool with start-up retry, embedded migrations.
//! - [`kafka`]: producer/consumer defaults, idempotent topic creation.
//! - [`telemetry`]: tracing setup with the service name on every line.
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - `testing` (feature `testing`): a fresh database and unique topics per test.

pub mod backoff;
pub mod config;
pub mod db;
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

/// Runs a service's main future on a multi-threaded runtime and turns its outcome into the exit
/// status: 0 on success, 2 for a [`ConfigError`], 1 for any other error (logged with its causes).
pub fn run_service<F>(service: &'static str, fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
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
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cfg) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {cfg}");
                return ExitCode::from(config::CONFIG_EXIT_CODE as u8);
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
