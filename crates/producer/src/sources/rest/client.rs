//! CoinAPI REST: which requests to make for a pair list, and what a response means.
//!
//! Classification ([`classify`]) is pure so every awkward response shape is unit-testable; the
//! [`CoinApiClient`] only does HTTP. Facts relied on are in `../shared/COINAPI.md`: one-pair and
//! many-quotes endpoints, 7 fractional digits, error bodies with `message` or `error`, 401/403/429/550,
//! rate-limit headers that may be lower-case, absent, or negative.

use std::{collections::HashMap, time::Duration};

use crate::metrics as m;
use chrono::{DateTime, Utc};
use common::{model::parse_time, AssetId, Pair, RateUpdate, Secret};
use reqwest::header::{HeaderMap, ACCEPT};
use serde::Deserialize;

/// One HTTP request serving one or more pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /v1/exchangerate/{base}/{quote}`
    One(Pair),
    /// `GET /v1/exchangerate/{base}?filter_asset_id=Q1;Q2`: one credit for every quote of a base.
    ManyQuotes { base: AssetId, quotes: Vec<AssetId> },
}

impl Request {
    /// Requests for a pair list: pairs sharing a base go in one many-quotes request.
    pub fn plan(pairs: &[Pair]) -> Vec<Request> {
        let mut order: Vec<AssetId> = Vec::new();
        let mut by_base: HashMap<AssetId, Vec<AssetId>> = HashMap::new();
        for p in pairs {
            let quotes = by_base.entry(p.base).or_insert_with(|| {
                order.push(p.base);
                Vec::new()
            });
            if !quotes.contains(&p.quote) {
                quotes.push(p.quote);
            }
        }
        order
            .into_iter()
            .map(|base| {
                let quotes = by_base.remove(&base).unwrap_or_default();
                if quotes.len() == 1 {
                    Request::One(Pair::new(base, quotes[0]))
                } else {
                    Request::ManyQuotes { base, quotes }
                }
            })
            .collect()
    }

    /// Path and query, relative to the base URL.
    pub fn path(&self) -> String {
        match self {
            Request::One(p) => format!("/v1/exchangerate/{}/{}", p.base, p.quote),
            Request::ManyQuotes { base, quotes } => {
                let q: Vec<&str> = quotes.iter().map(AssetId::as_str).collect();
                format!("/v1/exchangerate/{base}?filter_asset_id={}", q.join(";"))
            }
        }
    }

    /// The pairs this request serves.
    pub fn pairs(&self) -> Vec<Pair> {
        match self {
            Request::One(p) => vec![*p],
            Request::ManyQuotes { base, quotes } => {
                quotes.iter().map(|q| Pair::new(*base, *q)).collect()
            }
        }
    }
}

/// Rate-limit figures from response headers, where present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit: Option<i64>,
    /// May be negative once the quota is exceeded.
    pub remaining: Option<i64>,
    pub used: Option<i64>,
    pub request_cost: Option<i64>,
    pub reset: Option<DateTime<Utc>>,
}

impl Quota {
    /// Reads `X-RateLimit-*` headers (any case; header names are case-insensitive).
    pub fn from_headers(h: &HeaderMap) -> Quota {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let int = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
        Quota {
            limit: int("x-ratelimit-limit"),
            remaining: int("x-ratelimit-remaining"),
            used: int("x-ratelimit-used"),
            request_cost: int("x-ratelimit-request-cost"),
            reset: text("x-ratelimit-reset").and_then(parse_time),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }
}

/// What a response means for the poller.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200 with rates. `missing` lists requested pairs the body did not contain; `bad_entries`
    /// describes entries of a many-quotes body that did not parse (they are counted as malformed).
    Rates {
        updates: Vec<RateUpdate>,
        missing: Vec<Pair>,
        bad_entries: Vec<String>,
    },
    /// 401: the key is invalid. Retrying cannot help.
    InvalidKey(String),
    /// 403 or 429: wait (until `reset` when given) and try again.
    RateLimited {
        status: u16,
        message: String,
        reset: Option<DateTime<Utc>>,
    },
    /// 550: no data for this pair right now; skip it this round.
    NoData(String),
    /// 400 or another 4xx: the request is wrong; skip it this round.
    Rejected { status: u16, message: String },
    /// 5xx, timeout, connection error: retry with backoff.
    Transient(String),
    /// 200 whose body is not what CoinAPI sends: logged with an excerpt and counted.
    Malformed { error: String, excerpt: String },
}

