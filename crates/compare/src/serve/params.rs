//! The API's query parameters, parsed and checked: bad input gets 400 with a JSON error naming
//! the parameter, and never reaches SQL (the API answers from memory anyway).

use std::collections::HashMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use common::{
    model::{parse_time, Pair},
    window::WindowSpec,
};
use serde_json::json;

use super::{Resolution, State};

/// Windows shown at most per request (the latest ones).
pub const MAX_WINDOWS: usize = 20_000;

/// A JSON error.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The spec `window` names (default: the group's first): 400 when it names none of the group's,
/// 503 while there is none yet.
pub fn resolution<'s>(
    state: &'s State,
    q: &HashMap<String, String>,
) -> Result<(WindowSpec, &'s Resolution), Box<Response>> {
    state
        .resolution(q.get("window").map(String::as_str))
        .map_err(|why| {
            Box::new(match why {
                Some(why) => error(StatusCode::BAD_REQUEST, why),
                None => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    state.waiting.clone().unwrap_or_else(|| "starting".into()),
                ),
            })
        })
}

/// One pair's windows asked for: `pair` (required), `since`, `until` (RFC 3339) and `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowsQuery {
    pub pair: Pair,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: usize,
}

/// `pair=BTC/USD[&since=RFC3339][&until=RFC3339][&limit=N]`, checked.
pub fn windows_query(q: &HashMap<String, String>) -> Result<WindowsQuery, Box<Response>> {
    let bad = |message: String| Box::new(error(StatusCode::BAD_REQUEST, message));
    let Some(pair) = q.get("pair") else {
        return Err(bad("pair is required, e.g. pair=BTC/USD".into()));
    };
    let pair: Pair = pair.parse().map_err(|e| bad(format!("pair: {e}")))?;
    let time = |name: &str| -> Result<Option<i64>, Box<Response>> {
        match q.get(name) {
            None => Ok(None),
            Some(t) => parse_time(t)
                .map(|t| Some(t.timestamp_micros()))
                .ok_or_else(|| {
                    bad(format!(
                        "{name}: {t:?} is not a time (RFC 3339, e.g. 2024-08-05T12:00:00Z)"
                    ))
                }),
        }
    };
    let (since, until) = (time("since")?, time("until")?);
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_WINDOWS,
        Some(Ok(n)) if (1..=MAX_WINDOWS).contains(&n) => n,
        Some(_) => return Err(bad(format!("limit: a number from 1 to {MAX_WINDOWS}"))),
    };
    Ok(WindowsQuery {
        pair,
        since,
        until,
        limit,
    })
}
