//! The dashboard's HTTP surface: the page and its files, `/events`, `/api/*`, `/healthz`.
//! Query parameters are parsed and checked here: bad input gets 400 with a JSON error and never
//! reaches SQL (and the API answers from memory anyway).

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use common::model::{parse_time, Pair};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::{assets, conn::Client, Event, Shared};
use crate::{batch::Batch, queries, report::Sides};

/// Events waiting for one client at most: beyond, it is cut.
pub const CLIENT_QUEUE: usize = 64;
/// A client with events waiting that takes none for this long is cut.
pub const CLIENT_STALL: Duration = Duration::from_secs(5);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", assets::INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", assets::APP_JS) }),
        )
        .route(
            "/chart.js",
            get(|| async { asset("text/javascript; charset=utf-8", assets::CHART_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", assets::STYLE) }),
        )
        .route(
            "/errors.js",
            get(|| async { asset("text/javascript; charset=utf-8", assets::ERRORS_JS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/events", get(events))
        .route("/api/meta", get(meta))
        .route("/api/windows", get(windows))
        .route("/api/pipeline", get(pipeline))
        .route("/api/report", get(report))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A JSON error.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// What the page needs first: group, spec, scope, pairs (with their latest window), status.
async fn meta(State(s): State<Arc<Shared>>) -> Response {
    let state = s.state.read().await;
    let pairs: Vec<_> = state
        .live
        .as_ref()
        .map(|l| {
            l.pairs()
                .into_iter()
                .map(|(pair, latest_us)| json!({ "pair": pair, "latest_us": latest_us }))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({
        "group": state.group,
        "spec": state.live.as_ref().map(|l| l.spec),
        "scope": {
            "pair": state.scope.pair.map(|p| p.to_string()),
            "since": state.scope.since,
            "until": state.scope.until,
        },
        "pairs": pairs,
        "db": state.db,
        "waiting": state.waiting,
        "accuracy": state.accuracy,
    }))
    .into_response()
}

/// Windows shown at most per request (the latest ones).
const MAX_WINDOWS: usize = 20_000;

/// `/api/windows?pair=BTC/USD[&since=RFC3339][&until=RFC3339][&limit=N]`: one pair's windows.
async fn windows(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(pair) = q.get("pair") else {
        return error(
            StatusCode::BAD_REQUEST,
            "pair is required, e.g. pair=BTC/USD",
        );
    };
    let pair: Pair = match pair.parse() {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("pair: {e}")),
    };
    let time = |name: &str| -> Result<Option<i64>, Box<Response>> {
        match q.get(name) {
            None => Ok(None),
            Some(t) => parse_time(t)
                .map(|t| Some(t.timestamp_micros()))
                .ok_or_else(|| {
                    Box::new(error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{name}: {t:?} is not a time (RFC 3339, e.g. 2024-08-05T12:00:00Z)"
                        ),
                    ))
                }),
        }
    };
    let (since, until) = match (time("since"), time("until")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return *e,
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_WINDOWS,
        Some(Ok(n)) if (1..=MAX_WINDOWS).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit: a number from 1 to {MAX_WINDOWS}"),
            )
        }
    };
    let state = s.state.read().await;
    let Some(live) = state.live.as_ref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            state.waiting.clone().unwrap_or_else(|| "starting".into()),
        );
    };
    let (base, quote) = (pair.base.to_string(), pair.quote.to_string());
    if !live.has_pair(&base, &quote) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pair: {pair} has no windows (unknown pair)"),
        );
    }
    let windows = live.windows(
        &base,
        &quote,
        since.unwrap_or(i64::MIN),
        until.unwrap_or(i64::MAX),
        limit,
    );
    Json(json!({ "pair": pair.to_string(), "spec": live.spec, "windows": windows })).into_response()
}

/// The pipeline panel now (by the database's clock, as last read plus the time since).
async fn pipeline(State(s): State<Arc<Shared>>) -> Response {
    let now_us = s.health().db_now_us();
    let mut state = s.state.write().await;
    let panel = now_us.map(|now| state.pipeline.panel(now));
    let dead = state.pipeline.dead_letters.clone();
    Json(json!({ "now_us": now_us, "services": panel.unwrap_or_default(), "dead_letters": dead }))
        .into_response()
}

/// How long a built report is served again.
const REPORT_TTL: Duration = Duration::from_secs(5);