/// The first 200 characters of a body, for logs.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    error: Option<String>,
}

pub(crate) fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(m), ..
        })
        | Ok(ErrorBody { error: Some(m), .. }) => m,
        _ if body.is_empty() => "(empty body)".into(),
        _ => excerpt(body),
    }
}

#[derive(Deserialize)]
struct ManyQuotesBody {
    asset_id_base: String,
    rates: Vec<QuoteRate>,
}

#[derive(Deserialize)]
struct QuoteRate {
    time: String,
    asset_id_quote: String,
    rate: f64,
}

/// Parses a many-quotes body (`{"asset_id_base":..,"rates":[..]}`) into updates. Entries that do
/// not validate are returned as error texts.
pub fn parse_many_quotes(
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<(Vec<RateUpdate>, Vec<String>), String> {
    let parsed: ManyQuotesBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let base =
        AssetId::parse_field(&parsed.asset_id_base, "asset_id_base").map_err(|e| e.to_string())?;
    let mut updates = Vec::with_capacity(parsed.rates.len());
    let mut bad = Vec::new();
    for r in parsed.rates {
        let entry = (|| {
            let quote = AssetId::parse_field(&r.asset_id_quote, "asset_id_quote")?;
            let time = parse_time(&r.time).ok_or_else(|| common::ModelError::InvalidField {
                field: "time",
                value: r.time.chars().take(64).collect(),
                reason: "not an RFC 3339 UTC timestamp",
            })?;
            RateUpdate::new(time, Pair::new(base, quote), r.rate, Some(received_at))
        })();
        match entry {
            Ok(u) => updates.push(u),
            Err(e) => bad.push(e.to_string()),
        }
    }
    Ok((updates, bad))
}

/// What a non-200 response of any CoinAPI endpoint means.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 401: the key is invalid.
    InvalidKey(String),
    /// 403 or 429: wait and ask again.
    RateLimited { status: u16, message: String },
    /// 550: no data.
    NoData(String),
    /// Another 4xx: the request is wrong.
    Rejected { status: u16, message: String },
    /// 5xx: retry with backoff.
    Transient(String),
}

/// The failure a status means, `None` for 200.
pub fn failure(status: u16, body: &[u8]) -> Option<Failure> {
    let message = || error_message(body);
    Some(match status {
        200 => return None,
        401 => Failure::InvalidKey(message()),
        403 | 429 => Failure::RateLimited {
            status,
            message: message(),
        },
        550 => Failure::NoData(message()),
        500..=599 => Failure::Transient(format!("HTTP {status}: {}", message())),
        _ => Failure::Rejected {
            status,
            message: message(),
        },
    })
}

