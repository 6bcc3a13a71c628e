//! CoinAPI's exchange-rate WebSocket protocol, without I/O: the hello, and what a frame means.

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Pair, RateUpdate};
use serde::Deserialize;

/// The first message on a connection: subscribe to `exrate` for `pairs`, heartbeats on.
pub fn hello(key: &str, pairs: &[Pair]) -> String {
    let ids: Vec<String> = pairs.iter().map(ToString::to_string).collect();
    serde_json::json!({
        "type": "hello",
        "apikey": key,
        "heartbeat": true,
        "subscribe_data_type": ["exrate"],
        "subscribe_filter_asset_id": ids,
    })
    .to_string()
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A rate, as the REST source publishes it (`received_at` set).
    Exrate(RateUpdate),
    Heartbeat,
    /// The server will close this connection within this time: open another first.
    Reconnect {
        within: Duration,
    },
    Error(String),
    /// A message type this source does not use.
    Other(String),
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    asset_id_base: Option<String>,
    asset_id_quote: Option<String>,
    time: Option<String>,
    rate: Option<serde_json::Number>,
    within_seconds: Option<f64>,
    message: Option<String>,
}

/// What a text frame says; `Err` names what is wrong with a malformed one.
pub fn parse(text: &str, received_at: DateTime<Utc>) -> Result<Frame, String> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match wire.kind.as_str() {
        "exrate" => {
            // Validated by the model's own parser: the same checks as every other source.
            let json = serde_json::json!({
                "time": wire.time.ok_or("exrate without time")?,
                "asset_id_base": wire.asset_id_base.ok_or("exrate without asset_id_base")?,
                "asset_id_quote": wire.asset_id_quote.ok_or("exrate without asset_id_quote")?,
                "rate": wire.rate.ok_or("exrate without rate")?,
            });
            let mut update =
                RateUpdate::from_json(json.to_string().as_bytes()).map_err(|e| e.to_string())?;
            update.received_at = Some(received_at);
            Ok(Frame::Exrate(update))
        }
        // CoinAPI spells it "hearbeat"; the correct spelling is accepted too.
        "hearbeat" | "heartbeat" => Ok(Frame::Heartbeat),
        "reconnect" => Ok(Frame::Reconnect {
            within: Duration::from_secs_f64(wire.within_seconds.unwrap_or(0.0).clamp(0.0, 3600.0)),
        }),
        "error" => Ok(Frame::Error(
            wire.message.unwrap_or_else(|| "(no message)".into()),
        )),
        other => Ok(Frame::Other(other.to_owned())),
    }
}

/// Whether an error message says the key is wrong (no reconnect can fix that).
pub fn is_key_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "apikey",
        "api key",
        "api-key",
        "unauthori",
        "forbidden",
        "invalid key",
    ]
    .iter()
    .any(|w| m.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_722_859_200_000_000).unwrap()
    }

    #[test]
    fn hello_subscribes_to_exrate_for_the_pairs() {
        let pairs: Vec<Pair> = vec!["BTC/USD".parse().unwrap(), "ETH/EUR".parse().unwrap()];
        let v: serde_json::Value = serde_json::from_str(&hello("k", &pairs)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "hello", "apikey": "k", "heartbeat": true,
                "subscribe_data_type": ["exrate"], "subscribe_filter_asset_id": ["BTC/USD", "ETH/EUR"]})
        );
    }

    #[test]
    fn frames() {
        let f = parse(
            r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","rate_type":"BASE_ALL_CROSSES_TO_REF","time":"2024-08-05T12:00:00.1234567Z","rate":61234.5}"#,
            now(),
        )
        .unwrap();
        let Frame::Exrate(u) = f else { panic!("{f:?}") };
        assert_eq!(u.pair.to_string(), "BTC/USD");
        assert_eq!(u.rate, 61234.5);
        assert_eq!(u.time.timestamp_micros(), 1_722_859_200_123_456);
        assert_eq!(u.received_at, Some(now()));
        assert_eq!(parse(r#"{"type":"hearbeat"}"#, now()), Ok(Frame::Heartbeat));
        assert_eq!(
            parse(
                r#"{"type":"reconnect","within_seconds":10,"before_time":"2024-08-05T12:00:10.0000000Z"}"#,
                now()
            ),
            Ok(Frame::Reconnect {
                within: Duration::from_secs(10)
            })
        );
        assert_eq!(
            parse(r#"{"type":"error","message":"Invalid API key"}"#, now()),
            Ok(Frame::Error("Invalid API key".into()))
        );
        assert_eq!(
            parse(r#"{"type":"trade"}"#, now()),
            Ok(Frame::Other("trade".into()))
        );
    }

    #[test]
    fn malformed_frames_say_what_is_wrong() {
        for (text, says) in [
            ("not json", "expected"),
            (r#"{"no":"type"}"#, "type"),
            (
                r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","time":"2024-08-05T12:00:00Z"}"#,
                "rate",
            ),
            (
                r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","time":"yesterday","rate":1}"#,
                "time",
            ),
            (
                r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","time":"2024-08-05T12:00:00Z","rate":-1}"#,
                "rate",
            ),
        ] {
            let e = parse(text, now()).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn key_errors() {
        assert!(is_key_error("Invalid API key"));
        assert!(is_key_error("Unauthorized"));
        assert!(!is_key_error("Too many connections"));
    }
}