/// The JSON report of the live state (the one-shot report's shape).
async fn report(State(s): State<Arc<Shared>>) -> Response {
    let mut cached = s.report.lock().await;
    if let Some((at, body)) = cached.as_ref() {
        if at.elapsed() < REPORT_TTL {
            return json_body(body.clone());
        }
    }
    let (spec, stream, batch, settlement, batch_seconds, raw_rows, scope, group) = {
        let state = s.state.read().await;
        let Some(live) = state.live.as_ref() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                state.waiting.clone().unwrap_or_else(|| "starting".into()),
            );
        };
        (
            live.spec,
            live.stream.clone(),
            live.batch.clone(),
            live.settlement().clone(),
            state.batch_seconds,
            state.raw_rows,
            state.scope.clone(),
            state.group.clone(),
        )
    };
    let figures = async {
        let mut snap = queries::Snapshot::begin(&s.pool).await?;
        let conn = snap.conn();
        let counts = queries::update_counts(conn, &scope).await?;
        let services = queries::services(conn).await?;
        let latency = queries::batch_latency(conn, batch_seconds).await?;
        snap.end().await?;
        anyhow::Ok((counts, services, latency))
    };
    let (counts, services, batch_latency_ms) = match figures.await {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {e:#}"),
            )
        }
    };
    let batch = Batch {
        windows: batch,
        seconds: batch_seconds,
        raw_rows,
    };
    let report = crate::report::assemble(Sides {
        group: &group,
        spec,
        stream: &stream,
        batch: &batch,
        counts: &counts,
        settlement: &settlement,
        services,
        batch_latency_ms,
    });
    let body = report.to_json();
    *cached = Some((std::time::Instant::now(), body.clone()));
    json_body(body)
}

impl Shared {
    /// The health as the poller left it (a plain mutex, held only to copy or update it).
    pub fn health(&self) -> std::sync::MutexGuard<'_, super::Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn json_body(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// 200 while the database answers the poller; 503 with the reason otherwise. Answers from a
/// plain mutex the poller updates: never waits on the state or the database.
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let health = s.health().clone();
    let recent = health
        .last_ok
        .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
    if health.up && recent {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "reason": health.error.unwrap_or_else(|| "no successful read of the tables in 10 s".into()),
            })),
        )
            .into_response()
    }
}

/// Server-Sent Events: `status`, `summary` at once, then `windows`, `summary`, `pipeline`,
/// `status` and `resync` (refetch everything: after a start) as they happen. The page's
/// EventSource reconnects by itself. At most `--max-clients` streams at once (503 beyond); a
/// client that stops taking its events is cut ([`forward`]).
async fn events(
    State(s): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<Client>,
) -> Response {
    let Ok(permit) = s.clients.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many clients: this dashboard serves at most {} event streams at once (COMPARE_MAX_CLIENTS)",
                s.settings.max_clients
            ),
        );
    };
    let rx = s.events.subscribe();
    let first = {
        let state = s.state.read().await;
        vec![
            Event {
                name: "status",
                data: json!({ "db": state.db, "waiting": state.waiting }).to_string(),
            },
            Event {
                name: "summary",
                data: serde_json::to_string(&state.accuracy).unwrap_or_default(),
            },
        ]
    };
    let (tx, queue) = mpsc::channel(CLIENT_QUEUE);
    let taken = Arc::new(AtomicU64::new(0));
    tokio::spawn(forward(rx, tx, taken.clone(), client));
    // The permit is the stream's: released when the stream is dropped.
    let live = futures::stream::unfold((queue, permit), |(mut queue, permit)| async move {
        queue.recv().await.map(|e| (e, (queue, permit)))
    })
    .inspect(move |_| {
        taken.fetch_add(1, Ordering::Relaxed);
    });
    let stream = futures::stream::iter(first)
        .chain(live)
        .map(|e| Ok::<_, Infallible>(SseEvent::default().event(e.name).data(e.data)))
        .take_until(s.shutdown.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// Moves the events to one client's queue. A client with [`CLIENT_QUEUE`] events waiting, or
/// with some waiting that took none for [`CLIENT_STALL`], is cut: its connection is closed
/// rather than left to hold events (its page reconnects and reloads when it can).
async fn forward(
    mut rx: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    taken: Arc<AtomicU64>,
    client: Client,
) {
    let mut sent = 0u64;
    let mut progress = (0u64, Instant::now());
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let why = loop {
        tokio::select! {
            () = tx.closed() => return,
            e = rx.recv() => match e {
                Ok(e) => match tx.try_send(e) {
                    Ok(()) => sent += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break format!("{CLIENT_QUEUE} events waiting");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => break format!("{n} events missed"),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = check.tick() => {
                let t = taken.load(Ordering::Relaxed);
                if t != progress.0 || t >= sent {
                    progress = (t, Instant::now());
                } else if progress.1.elapsed() >= CLIENT_STALL {
                    break format!("{} events waiting, none taken for {CLIENT_STALL:?}", sent - t);
                }
            }
        }
    };
    tracing::warn!(client = %client.addr, why, "an event stream's client does not take its events: cut");
    client.cut();
}
