//! The dashboard's HTTP surface: the page and its files, `/events`, `/api/*`, `/healthz`.
//! Query parameters are parsed and checked here: bad input gets 400 with a JSON error and never
//! reaches SQL (and the API answers from memory anyway).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use chrono::Utc;
use common::model::{parse_time, Pair};
use futures::{Stream, StreamExt};
use serde_json::json;

use super::{assets, Event, Shared};
use crate::{batch::Batch, queries, Sides};

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

/// The pipeline panel now.
async fn pipeline(State(s): State<Arc<Shared>>) -> Response {
    let now_us = Utc::now().timestamp_micros();
    let mut state = s.state.write().await;
    let panel = state.pipeline.panel(now_us);
    Json(json!({ "now_us": now_us, "services": panel })).into_response()
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
    let (spec, stream, batch, batch_seconds, raw_rows, scope, group) = {
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
            state.batch_seconds,
            state.raw_rows,
            state.scope.clone(),
            state.group.clone(),
        )
    };
    let figures = async {
        let counts = queries::update_counts(&s.pool, &scope).await?;
        let services = queries::services(&s.pool).await?;
        let latency = queries::batch_latency(&s.pool, batch_seconds).await?;
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
    let report = crate::assemble(Sides {
        group: &group,
        spec,
        stream: &stream,
        batch: &batch,
        counts: &counts,
        services,
        batch_latency_ms,
    });
    let body = report.to_json();
    *cached = Some((std::time::Instant::now(), body.clone()));
    json_body(body)
}

fn json_body(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// 200 while the database answers the poller; 503 with the reason otherwise.
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let state = s.state.read().await;
    let recent = state
        .db
        .last_ok_us
        .is_some_and(|t| Utc::now().timestamp_micros() - t < 10_000_000);
    if state.db.up && recent {
        Json(json!({ "status": "ok", "waiting": state.waiting })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "reason": state.db.error.clone().unwrap_or_else(|| "no successful read of the tables in 10 s".into()),
            })),
        )
            .into_response()
    }
}

/// Server-Sent Events: `status`, `summary` at once, then `windows`, `summary`, `pipeline`,
/// `status` and `resync` (refetch everything: after a start, or when this stream fell behind)
/// as they happen. The page's EventSource reconnects by itself.
async fn events(
    State(s): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
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
    let live = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((e, rx)),
            // Fell behind: the page reloads its windows.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((
                Event {
                    name: "resync",
                    data: "{}".into(),
                },
                rx,
            )),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    let stream = futures::stream::iter(first)
        .chain(live)
        .map(|e| Ok(SseEvent::default().event(e.name).data(e.data)))
        .take_until(s.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}
