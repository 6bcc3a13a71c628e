//! The rate model: what travels on topic `raw_coin_data`.
//!
//! The wire format is CoinAPI's exchange-rate body (`../shared/COINAPI.md`), so the original project's
//! consumers and ours read the same messages:
//! `{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":61234.56}`
//! plus an optional `received_at` (when the producer got it). Unknown fields (`src_side_base`, ...) are
//! ignored. Times are UTC and kept to the microsecond, the precision of MySQL's `DATETIME(6)`.
//!
//! Parsing is "parse, don't validate": a [`RateUpdate`] that exists is valid. Bad input gives a
//! [`ModelError`] that names the field and, where there is one, the offending value.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod fast;
mod pair;
mod time;

pub use pair::{AssetId, Pair};
use time::write_time;
pub use time::{format_time, parse_time, push_sql_datetime, truncate_to_micros};

/// Longest asset id we accept; also the width of the `asset_id_*` columns.
pub const MAX_ASSET_ID_LEN: usize = 16;

/// The accepted range of a rate: positive, finite, no smaller than the smallest normal double
/// (MySQL's `DOUBLE` stores no smaller magnitude) and no larger than 1e18, so that the sum of any
/// number of rates in a window stays finite (1e18 x 1e290 updates would be needed to overflow).
pub const MIN_RATE: f64 = f64::MIN_POSITIVE;
/// See [`MIN_RATE`].
pub const MAX_RATE: f64 = 1e18;
/// Earliest accepted `time` and `received_at`: 1970-01-01T00:00:00Z (µs since the epoch).
pub const MIN_TIME_US: i64 = 0;
/// Latest accepted `received_at`: 9999-12-31T23:59:59.999999Z, the end of MySQL's `DATETIME`.
pub const MAX_TIME_US: i64 = 253_402_300_799_999_999;
/// How far an update's event time may be ahead of the moment it was published (the Kafka
/// message's timestamp): more is a clock gone wrong, and one such update would move the
/// aggregator's watermark ahead of every update that follows it (all of them late).
pub const MAX_TIME_AHEAD_US: i64 = 5 * 60 * 1_000_000;

/// Why a message or value is not a valid rate update.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Not JSON, or a field of the wrong JSON type. `field` is the JSON path when known.
    #[error("malformed JSON{}: {message}", field.as_deref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
    Json {
        field: Option<String>,
        message: String,
    },
    /// A required field is absent (or null).
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    /// A field is present but its value is not acceptable.
    #[error("invalid `{field}` value {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl ModelError {
    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ModelError::Json { field, .. } => field.as_deref(),
            ModelError::MissingField { field } | ModelError::InvalidField { field, .. } => {
                Some(field)
            }
        }
    }

    fn invalid(field: &'static str, value: &str, reason: &'static str) -> Self {
        // Keep error messages (and dead-letter rows) short even for absurd input.
        let value: String = value.chars().take(64).collect();
        ModelError::InvalidField {
            field,
            value,
            reason,
        }
    }
}

/// One exchange-rate observation, as published on `raw_coin_data`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateUpdate {
    /// Event time: when CoinAPI computed the rate (UTC, microseconds).
    pub time: DateTime<Utc>,
    pub pair: Pair,
    /// Units of quote per one base; positive and finite.
    pub rate: f64,
    /// When the producer received it (UTC, microseconds), if recorded.
    pub received_at: Option<DateTime<Utc>>,
}

/// A [`RateUpdate`] with its times as microseconds since the epoch (UTC): the same message,
/// parsed without building calendar times, for the aggregator's hot path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEvent {
    pub pair: Pair,
    /// Event time, microseconds since the epoch.
    pub time_us: i64,
    /// Positive and finite.
    pub rate: f64,
    /// When the producer received it, microseconds since the epoch, if recorded.
    pub received_us: Option<i64>,
}