/// Interprets one HTTP response to `req`.
pub fn classify(req: &Request, status: u16, body: &[u8], received_at: DateTime<Utc>) -> Outcome {
    if let Some(f) = failure(status, body) {
        return match f {
            Failure::InvalidKey(m) => Outcome::InvalidKey(m),
            Failure::RateLimited { status, message } => Outcome::RateLimited {
                status,
                message,
                reset: None,
            },
            Failure::NoData(m) => Outcome::NoData(m),
            Failure::Rejected { status, message } => Outcome::Rejected { status, message },
            Failure::Transient(m) => Outcome::Transient(m),
        };
    }
    let malformed = |error: String| Outcome::Malformed {
        error,
        excerpt: excerpt(body),
    };
    let (updates, bad_entries) = match req {
        Request::One(_) => match RateUpdate::from_json(body) {
            Ok(mut u) => {
                u.received_at = Some(common::model::truncate_to_micros(received_at));
                (vec![u], Vec::new())
            }
            Err(e) => return malformed(e.to_string()),
        },
        Request::ManyQuotes { .. } => match parse_many_quotes(body, received_at) {
            Ok(parsed) => parsed,
            Err(e) => return malformed(e),
        },
    };
    let wanted = req.pairs();
    // Keep what was asked for; an answer for another pair (or base) is not ours to publish.
    let (updates, unexpected): (Vec<_>, Vec<_>) =
        updates.into_iter().partition(|u| wanted.contains(&u.pair));
    if updates.is_empty() && bad_entries.is_empty() {
        if let Some(u) = unexpected.first() {
            return malformed(format!(
                "response is for {}, not for the pair(s) requested",
                u.pair
            ));
        }
    }
    let missing = wanted
        .into_iter()
        .filter(|p| !updates.iter().any(|u| u.pair == *p))
        .collect();
    Outcome::Rates {
        updates,
        missing,
        bad_entries,
    }
}

/// HTTP client for CoinAPI. The key is sent as a header and never logged.
#[derive(Debug, Clone)]
pub struct CoinApiClient {
    http: reqwest::Client,
    base_url: String,
    key: Secret,
}

