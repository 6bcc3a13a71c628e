//! `compare serve`: the live dashboard. A web page and JSON API over the MySQL tables, read-only
//! (a user with `SELECT` suffices; nothing is migrated or written).
//!
//! Every window spec of the aggregator group (or the one `--window` names) is followed at once;
//! the page shows one at a time (its resolution selector; `?window=` in the API).
//!
//! - [`poll`]: one task reads what changed (index and primary-key ranges, never a full scan per
//!   tick; `changes`, with the id cursors of `cursor`), recomputes the batch side of exactly
//!   those windows of each spec, and pushes their new views;
//! - [`live`]: both sides of every window of one spec in scope, in memory;
//! - [`pipeline`]: the group's services' latest statistics, for the pipeline panel;
//! - [`api`]: the page, `/events` (Server-Sent Events), `/api/*` (parameters checked by
//!   `params`), `/healthz`;
//! - [`conn`]: connections the server can cut (a client that stopped taking its events);
//! - [`assets`]: the page's files, embedded in the binary.
//!
//! Each tick's reads are one consistent snapshot ([`crate::queries::Snapshot`]), and the verdict
//! counts the windows the pipeline has not settled as pending ([`crate::settle`]). Anything
//! compared with `updated_at` or the services' times is on the database's clock, never this
//! host's. No lock on the state is held across a database query, and `/healthz` takes none.

pub mod api;
pub mod assets;
mod changes;
pub mod conn;
mod cursor;
pub mod live;
mod params;
pub mod pipeline;
pub mod poll;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use common::{
    config::{parse_duration, ConfigError, MySqlArgs, TelemetryArgs},
    window::WindowSpec,
};
use tokio::sync::{broadcast, RwLock, Semaphore};

use crate::{accuracy::Accuracy, batch::Scope, SourceArgs};

/// Settings of `compare serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address the dashboard listens on.
    #[arg(
        long = "listen",
        env = "COMPARE_LISTEN",
        value_name = "COMPARE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// How often the tables are read for changes.
    #[arg(long = "poll-interval", env = "COMPARE_POLL_INTERVAL", value_name = "COMPARE_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Event streams (/events) served at once; more get 503.
    #[arg(long = "max-clients", env = "COMPARE_MAX_CLIENTS", value_name = "COMPARE_MAX_CLIENTS", default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: u32,
    /// Ask the dashboard running at --listen (its /readyz) and exit 0 if it answers, 1 if not
    /// (for container healthchecks).
    #[arg(long = "healthcheck")]
    pub healthcheck: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The database as the poller last found it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbStatus {
    pub up: bool,
    /// Why not, when down (never a password: errors name host and database only).
    pub error: Option<String>,
    /// The last successful read, µs since the epoch.
    pub last_ok_us: Option<i64>,
}

/// What the poller keeps and the handlers read.
#[derive(Debug)]
pub struct State {
    pub group: String,
    pub scope: Scope,
    /// Every window spec shown (the group's, or the one `--window` names), in the group's order
    /// (size, then slide): both sides of its windows and its verdict.
    pub specs: BTreeMap<WindowSpec, Resolution>,
    /// Why there is nothing to show yet (e.g. no window spec recorded).
    pub waiting: Option<String>,
    pub pipeline: pipeline::Pipeline,
    pub db: DbStatus,
}

/// One spec on the dashboard (a resolution of the charts).
#[derive(Debug)]
pub struct Resolution {
    pub live: live::Live,
    pub accuracy: Accuracy,
    /// Its first full batch computation: the duration and the raw rows it read.
    pub batch_seconds: f64,
    pub raw_rows: i64,
}