impl RateEvent {
    /// Parses one message value; accepts and rejects exactly what [`RateUpdate::from_json`] does.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        match fast::parse(bytes) {
            Some(e) => Ok(e),
            None => RateUpdate::from_json_slow(bytes).map(|u| RateEvent {
                pair: u.pair,
                time_us: u.time.timestamp_micros(),
                rate: u.rate,
                received_us: u.received_at.map(|r| r.timestamp_micros()),
            }),
        }
    }

    /// Checks what parsing alone cannot: the event time is at most [`MAX_TIME_AHEAD_US`] after
    /// `published_ms`, the message's timestamp (milliseconds since the epoch; `None` when the
    /// broker has none, then the wall clock stands in). The same check as [`RateUpdate::check_published`].
    pub fn check_published(&self, published_ms: Option<i64>) -> Result<(), ModelError> {
        check_ahead(self.time_us, published_ms)
    }

    fn to_update(self) -> Result<RateUpdate, ModelError> {
        let time = |us: i64, field| {
            DateTime::from_timestamp_micros(us)
                .ok_or_else(|| ModelError::invalid(field, &us.to_string(), "time out of range"))
        };
        Ok(RateUpdate {
            time: time(self.time_us, "time")?,
            pair: self.pair,
            rate: self.rate,
            received_at: self
                .received_us
                .map(|r| time(r, "received_at"))
                .transpose()?,
        })
    }
}

/// The JSON as it arrives; every field optional so a missing one gets our own error.
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    asset_id_base: Option<Cow<'a, str>>,
    #[serde(borrow)]
    asset_id_quote: Option<Cow<'a, str>>,
    rate: Option<f64>,
    #[serde(borrow, default)]
    received_at: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    time: String,
    asset_id_base: &'a str,
    asset_id_quote: &'a str,
    rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<String>,
}

impl RateUpdate {
    /// Builds an update, checking the rate and truncating times to microseconds.
    pub fn new(
        time: DateTime<Utc>,
        pair: Pair,
        rate: f64,
        received_at: Option<DateTime<Utc>>,
    ) -> Result<Self, ModelError> {
        check_rate(rate)?;
        Ok(RateUpdate {
            time: truncate_to_micros(time),
            pair,
            rate,
            received_at: received_at.map(truncate_to_micros),
        })
    }

    /// Parses one message value from `raw_coin_data`. The shape our producer writes takes a
    /// hand-written fast path; anything else goes through serde.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        match fast::parse(bytes) {
            Some(e) => e.to_update(),
            None => Self::from_json_slow(bytes),
        }
    }

    /// The general parser: any field order, whitespace, escapes, offsets; errors name the field.
    fn from_json_slow(bytes: &[u8]) -> Result<Self, ModelError> {
        match serde_json::from_slice::<WireIn<'_>>(bytes) {
            Ok(wire) => wire.validate(),
            Err(_) => Err(json_error_with_path::<WireIn<'_>>(bytes)),
        }
    }

    /// See [`RateEvent::check_published`].
    pub fn check_published(&self, published_ms: Option<i64>) -> Result<(), ModelError> {
        check_ahead(self.time.timestamp_micros(), published_ms)
    }

    /// The message value: CoinAPI-compatible JSON plus `received_at` when known.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(160);
        self.write_json(&mut out);
        String::from_utf8(out).expect("rate update JSON is ASCII")
    }

    /// Appends the message value to `out` without intermediate allocations (the producer's hot
    /// path). Asset ids are validated to need no escaping; the output equals [`Self::to_json`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_time(out, self.time);
        out.extend_from_slice(b"\",\"asset_id_base\":\"");
        out.extend_from_slice(self.pair.base.as_str().as_bytes());
        out.extend_from_slice(b"\",\"asset_id_quote\":\"");
        out.extend_from_slice(self.pair.quote.as_str().as_bytes());
        out.extend_from_slice(b"\",\"rate\":");
        serde_json::to_writer(&mut *out, &self.rate).expect("writing to a Vec cannot fail");
        if let Some(r) = self.received_at {
            out.extend_from_slice(b",\"received_at\":\"");
            write_time(out, r);
            out.push(b'"');
        }
        out.push(b'}');
    }

    /// Appends the message key (`BASE/QUOTE`) to `out`.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.pair.base.as_str().as_bytes());
        out.push(b'/');
        out.extend_from_slice(self.pair.quote.as_str().as_bytes());
    }

    fn wire_out(&self) -> WireOut<'_> {
        WireOut {
            time: format_time(self.time),
            asset_id_base: self.pair.base.as_str(),
            asset_id_quote: self.pair.quote.as_str(),
            rate: self.rate,
            received_at: self.received_at.map(format_time),
        }
    }

    /// The Kafka message key: `BASE/QUOTE`, so one pair stays on one partition, in order.
    pub fn key(&self) -> String {
        self.pair.to_string()
    }
}

