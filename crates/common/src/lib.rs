//! common: the shared core of the coinstream services (the consumer runtime is the `consumer`
//! crate; the test kit is `testkit`, a dev-dependency).
//!
//! - [`model`]: the rate update on `raw_coin_data` (CoinAPI JSON), pairs and asset ids.
//! - [`config`]: settings from flags, environment and `.env` (values, MySQL, Kafka and their
//!   security, logging); secrets; bad settings exit 2.
//! - [`db`]: MySQL pool with start-up retry, embedded migrations.
//! - [`kafka`]: producer/consumer defaults, idempotent topic creation.
//! - [`window`]: the validated window spec and the window result message.
//! - [`figures`]: what a service reports about itself; [`exit`]: the exit statuses.
//! - [`retry`]: database errors classified (transient or rejected) and the one retry loop.
//! - [`retention`]: old rows pruned in the background (`--retention`).
//! - [`metrics`]: the Prometheus registry and its conventions; [`observe`]: `/metrics`,
//!   `/healthz`, `/readyz`.
//! - [`telemetry`]: tracing setup with the service name on every line.
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.

pub mod backoff;
pub mod config;
pub mod db;
pub mod exit;
pub mod figures;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod retention;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod window;

use std::process::ExitCode;

pub use config::{ConfigError, Secret};
pub use model::{AssetId, ModelError, Pair, RateEvent, RateUpdate};

/// What a running service gets from [`run_service`].
#[derive(Debug, Clone)]
pub struct Context {
    /// Cancelled on SIGINT/SIGTERM.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The service's turns and readiness, for `/healthz` and `/readyz`.
    pub health: std::sync::Arc<observe::Health>,
}

/// Runs a service on a multi-threaded runtime: serves its metrics and health when `observe` asks
/// for it (or answers `--healthcheck` and exits), then runs `main` with a [`Context`]. Its outcome
/// becomes the exit status: 0 on success, 2 for a [`ConfigError`], 3 and 4 for an
/// [`exit::Stopped`], 1 for any other error (logged with its causes).
pub fn run_service<F, Fut>(
    service: &'static str,
    observe: Option<&observe::ObserveArgs>,
    main: F,
) -> ExitCode
where
    F: FnOnce(Context) -> Fut,
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
    if let Some(args) = observe.filter(|a| a.healthcheck) {
        return match runtime.block_on(observe::check(args.metrics_addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{service} not ready: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let addr = observe.and_then(|a| a.metrics_addr);
    let outcome = runtime.block_on(async {
        let ctx = Context {
            shutdown: shutdown::on_signal(),
            health: Default::default(),
        };
        if let Some(addr) = addr {
            observe::serve(service, addr, ctx.health.clone(), ctx.shutdown.clone()).await?;
        }
        main(ctx).await
    });
    exit_status(service, outcome)
}

fn exit_status(service: &str, outcome: anyhow::Result<()>) -> ExitCode {
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
    if let Some((k, _)) = kafka {
        // Bad Kafka settings are reported before waiting for MySQL.
        k.client_config()?;
    }
    let pool = db::connect_and_migrate(mysql).await?;
    if let Some((k, topics)) = kafka {
        k.ensure_topics(topics).await?;
    }
    Ok(pool)
}
