//! The dashboard's HTTP surface: the page and its files, `/events`, `/api/*`, `/healthz`.
//! Query parameters are parsed and checked first (`params`): bad input gets 400 with a
//! JSON error and never reaches SQL (and the API answers from memory anyway). `window` picks one
//! of the group's specs (`10s`, `1h/1m`, URL-encoded); the page's first is the default.

use std::{
    collections::{BTreeMap, HashMap},
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
use common::window::WindowSpec;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::{
    assets,
    conn::Client,
    params::{self, error},
    Event, Resolution, Shared,
};
use crate::{
    accuracy::{Key, StreamWindow},
    batch::Batch,
    queries,
    report::{Report, Sides},
    services,
    settle::Settlement,
};

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

/// What the page needs first: group, its specs, the spec asked for (`window`, default the
/// first), scope, that spec's pairs (with their latest window) and verdict, status.
async fn meta(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let state = s.state.read().await;
    let chosen = match params::resolution(&state, &q) {
        Ok(c) => Some(c),
        Err(_) if state.specs.is_empty() => None,
        Err(e) => return *e,
    };
    let specs: Vec<_> = state
        .specs
        .keys()
        .map(|spec| json!({ "label": spec.label(), "size_us": spec.size_us, "slide_us": spec.slide_us }))
        .collect();
    let pairs: Vec<_> = chosen
        .map(|(_, r)| {
            r.live
                .pairs()
                .into_iter()
                .map(|(pair, latest_us)| json!({ "pair": pair, "latest_us": latest_us }))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({
        "group": state.group,
        "specs": specs,
        "spec": chosen.map(|(spec, _)| spec),
        "window": chosen.map(|(spec, _)| spec.label()),
        "scope": {
            "pair": state.scope.pair.map(|p| p.to_string()),
            "since": state.scope.since,
            "until": state.scope.until,
        },
        "pairs": pairs,
        "db": state.db,
        "waiting": state.waiting,
        "accuracy": chosen.map(|(_, r)| &r.accuracy),
    }))
    .into_response()
}

/// `/api/windows?pair=BTC/USD[&window=1m][&since=RFC3339][&until=RFC3339][&limit=N]`: one pair's
/// windows of one spec (default: the group's first).
async fn windows(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = match params::windows_query(&q) {
        Ok(w) => w,
        Err(e) => return *e,
    };
    let state = s.state.read().await;
    let (spec, r) = match params::resolution(&state, &q) {
        Ok(c) => c,
        Err(e) => return *e,
    };
    let (base, quote) = (w.pair.base.to_string(), w.pair.quote.to_string());
    if !r.live.has_pair(&base, &quote) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pair: {} has no windows (unknown pair)", w.pair),
        );
    }
    let windows = r.live.windows(
        &base,
        &quote,
        w.since.unwrap_or(i64::MIN),
        w.until.unwrap_or(i64::MAX),
        w.limit,
    );
    Json(json!({ "pair": w.pair.to_string(), "spec": spec, "window": spec.label(), "windows": windows }))
        .into_response()
}

/// The pipeline panel now (by the database's clock, as last read plus the time since).
async fn pipeline(State(s): State<Arc<Shared>>) -> Response {
    let now_us = s.health().db_now_us();
    let mut state = s.state.write().await;
    let run = s.settings.source.run();
    let panel = now_us.map(|now| state.pipeline.panel(now, &run));
    let dead = state.pipeline.dead_letters.clone();
    Json(json!({ "now_us": now_us, "services": panel.unwrap_or_default(), "dead_letters": dead }))
        .into_response()
}

/// How long a built report is served again.
const REPORT_TTL: Duration = Duration::from_secs(5);

/// One spec's sides as the live state holds them, for the report.
struct Held {
    spec: WindowSpec,
    stream: BTreeMap<Key, StreamWindow>,
    batch: Batch,
    settlement: Settlement,
}

/// `/api/report[?window=1m]`: the JSON report of the live state, the one-shot report's shape: a
/// section per spec shown, or the one `window` names.
async fn report(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Cached by the spec's label (any spelling of it is the same report; none: every spec).
    let key = match q.get("window") {
        None => String::new(),
        Some(_) => match params::resolution(&*s.state.read().await, &q) {
            Ok((spec, _)) => spec.label(),
            Err(e) => return *e,
        },
    };
    let mut cached = s.reports.lock().await;
    if let Some((at, body)) = cached.get(&key) {
        if at.elapsed() < REPORT_TTL {
            return json_body(body.clone());
        }
    }
    let held = match held(&s, &q).await {
        Ok(h) => h,
        Err(e) => return *e,
    };
    match build_report(&s, held).await {
        Ok(body) => {
            cached.insert(key, (Instant::now(), body.clone()));
            json_body(body)
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e:#}"),
        ),
    }
}

/// Copies of the sides of the specs a report is asked for (the state is not held meanwhile).
async fn held(s: &Shared, q: &HashMap<String, String>) -> Result<Vec<Held>, Box<Response>> {
    let state = s.state.read().await;
    let chosen: Vec<(WindowSpec, &Resolution)> = if q.contains_key("window") {
        vec![params::resolution(&state, q)?]
    } else {
        state.specs.iter().map(|(k, r)| (*k, r)).collect()
    };
    if chosen.is_empty() {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            state.waiting.clone().unwrap_or_else(|| "starting".into()),
        )));
    }
    Ok(chosen
        .into_iter()
        .map(|(spec, r)| Held {
            spec,
            stream: r.live.stream.clone(),
            batch: Batch {
                windows: r.live.batch.clone(),
                seconds: r.batch_seconds,
                raw_rows: r.raw_rows,
            },
            settlement: r.live.settlement().clone(),
        })
        .collect())
}

/// The report of the held sides, with the figures read now in one snapshot.
async fn build_report(s: &Shared, held: Vec<Held>) -> anyhow::Result<String> {
    let source = &s.settings.source;
    let scope = source.scope();
    let mut snap = queries::Snapshot::begin(&s.pool).await?;
    let conn = snap.conn();
    let services = services::read(conn, &source.run()).await?;
    let mut figures = Vec::with_capacity(held.len());
    for h in &held {
        let counts = queries::update_counts(conn, &source.group, h.spec, &scope).await?;
        let latency = queries::batch_latency(conn, h.batch.seconds).await?;
        figures.push((counts, latency));
    }
    snap.end().await?;
    let sections = held
        .iter()
        .zip(figures)
        .map(|(h, (counts, batch_latency_ms))| {
            crate::report::assemble(Sides {
                group: &source.group,
                spec: h.spec,
                stream: &h.stream,
                batch: &h.batch,
                counts: &counts,
                settlement: &h.settlement,
                services: services.clone(),
                batch_latency_ms,
            })
        })
        .collect();
    Ok(Report::new(&source.group, sections).to_json())
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

/// Server-Sent Events: `status` and each spec's `summary` at once, then `windows`, `summary`,
/// `pipeline`, `status` and `resync` (refetch everything: after a spec was read whole) as they
/// happen. `windows` and `summary` say which spec they are of (`window`: its label). The page's
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
        let status = Event {
            name: "status",
            data: json!({ "db": state.db, "waiting": state.waiting }).to_string(),
        };
        let summaries = state.specs.iter().map(|(spec, r)| Event {
            name: "summary",
            data: json!({ "window": spec.label(), "accuracy": r.accuracy }).to_string(),
        });
        std::iter::once(status).chain(summaries).collect::<Vec<_>>()
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