impl Serialize for RateUpdate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire_out().serialize(s)
    }
}

impl<'de> Deserialize<'de> for RateUpdate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WireIn::deserialize(d)?
            .validate()
            .map_err(serde::de::Error::custom)
    }
}

impl WireIn<'_> {
    fn validate(self) -> Result<RateUpdate, ModelError> {
        let time = self
            .time
            .ok_or(ModelError::MissingField { field: "time" })?;
        let base = self.asset_id_base.ok_or(ModelError::MissingField {
            field: "asset_id_base",
        })?;
        let quote = self.asset_id_quote.ok_or(ModelError::MissingField {
            field: "asset_id_quote",
        })?;
        let rate = self
            .rate
            .ok_or(ModelError::MissingField { field: "rate" })?;
        let time = parse_time(&time)
            .ok_or_else(|| ModelError::invalid("time", &time, "not an RFC 3339 UTC timestamp"))?;
        check_time("time", time)?;
        let received_at = match self.received_at {
            None => None,
            Some(s) => Some(parse_time(&s).ok_or_else(|| {
                ModelError::invalid("received_at", &s, "not an RFC 3339 UTC timestamp")
            })?),
        };
        if let Some(r) = received_at {
            check_time("received_at", r)?;
        }
        let pair = Pair {
            base: AssetId::parse_field(&base, "asset_id_base")?,
            quote: AssetId::parse_field(&quote, "asset_id_quote")?,
        };
        check_rate(rate)?;
        Ok(RateUpdate {
            time,
            pair,
            rate,
            received_at,
        })
    }
}

/// Re-parses failed input with path tracking, so the error names the field. Only bad input pays.
pub(crate) fn json_error_with_path<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> ModelError {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => ModelError::Json {
            field: None,
            message: "trailing characters after the JSON value".into(),
        },
        Err(e) => {
            let path = e.path().to_string();
            ModelError::Json {
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            }
        }
    }
}

/// Whether a parsed rate is in the accepted range ([`MIN_RATE`] to [`MAX_RATE`]; NaN is not).
pub fn rate_in_range(rate: f64) -> bool {
    (MIN_RATE..=MAX_RATE).contains(&rate)
}

/// Whether a time (µs since the epoch) is in the accepted range of `time` and `received_at`.
pub fn time_in_range(us: i64) -> bool {
    (MIN_TIME_US..=MAX_TIME_US).contains(&us)
}

fn check_time(field: &'static str, t: DateTime<Utc>) -> Result<(), ModelError> {
    if time_in_range(t.timestamp_micros()) {
        Ok(())
    } else {
        Err(ModelError::invalid(
            field,
            &format_time(t),
            "outside the accepted range 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z",
        ))
    }
}

fn check_ahead(time_us: i64, published_ms: Option<i64>) -> Result<(), ModelError> {
    let published_us = published_ms
        .and_then(|ms| ms.checked_mul(1000))
        .unwrap_or_else(|| Utc::now().timestamp_micros());
    if time_us <= published_us.saturating_add(MAX_TIME_AHEAD_US) {
        return Ok(());
    }
    let shown =
        DateTime::from_timestamp_micros(time_us).map_or_else(|| time_us.to_string(), format_time);
    Err(ModelError::invalid(
        "time",
        &shown,
        "more than 5 minutes after the message was published (its Kafka timestamp): a clock gone wrong",
    ))
}

