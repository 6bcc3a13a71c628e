//! What the charts show: per pair, every window with both sides and where it stands (pure).
//! The same shape feeds the live page (`/api/windows`, `/events`) and the HTML report.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    accuracy::{classify_settled, latest_final, Agg, Key, Status, StreamWindow},
    settle::Settlement,
};

/// One window of one pair, both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowView {
    pub pair: String,
    /// Window start and end, µs since the epoch (UTC).
    pub start_us: i64,
    pub end_us: i64,
    pub stream: Option<Agg>,
    /// The rates of the stream window's earliest and latest events: with its min and max, the
    /// window's candle (open, high, low, close).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rate: Option<f64>,
    /// The stream window is final (the watermark passed its end).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub batch: Option<Agg>,
    pub status: Status,
    /// The stream row was first written more than a minute after the window's end (backfilled
    /// from history, or a backlog caught up): marked on the chart.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub backfilled: bool,
    /// What differs, when the status is a difference (or why it is pending, when not settled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

/// The view of one window.
pub fn window(
    key: &Key,
    size_us: i64,
    (stream, batch): (Option<&StreamWindow>, Option<&Agg>),
    later_final: bool,
    settlement: &Settlement,
) -> WindowView {
    let (status, what) = classify_settled(key, size_us, (stream, batch), later_final, settlement);
    WindowView {
        pair: format!("{}/{}", key.0, key.1),
        start_us: key.2,
        end_us: key.2 + size_us,
        stream: stream.map(|w| w.agg),
        first_rate: stream.map(|w| w.first),
        last_rate: stream.map(|w| w.last),
        is_final: stream.is_some_and(|w| w.is_final),
        batch: batch.copied(),
        status,
        backfilled: stream.is_some_and(|w| w.written_late),
        what: what.map(|(w, _)| w),
    }
}

/// Every window of both sides, per pair (`BASE/QUOTE`), in time order.
pub fn by_pair(
    size_us: i64,
    stream: &BTreeMap<Key, StreamWindow>,
    batch: &BTreeMap<Key, Agg>,
    settlement: &Settlement,
) -> BTreeMap<String, Vec<WindowView>> {
    let latest = latest_final(stream);
    let mut keys: Vec<&Key> = stream.keys().chain(batch.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out: BTreeMap<String, Vec<WindowView>> = BTreeMap::new();
    for k in keys {
        let later_final = latest
            .get(&(k.0.as_str(), k.1.as_str()))
            .is_some_and(|s| *s > k.2);
        let sides = (stream.get(k), batch.get(k));
        let v = window(k, size_us, sides, later_final, settlement);
        out.entry(v.pair.clone()).or_default().push(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(count: i64, v: f64) -> Agg {
        Agg {
            count,
            sum: v * count as f64,
            min: v,
            max: v,
            avg: v,
        }
    }

    #[test]
    fn every_window_of_both_sides_with_its_status() {
        let k = |s: i64| ("BTC".to_string(), "USD".to_string(), s);
        let stream = BTreeMap::from([
            (
                k(0),
                StreamWindow {
                    agg: agg(2, 1.0),
                    is_final: true,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
            (
                k(120),
                StreamWindow {
                    agg: agg(3, 1.0),
                    is_final: true,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
            (
                k(180),
                StreamWindow {
                    agg: agg(1, 1.0),
                    is_final: false,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
        ]);
        let batch = BTreeMap::from([
            (k(0), agg(2, 1.0)),
            (k(60), agg(1, 1.0)),
            (k(120), agg(4, 1.0)),
            (k(180), agg(2, 1.0)),
            (k(240), agg(1, 1.0)),
        ]);
        let views = by_pair(60, &stream, &batch, &Settlement::strict("raw", None));
        let got: Vec<(i64, Status)> = views["BTC/USD"]
            .iter()
            .map(|v| (v.start_us, v.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Status::Match),
                (60, Status::Missing),
                (120, Status::Differs),
                (180, Status::Open),
                (240, Status::Pending)
            ]
        );
        assert_eq!(
            views["BTC/USD"][2].what.as_deref(),
            Some("count 3 vs 4, sum 3 vs 4")
        );
        assert_eq!(views["BTC/USD"][0].end_us, 60);
    }
}
