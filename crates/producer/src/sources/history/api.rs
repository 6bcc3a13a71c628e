//! CoinAPI exchange-rate history, pure: the period ids, the request for a range, and what a
//! response means. `GET /v1/exchangerate/{base}/{quote}/history?period_id=..&time_start=..&
//! time_end=..&limit=..` returns, per period, `time_period_start`, `time_period_end`,
//! `time_open`, `time_close`, `rate_open`, `rate_high`, `rate_low`, `rate_close` (7-digit
//! times); every 100 items count as one request against the quota.
//!
//! One update per period: at its `time_close` with its `rate_close` (the last rate of the period,
//! as a live poll at that moment would have returned), same JSON and key as a live update.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use common::{
    model::{format_time, parse_time},
    Pair, RateUpdate,
};
use serde::Deserialize;

use crate::sources::rest::client::{excerpt, failure, Failure};

/// A history period (`period_id`): `1SEC` ... `1DAY` (SEC, MIN, HRS, DAY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub id: String,
    pub length: Duration,
}

impl FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let id = s.trim().to_ascii_uppercase();
        let digits = id.chars().take_while(char::is_ascii_digit).count();
        let (n, unit) = id.split_at(digits);
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: a period id such as 1SEC, 5MIN, 1HRS, 1DAY"))?;
        let unit_secs = match unit {
            "SEC" => 1,
            "MIN" => 60,
            "HRS" => 3600,
            "DAY" => 86_400,
            _ => {
                return Err(format!(
                "{s:?}: unit must be SEC, MIN, HRS or DAY (a period id such as 1SEC, 5MIN, 1HRS)"
            ))
            }
        };
        Ok(Period {
            length: Duration::from_secs(n * unit_secs),
            id,
        })
    }
}

/// Items per credit: every 100 items of a response count as one request.
pub const ITEMS_PER_CREDIT: u64 = 100;

/// The credits a response of `items` items costs.
pub fn credits(items: usize) -> u64 {
    (items as u64).div_ceil(ITEMS_PER_CREDIT).max(1)
}

/// The request for the periods of `pair` in `[start, end)`, at most `limit` of them.
pub fn path(
    pair: Pair,
    period: &Period,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    limit: u32,
) -> String {
    format!(
        "/v1/exchangerate/{}/{}/history?period_id={}&time_start={}&time_end={}&limit={limit}",
        pair.base,
        pair.quote,
        period.id,
        format_time(start),
        format_time(end)
    )
}

#[derive(Deserialize)]
struct Item {
    time_period_start: String,
    time_period_end: String,
    #[serde(default)]
    time_close: Option<String>,
    #[serde(default)]
    rate_close: Option<f64>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// One update per period, in time order.
    pub updates: Vec<RateUpdate>,
    /// Items in the response (what the quota counts).
    pub items: usize,
    /// The end of the last period returned: where the next page starts.
    pub last_end: Option<DateTime<Utc>>,
    /// Items that did not make an update (no close, a bad time or rate), described.
    pub bad: Vec<String>,
}

/// What a history response means: a page, or what a non-200 status means.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Page(Page),
    Failed(Failure),
    /// A 200 whose body is not a history array.
    Malformed {
        error: String,
        excerpt: String,
    },
}

/// Interprets one response to the history request of `pair`.
pub fn classify(pair: Pair, status: u16, body: &[u8], received_at: DateTime<Utc>) -> Outcome {
    if let Some(f) = failure(status, body) {
        return Outcome::Failed(f);
    }
    match parse_page(pair, body, received_at) {
        Ok(page) => Outcome::Page(page),
        Err(error) => Outcome::Malformed {
            error,
            excerpt: excerpt(body),
        },
    }
}