impl CoinApiClient {
    pub fn new(base_url: &str, key: Secret, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("coinstream/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(CoinApiClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Performs `req`; returns what it means and the quota headers seen.
    pub async fn fetch(&self, req: &Request) -> (Outcome, Quota) {
        let (response, quota) = self.get(&req.path()).await;
        let mut outcome = match response {
            Ok((status, body)) => classify(req, status, &body, Utc::now()),
            Err(e) => Outcome::Transient(e),
        };
        if let Outcome::RateLimited { reset, .. } = &mut outcome {
            *reset = quota.reset;
        }
        (outcome, quota)
    }

    /// GETs `path` (relative to the base URL) with the key: its status and body, or what went
    /// wrong on the way; and the quota headers seen.
    pub async fn get(&self, path: &str) -> (Result<(u16, Vec<u8>), String>, Quota) {
        let url = format!("{}{}", self.base_url, path);
        let response = self
            .http
            .get(&url)
            .header("X-CoinAPI-Key", self.key.expose())
            .header(ACCEPT, "application/json")
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                m::COINAPI_REQUESTS.with_label_values(&["error"]).inc();
                return (Err(describe(&e)), Quota::default());
            }
        };
        let status = response.status().as_u16();
        m::COINAPI_REQUESTS
            .with_label_values(&[status.to_string().as_str()])
            .inc();
        let quota = Quota::from_headers(response.headers());
        if let Some(remaining) = quota.remaining {
            m::COINAPI_QUOTA_REMAINING
                .with_label_values(m::NO_LABELS)
                .set(remaining);
        }
        match response.bytes().await {
            Ok(b) => (Ok((status, b.to_vec())), quota),
            Err(e) => (Err(describe(&e)), quota),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's message names the URL (no key in it) and the cause.
    if e.is_timeout() {
        format!("timed out: {e}")
    } else if e.is_connect() {
        format!("connection failed: {e}")
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn pairs(s: &[&str]) -> Vec<Pair> {
        s.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn plan_groups_pairs_by_base() {
        let plan = Request::plan(&pairs(&[
            "BTC/USD", "ETH/USD", "BTC/EUR", "SOL/USD", "BTC/USD",
        ]));
        assert_eq!(plan.len(), 3);
        assert_eq!(
            plan[0].path(),
            "/v1/exchangerate/BTC?filter_asset_id=USD;EUR"
        );
        assert_eq!(plan[1].path(), "/v1/exchangerate/ETH/USD");
        assert_eq!(plan[2].pairs(), pairs(&["SOL/USD"]));
    }

    #[test]
    fn one_pair_body_with_seven_digits_and_null_sides() {
        let req = Request::One("BTC/USD".parse().unwrap());
        let body = br#"{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":61234.56,"src_side_base":null,"src_side_quote":null}"#;
        let now = Utc::now();
        match classify(&req, 200, body, now) {
            Outcome::Rates {
                updates,
                missing,
                bad_entries,
            } => {
                assert_eq!(updates.len(), 1);
                assert!(missing.is_empty() && bad_entries.is_empty());
                assert_eq!(updates[0].time.timestamp_subsec_micros(), 374_133);
                assert_eq!(
                    updates[0].received_at,
                    Some(common::model::truncate_to_micros(now))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn many_quotes_body_reports_missing_and_bad_entries() {
        let req = Request::plan(&pairs(&["BTC/USD", "BTC/EUR", "BTC/GBP"])).remove(0);
        let body = br#"{"asset_id_base":"BTC","rates":[
            {"time":"2017-08-09T14:31:37.0520000Z","asset_id_quote":"USD","rate":3258.887541779804},
            {"time":"garbage","asset_id_quote":"EUR","rate":2800.1},
            {"time":"2017-08-09T14:31:37.0520000Z","asset_id_quote":"JPY","rate":1.0}]}"#;
        match classify(&req, 200, body, Utc::now()) {
            Outcome::Rates {
                updates,
                missing,
                bad_entries,
            } => {
                assert_eq!(
                    updates
                        .iter()
                        .map(|u| u.pair.to_string())
                        .collect::<Vec<_>>(),
                    ["BTC/USD"]
                );
                assert_eq!(missing, pairs(&["BTC/EUR", "BTC/GBP"]));
                assert_eq!(bad_entries.len(), 1);
                assert!(bad_entries[0].contains("time"), "{bad_entries:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_statuses() {
        let req = Request::One("BTC/USD".parse().unwrap());
        let now = Utc::now();
        assert_eq!(
            classify(&req, 401, br#"{"error":"Invalid API key"}"#, now),
            Outcome::InvalidKey("Invalid API key".into())
        );
        assert!(
            matches!(classify(&req, 429, br#"{"message":"Too many requests"}"#, now),
            Outcome::RateLimited { status: 429, ref message, .. } if message == "Too many requests")
        );
        assert!(matches!(
            classify(&req, 403, b"", now),
            Outcome::RateLimited { status: 403, .. }
        ));
        assert_eq!(
            classify(&req, 550, br#"{"error":"no data"}"#, now),
            Outcome::NoData("no data".into())
        );
        assert!(
            matches!(classify(&req, 503, b"<html>down</html>", now), Outcome::Transient(m) if m.contains("503"))
        );
        assert!(matches!(
            classify(&req, 400, br#"{"message":"bad"}"#, now),
            Outcome::Rejected { status: 400, .. }
        ));
    }

    #[test]
    fn garbage_200_is_malformed_with_excerpt() {
        let req = Request::One("BTC/USD".parse().unwrap());
        match classify(&req, 200, b"<html>not json</html>", Utc::now()) {
            Outcome::Malformed { excerpt, .. } => assert_eq!(excerpt, "<html>not json</html>"),
            other => panic!("{other:?}"),
        }
        let wrong_pair = br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"ETH","asset_id_quote":"USD","rate":1}"#;
        assert!(matches!(
            classify(&req, 200, wrong_pair, Utc::now()),
            Outcome::Malformed { .. }
        ));
    }

    #[test]
    fn quota_headers_lower_case_and_negative() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("-3"));
        h.insert("x-ratelimit-limit", HeaderValue::from_static("100"));
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_static("2018-01-22T15:25:15.1234567Z"),
        );
        let q = Quota::from_headers(&h);
        assert_eq!(q.remaining, Some(-3));
        assert_eq!(q.limit, Some(100));
        assert_eq!(
            q.reset.map(common::model::format_time).as_deref(),
            Some("2018-01-22T15:25:15.123456Z")
        );
        assert!(Quota::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).chars().count(), 201);
    }
}