impl State {
    /// The spec a request's `window` parameter names (`10s`, `1h/1m`, or any spelling of it:
    /// `60s` is `1m`), or the first one without it. `Err`: why not, for a 400 (or 503 while
    /// there is no spec yet: `None`).
    pub fn resolution(
        &self,
        window: Option<&str>,
    ) -> Result<(WindowSpec, &Resolution), Option<String>> {
        let Some(text) = window else {
            return self.specs.iter().next().map(|(s, r)| (*s, r)).ok_or(None);
        };
        let wanted = match common::window::parse_specs(text) {
            Ok(specs) if specs.len() == 1 => specs[0],
            Ok(_) => return Err(Some(format!("window: {text:?} names more than one spec"))),
            Err(e) => return Err(Some(format!("window: {}", e.reason))),
        };
        match self.specs.get(&wanted) {
            Some(r) => Ok((wanted, r)),
            None if self.specs.is_empty() => Err(None),
            None => Err(Some(format!(
                "window: {text:?} is not a window spec of group {:?} (its specs: {})",
                self.group,
                self.specs
                    .keys()
                    .map(WindowSpec::label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// What `/healthz` answers from, without waiting on anything (a plain mutex, held for copies).
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub up: bool,
    pub error: Option<String>,
    /// The poller's last successful read of the tables.
    pub last_ok: Option<Instant>,
    /// The database's clock (µs) at the last read of it, and when that was here: the database's
    /// time now is that plus the time elapsed since.
    pub db_clock: Option<(i64, Instant)>,
}

impl Health {
    /// The database's clock now, as last read plus the time since (this host's monotonic clock
    /// measures only the elapsed time, never the time of day).
    pub fn db_now_us(&self) -> Option<i64> {
        self.db_clock
            .map(|(us, at)| us + i64::try_from(at.elapsed().as_micros()).unwrap_or(i64::MAX))
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: String,
}

/// Shared between the poller and the handlers.
#[derive(Debug)]
pub struct Shared {
    pub state: RwLock<State>,
    pub health: std::sync::Mutex<Health>,
    /// One permit per event stream served (`--max-clients`).
    pub clients: Arc<Semaphore>,
    pub events: broadcast::Sender<Event>,
    pub pool: sqlx::MySqlPool,
    pub settings: ServeSettings,
    /// Ends the event streams at shutdown (open streams would hold the server).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The JSON reports (by the `window` asked for), each built at most every few seconds.
    pub reports: tokio::sync::Mutex<HashMap<String, (Instant, String)>>,
}

/// Serves until shutdown.
pub async fn run(settings: ServeSettings, ctx: common::Context) -> anyhow::Result<()> {
    let opts = settings.mysql.connect_options()?;
    let target = settings.mysql.describe();
    // A read waits at most 3 s for a connection: the page hears soon that the database is gone.
    let pool = common::db::connect_with_acquire_timeout(
        opts,
        &target,
        settings.mysql.pool_size,
        settings.mysql.connect_timeout,
        std::time::Duration::from_secs(3),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            ConfigError::new(
                "COMPARE_LISTEN",
                format!("cannot listen on {}: {e}", settings.listen),
            )
        })?;
    let (events, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        state: RwLock::new(State {
            group: settings.source.group.clone(),
            scope: settings.source.scope(),
            specs: BTreeMap::new(),
            waiting: Some("starting".into()),
            pipeline: pipeline::Pipeline::default(),
            db: DbStatus {
                up: true,
                error: None,
                last_ok_us: None,
            },
        }),
        health: std::sync::Mutex::new(Health {
            up: true,
            ..Health::default()
        }),
        clients: Arc::new(Semaphore::new(settings.max_clients as usize)),
        events,
        pool,
        settings: settings.clone(),
        shutdown: ctx.shutdown.clone(),
        reports: tokio::sync::Mutex::new(HashMap::new()),
    });
    tracing::info!(listen = %settings.listen, group = %settings.source.group, "serving the dashboard");
    let poller = tokio::spawn(poll::run(shared.clone(), ctx.shutdown.clone()));
    let app = api::router(shared.clone()).into_make_service_with_connect_info::<conn::Client>();
    axum::serve(conn::Listener(listener), app)
        .with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned())
        .await?;
    poller.abort();
    Ok(())
}
