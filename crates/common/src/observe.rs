//! A service's HTTP endpoint for operators (`--metrics-addr` / `METRICS_ADDR`, off unless set):
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]);
//! - `GET /healthz`: 200 while the main loop turns, 503 once it has not for 30 s;
//! - `GET /readyz`: 200 when the service says it is ready, else 503 with `{"ready":false,"reason":..}`.
//!
//! `--healthcheck` asks a running instance's `/readyz` (at `METRICS_ADDR`) and exits 0 or 1, for
//! container healthchecks without curl.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::metrics::Exporter;

/// How long the main loop may not turn before `/healthz` says so.
const STALL: Duration = Duration::from_secs(30);
/// How long the same database work may keep failing before `/readyz` says so.
pub const WRITE_STUCK: Duration = Duration::from_secs(60);

/// Metrics and health settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Metrics and health")]
pub struct ObserveArgs {
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9100); unset: off.
    #[arg(
        id = "metrics_addr",
        long = "metrics-addr",
        env = "METRICS_ADDR",
        value_name = "METRICS_ADDR"
    )]
    pub metrics_addr: Option<SocketAddr>,
    /// Ask the running instance's /readyz (at METRICS_ADDR) and exit 0 if ready, 1 if not.
    #[arg(long = "healthcheck")]
    pub healthcheck: bool,
}

/// What a service tells its endpoint: that its loop turns, and whether it is ready.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the last turn of the main loop.
    last_turn_ms: AtomicU64,
    /// `Ok` when ready, else why not.
    ready: RwLock<Result<(), String>>,
    /// Since when the same database work has been failing, and the latest error.
    failing: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            ready: RwLock::new(Err("starting".into())),
            failing: std::sync::Mutex::new(None),
        }
    }
}

impl Health {
    /// The main loop turned (cheap: one atomic store).
    pub fn turn(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the loop turned within [`STALL`].
    pub fn alive(&self) -> bool {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < STALL
    }

    pub fn set_ready(&self, ready: Result<(), String>) {
        *self.ready.write().unwrap_or_else(|p| p.into_inner()) = ready;
    }

    /// Ready, or why not: what the service said last, or that the same database work has been
    /// failing for over [`WRITE_STUCK`].
    pub fn ready(&self) -> Result<(), String> {
        if let Some((since, error)) = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let failing = since.elapsed();
            if failing >= WRITE_STUCK {
                return Err(format!(
                    "the same database work has been failing for {} s: {error}",
                    failing.as_secs()
                ));
            }
        }
        self.ready.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An attempt of some database work failed (the first failure starts the clock).
    pub fn write_failed(&self, error: &str) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let since = f.as_ref().map_or_else(Instant::now, |(s, _)| *s);
        *f = Some((since, error.to_owned()));
    }

    /// The database work succeeded.
    pub fn write_succeeded(&self) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    #[cfg(test)]
    fn failing_since(&self, since: Instant) {
        if let Some((s, _)) = self.failing.lock().unwrap().as_mut() {
            *s = since;
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    exporter: Exporter,
    health: Arc<Health>,
}

/// Installs the metrics recorder and serves the endpoint on `addr` until `shutdown`.
pub async fn serve(
    service: &'static str,
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let exporter = Exporter::install(service)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::ConfigError::new("METRICS_ADDR", format!("cannot listen on {addr}: {e}"))
    })?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoint { exporter, health });
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn metrics(State(e): State<Endpoint>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        e.exporter.render(),
    )
}

async fn healthz(State(e): State<Endpoint>) -> impl IntoResponse {
    if e.health.alive() {
        (StatusCode::OK, "alive\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the main loop has not turned for 30 s\n",
        )
    }
}

async fn readyz(State(e): State<Endpoint>) -> impl IntoResponse {
    match e.health.ready() {
        Ok(()) if e.health.alive() => (StatusCode::OK, Json(serde_json::json!({"ready": true}))),
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"ready": false, "reason": "the main loop has not turned for 30 s"}),
            ),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": reason})),
        ),
    }
}

/// `--healthcheck`: whether the instance at `addr` answers `/readyz` with 200 (within 5 s).
pub async fn check(addr: Option<SocketAddr>) -> Result<(), String> {
    let addr = addr.ok_or("METRICS_ADDR is not set: there is no endpoint to ask")?;
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("http://{host}/readyz"))
        .send()
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_turns_and_readiness() {
        let h = Health::default();
        assert!(h.alive(), "alive at the start");
        assert_eq!(h.ready(), Err("starting".into()));
        h.set_ready(Ok(()));
        h.turn();
        assert!(h.alive() && h.ready().is_ok());
        h.set_ready(Err("no partitions".into()));
        assert_eq!(h.ready(), Err("no partitions".into()));
    }

    #[test]
    fn a_write_failing_for_a_minute_makes_it_unready() {
        let h = Health::default();
        h.set_ready(Ok(()));
        h.write_failed("writing the batch: Data too long");
        assert!(h.ready().is_ok(), "not yet a minute");
        h.failing_since(Instant::now() - WRITE_STUCK - Duration::from_secs(1));
        h.write_failed("writing the batch: lock wait timeout");
        let reason = h.ready().unwrap_err();
        assert!(
            reason.contains("failing for 61 s") && reason.contains("lock wait timeout"),
            "{reason}"
        );
        h.write_succeeded();
        assert!(h.ready().is_ok());
    }
}