/// Parses a history body: a JSON array of periods.
pub fn parse_page(pair: Pair, body: &[u8], received_at: DateTime<Utc>) -> Result<Page, String> {
    let items: Vec<Item> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut page = Page {
        updates: Vec::with_capacity(items.len()),
        items: items.len(),
        last_end: None,
        bad: Vec::new(),
    };
    let received_at = common::model::truncate_to_micros(received_at);
    for item in &items {
        let end = parse_time(&item.time_period_end)
            .ok_or_else(|| format!("time_period_end {:?} is not a time", item.time_period_end))?;
        if parse_time(&item.time_period_start).is_none_or(|start| start >= end) {
            return Err(format!(
                "period {:?} to {:?} is not a range",
                item.time_period_start, item.time_period_end
            ));
        }
        page.last_end = Some(page.last_end.map_or(end, |e: DateTime<Utc>| e.max(end)));
        let update = match (
            item.time_close.as_deref().and_then(parse_time),
            item.rate_close,
        ) {
            (Some(time), Some(rate)) => {
                RateUpdate::new(time, pair, rate, Some(received_at)).map_err(|e| e.to_string())
            }
            _ => Err("no time_close or rate_close".to_owned()),
        };
        match update {
            Ok(u) => page.updates.push(u),
            Err(e) => page
                .bad
                .push(format!("period ending {}: {e}", item.time_period_end)),
        }
    }
    page.updates.sort_by_key(|u| u.time);
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        "BTC/USD".parse().unwrap()
    }

    #[test]
    fn periods_parse_with_their_length() {
        let p: Period = "1SEC".parse().unwrap();
        assert_eq!((p.id.as_str(), p.length), ("1SEC", Duration::from_secs(1)));
        assert_eq!(
            "5min".parse::<Period>().unwrap().length,
            Duration::from_secs(300)
        );
        assert_eq!(
            "1HRS".parse::<Period>().unwrap().length,
            Duration::from_secs(3600)
        );
        assert_eq!("1DAY".parse::<Period>().unwrap().id, "1DAY");
        for bad in ["", "SEC", "0SEC", "1WEEK", "1MTH"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn credits_count_each_hundred_items() {
        assert_eq!(credits(0), 1);
        assert_eq!(credits(100), 1);
        assert_eq!(credits(101), 2);
        assert_eq!(credits(1000), 10);
    }

    #[test]
    fn the_path_names_the_range() {
        let t = |s| parse_time(s).unwrap();
        let p = path(
            pair(),
            &"1SEC".parse().unwrap(),
            t("2024-08-05T13:00:00Z"),
            t("2024-08-05T13:01:00Z"),
            100,
        );
        assert_eq!(
            p,
            "/v1/exchangerate/BTC/USD/history?period_id=1SEC&time_start=2024-08-05T13:00:00.000000Z&time_end=2024-08-05T13:01:00.000000Z&limit=100"
        );
    }

    #[test]
    fn a_page_gives_one_update_per_period_at_its_close() {
        let body = br#"[
          {"time_period_start":"2024-08-05T13:00:01.0000000Z","time_period_end":"2024-08-05T13:00:02.0000000Z",
           "time_open":"2024-08-05T13:00:01.1000000Z","time_close":"2024-08-05T13:00:01.9000001Z",
           "rate_open":1.0,"rate_high":3.0,"rate_low":0.5,"rate_close":2.5},
          {"time_period_start":"2024-08-05T13:00:00.0000000Z","time_period_end":"2024-08-05T13:00:01.0000000Z",
           "time_open":"2024-08-05T13:00:00.2000000Z","time_close":"2024-08-05T13:00:00.800000Z",
           "rate_open":1.0,"rate_high":1.0,"rate_low":1.0,"rate_close":1.5},
          {"time_period_start":"2024-08-05T13:00:02.0000000Z","time_period_end":"2024-08-05T13:00:03.0000000Z",
           "time_close":null,"rate_close":null}
        ]"#;
        let now = Utc::now();
        let page = parse_page(pair(), body, now).unwrap();
        assert_eq!(page.items, 3);
        let got: Vec<(String, f64)> = page
            .updates
            .iter()
            .map(|u| (format_time(u.time), u.rate))
            .collect();
        assert_eq!(
            got,
            vec![
                ("2024-08-05T13:00:00.800000Z".to_owned(), 1.5),
                ("2024-08-05T13:00:01.900000Z".to_owned(), 2.5)
            ]
        );
        assert_eq!(page.bad.len(), 1, "{:?}", page.bad);
        assert_eq!(page.last_end, parse_time("2024-08-05T13:00:03Z"));
        assert!(page.updates.iter().all(|u| u.pair == pair()));
    }

    #[test]
    fn errors_are_classified() {
        let now = Utc::now();
        let failed = |status, body: &[u8]| match classify(pair(), status, body, now) {
            Outcome::Failed(f) => f,
            other => panic!("{status}: {other:?}"),
        };
        assert_eq!(
            failed(401, br#"{"message":"bad key"}"#),
            Failure::InvalidKey("bad key".into())
        );
        assert!(matches!(
            failed(429, br#"{"error":"slow down"}"#),
            Failure::RateLimited { status: 429, .. }
        ));
        assert!(matches!(failed(550, b""), Failure::NoData(_)));
        assert!(matches!(failed(503, b""), Failure::Transient(_)));
        assert!(matches!(
            failed(400, br#"{"error":"bad period"}"#),
            Failure::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            classify(pair(), 200, b"{}", now),
            Outcome::Malformed { .. }
        ));
        assert!(matches!(
            classify(pair(), 200, b"[]", now),
            Outcome::Page(Page { items: 0, .. })
        ));
    }
}