fn check_rate(rate: f64) -> Result<(), ModelError> {
    if rate_in_range(rate) {
        Ok(())
    } else {
        Err(ModelError::invalid(
            "rate",
            &rate.to_string(),
            "must be a finite number from 2.2250738585072014e-308 to 1e18",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono::Timelike;

    const COINAPI: &str = r#"{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":61234.56}"#;

    #[test]
    fn parses_coinapi_body_keeping_microseconds() {
        let u = RateUpdate::from_json(COINAPI.as_bytes()).unwrap();
        assert_eq!(u.pair.to_string(), "BTC/USD");
        assert_eq!(u.rate, 61234.56);
        assert_eq!(
            u.time,
            Utc.with_ymd_and_hms(2024, 8, 5, 13, 35, 34).unwrap()
                + chrono::Duration::microseconds(374_133)
        );
        assert_eq!(u.received_at, None);
    }

    #[test]
    fn ignores_unknown_fields_and_null_arrays() {
        let body = r#"{"time":"2024-08-05T13:35:34.0000000Z","asset_id_base":"ETH","asset_id_quote":"EUR","rate":2.5,"src_side_base":null,"src_side_quote":[{"asset":"X","rate":1}]}"#;
        let u = RateUpdate::from_json(body.as_bytes()).unwrap();
        assert_eq!(u.pair.to_string(), "ETH/EUR");
    }

    #[test]
    fn round_trips_with_received_at() {
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        let u = RateUpdate::new(t, "sol/usd".parse().unwrap(), 150.25, Some(t)).unwrap();
        assert_eq!(u.time.nanosecond(), 123_456_000);
        let json = u.to_json();
        assert!(
            json.contains(r#""time":"2024-01-02T03:04:05.123456Z""#),
            "{json}"
        );
        assert_eq!(RateUpdate::from_json(json.as_bytes()).unwrap(), u);
        assert_eq!(u.key(), "SOL/USD");
    }

    #[test]
    fn fast_writer_matches_serde() {
        let t = Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::microseconds(7);
        for received in [None, Some(t)] {
            let u = RateUpdate::new(t, "BTC/USD".parse().unwrap(), 0.000123, received).unwrap();
            assert_eq!(u.to_json(), serde_json::to_string(&u).unwrap());
            assert_eq!(format_time(t), "1999-12-31T23:59:59.000007Z");
        }
        let mut sql = String::new();
        push_sql_datetime(&mut sql, t);
        assert_eq!(sql, "'1999-12-31 23:59:59.000007'");
        let mut key = Vec::new();
        RateUpdate::new(t, "eth/eur".parse().unwrap(), 1.0, None)
            .unwrap()
            .write_key(&mut key);
        assert_eq!(key, b"ETH/EUR");
    }

    #[test]
    fn converts_offsets_to_utc() {
        let t = parse_time("2024-08-05T15:35:34.5+02:00").unwrap();
        assert_eq!(format_time(t), "2024-08-05T13:35:34.500000Z");
        let naive = parse_time("2024-08-05T13:35:34").unwrap();
        assert_eq!(format_time(naive), "2024-08-05T13:35:34.000000Z");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"time":"yesterday","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
                "time",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD"}"#,
                "rate",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":"abc"}"#,
                "rate",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":-3}"#,
                "rate",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"","asset_id_quote":"USD","rate":1}"#,
                "asset_id_base",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"US D","rate":1}"#,
                "asset_id_quote",
            ),
            (
                r#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1,"received_at":"soon"}"#,
                "received_at",
            ),
        ];
        for (body, field) in cases {
            let err = RateUpdate::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(err.field(), Some(*field), "{body}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn invalid_value_is_quoted_in_the_error() {
        let body = r#"{"time":"yesterday","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#;
        let err = RateUpdate::from_json(body.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, ModelError::InvalidField { value, .. } if value == "yesterday"),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_is_a_json_error() {
        for body in ["", "not json", "[1,2]", "{\"time\":", "null"] {
            let err = RateUpdate::from_json(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ModelError::Json { .. }), "{body:?}: {err:?}");
        }
    }

    #[test]
    fn pair_parsing() {
        let p: Pair = " btc/usd ".parse().unwrap();
        assert_eq!(p.to_string(), "BTC/USD");
        for bad in [
            "BTC",
            "BTC/",
            "/USD",
            "BTC/BTC",
            "BTC/US$",
            "AVERYVERYLONGASSETNAME/USD",
        ] {
            let err = bad.parse::<Pair>().unwrap_err();
            assert_eq!(err.field(), Some("pair"), "{bad}");
        }
    }
}
