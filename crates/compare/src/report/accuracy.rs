//! Window-by-window comparison of stream results with the batch recomputation (pure).
//!
//! Counts, min and max must match exactly; sum and avg to 1e-9 relative. A stream window that is
//! not final yet and differs is "open" (the stream may still be catching up), not a mismatch. A
//! batch window missing from the stream is a failure when the stream already has a later final
//! window for that pair (it should have been there), and "pending" otherwise. A window that would
//! fail but that the pipeline has not settled yet (a consumer behind the other: [`Settlement`]) is
//! "pending" too.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::settle::Settlement;

/// Aggregates of one (pair, window) on either side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agg {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
}

/// Key: base, quote, window start (µs since the epoch).
pub type Key = (String, String, i64);

/// One stream window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StreamWindow {
    pub agg: Agg,
    pub is_final: bool,
    /// The rates of the window's earliest and latest events (by event time): its candle's open
    /// and close. Not compared (the batch side does not compute them).
    pub first: f64,
    pub last: f64,
    /// First written more than a minute after the window's end: its updates came after the fact
    /// (a gap filled from history, or a backlog caught up). Not compared.
    pub written_late: bool,
}

/// A window that differs, with its largest relative difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub base: String,
    pub quote: String,
    pub start_us: i64,
    pub stream: Option<Agg>,
    pub batch: Option<Agg>,
    pub worst_relative: f64,
    pub what: String,
}

/// The verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accuracy {
    pub windows_compared: usize,
    pub matched: usize,
    pub mismatches: usize,
    pub missing: usize,
    pub extra: usize,
    pub open: usize,
    pub pending: usize,
    pub passed: bool,
    /// The worst differences first (at most 20).
    pub worst: Vec<Difference>,
}

pub const RELATIVE_TOLERANCE: f64 = 1e-9;

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
    }
}

/// Compares one window; returns the reasons it differs and its worst relative difference.
pub fn differs(stream: &Agg, batch: &Agg) -> Option<(String, f64)> {
    let mut what = Vec::new();
    let mut worst: f64 = 0.0;
    if stream.count != batch.count {
        what.push(format!("count {} vs {}", stream.count, batch.count));
        worst = worst.max(rel(stream.count as f64, batch.count as f64));
    }
    if stream.min != batch.min {
        what.push(format!("min {} vs {}", stream.min, batch.min));
        worst = worst.max(rel(stream.min, batch.min));
    }
    if stream.max != batch.max {
        what.push(format!("max {} vs {}", stream.max, batch.max));
        worst = worst.max(rel(stream.max, batch.max));
    }
    for (name, s, b) in [
        ("sum", stream.sum, batch.sum),
        ("avg", stream.avg, batch.avg),
    ] {
        let r = rel(s, b);
        if r > RELATIVE_TOLERANCE {
            what.push(format!("{name} {s} vs {b}"));
            worst = worst.max(r);
        }
    }
    (!what.is_empty()).then(|| (what.join(", "), worst))
}

/// Where one window stands, stream against batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both sides agree.
    Match,
    /// A final stream window differs from the batch.
    Differs,
    /// The stream window differs but is not final yet (it may be catching up).
    Open,
    /// In the raw data, not in the stream yet, and no later final window of its pair either; or
    /// a difference the pipeline has not settled yet (a consumer behind the other).
    Pending,
    /// In the raw data, not in the stream, though a later window of its pair is final.
    Missing,
    /// In the stream, not in the raw data.
    Extra,
}

/// Classifies one window; for a difference, also what differs and the worst relative difference.
/// `later_final`: the stream has a final window of this pair starting after this one.
pub fn classify(
    stream: Option<&StreamWindow>,
    batch: Option<&Agg>,
    later_final: bool,
) -> (Status, Option<(String, f64)>) {
    match (stream, batch) {
        (Some(w), Some(b)) => match differs(&w.agg, b) {
            None => (Status::Match, None),
            Some(d) if !w.is_final => (Status::Open, Some(d)),
            Some(d) => (Status::Differs, Some(d)),
        },
        (None, Some(_)) if later_final => (
            Status::Missing,
            Some(("missing from stream_agg".into(), f64::INFINITY)),
        ),
        (None, _) => (Status::Pending, None),
        (Some(_), None) => (
            Status::Extra,
            Some((
                "in stream_agg but not in the raw data".into(),
                f64::INFINITY,
            )),
        ),
    }
}

/// [`classify`], then a failure the pipeline has not settled is pending (with why).
pub fn classify_settled(
    key: &Key,
    size_us: i64,
    (stream, batch): (Option<&StreamWindow>, Option<&Agg>),
    later_final: bool,
    settlement: &Settlement,
) -> (Status, Option<(String, f64)>) {
    let (status, what) = classify(stream, batch, later_final);
    match settlement.pending(key, key.2 + size_us, status) {
        Some(why) => (Status::Pending, Some((why, 0.0))),
        None => (status, what),
    }
}

/// Latest final window start per pair in the stream.
pub fn latest_final(stream: &BTreeMap<Key, StreamWindow>) -> BTreeMap<(&str, &str), i64> {
    let mut latest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for ((b, q, s), w) in stream {
        if w.is_final {
            let e = latest.entry((b.as_str(), q.as_str())).or_insert(*s);
            *e = (*e).max(*s);
        }
    }
    latest
}

/// Every window of both sides with its status (under `settlement`) and what differs.
fn statuses<'a>(
    stream: &'a BTreeMap<Key, StreamWindow>,
    batch: &'a BTreeMap<Key, Agg>,
    size_us: i64,
    settlement: &'a Settlement,
) -> impl Iterator<Item = (&'a Key, Status, Option<(String, f64)>)> + 'a {
    let latest = latest_final(stream);
    let keys = batch
        .keys()
        .chain(stream.keys().filter(|k| !batch.contains_key(*k)));
    keys.map(move |k| {
        let later_final = latest
            .get(&(k.0.as_str(), k.1.as_str()))
            .is_some_and(|s| *s > k.2);
        let sides = (stream.get(k), batch.get(k));
        let (status, what) = classify_settled(k, size_us, sides, later_final, settlement);
        (k, status, what)
    })
}

/// The windows that would differ or be missing under `settlement`: those worth checking for rows
/// the aggregator has not read yet.
pub fn failing(
    stream: &BTreeMap<Key, StreamWindow>,
    batch: &BTreeMap<Key, Agg>,
    size_us: i64,
    settlement: &Settlement,
) -> Vec<Key> {
    statuses(stream, batch, size_us, settlement)
        .filter(|(_, s, _)| matches!(s, Status::Differs | Status::Missing))
        .map(|(k, _, _)| k.clone())
        .collect()
}

/// Compares every window (windows `size_us` long; failures the pipeline has not settled are
/// pending).
pub fn compare(
    stream: &BTreeMap<Key, StreamWindow>,
    batch: &BTreeMap<Key, Agg>,
    size_us: i64,
    settlement: &Settlement,
) -> Accuracy {
    let mut acc = Accuracy::default();
    let mut diffs = Vec::new();
    for (k, status, what) in statuses(stream, batch, size_us, settlement) {
        let (s, b) = (stream.get(k), batch.get(k));
        if b.is_some() {
            acc.windows_compared += 1;
        }
        match status {
            Status::Match => acc.matched += 1,
            Status::Open => acc.open += 1,
            Status::Pending => acc.pending += 1,
            Status::Differs => acc.mismatches += 1,
            Status::Missing => acc.missing += 1,
            Status::Extra => acc.extra += 1,
        }
        if let (Status::Differs | Status::Missing | Status::Extra, Some((what, worst))) =
            (status, what)
        {
            diffs.push(Difference {
                base: k.0.clone(),
                quote: k.1.clone(),
                start_us: k.2,
                stream: s.map(|w| w.agg),
                batch: b.copied(),
                worst_relative: worst,
                what,
            });
        }
    }
    diffs.sort_by(|a, b| b.worst_relative.total_cmp(&a.worst_relative));
    diffs.truncate(20);
    acc.worst = diffs;
    // A comparison in which no window matched proves nothing (a mistyped --group, an aggregator
    // that has not written yet): it fails, and says so. Pending windows are no verdict.
    acc.passed = acc.matched > 0 && acc.mismatches == 0 && acc.missing == 0 && acc.extra == 0;
    acc
}

impl Accuracy {
    /// Whether no stream window matched a batch window.
    pub fn compared_nothing(&self) -> bool {
        self.matched == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(count: i64, sum: f64) -> Agg {
        Agg {
            count,
            sum,
            min: 1.0,
            max: 2.0,
            avg: sum / count as f64,
        }
    }

    fn key(s: i64) -> Key {
        ("BTC".into(), "USD".into(), s)
    }

    fn strict() -> Settlement {
        Settlement::strict("raw", None)
    }

    #[test]
    fn comparing_nothing_fails() {
        let batch = BTreeMap::from([(key(0), agg(3, 4.5)), (key(60), agg(2, 3.0))]);
        let a = compare(&BTreeMap::new(), &batch, 60, &strict());
        assert_eq!((a.matched, a.pending), (0, 2));
        assert!(!a.passed && a.compared_nothing(), "{a:?}");
        assert!(!compare(&BTreeMap::new(), &BTreeMap::new(), 60, &strict()).passed);
    }

    #[test]
    fn equal_within_tolerance_passes() {
        let batch = BTreeMap::from([(key(0), agg(3, 4.5))]);
        let stream = BTreeMap::from([(
            key(0),
            StreamWindow {
                agg: agg(3, 4.5 * (1.0 + 1e-12)),
                is_final: true,
                first: 1.0,
                last: 1.0,
                written_late: false,
            },
        )]);
        let a = compare(&stream, &batch, 60, &strict());
        assert!(a.passed && a.matched == 1, "{a:?}");
    }

    #[test]
    fn a_corrupted_final_window_fails_and_is_named() {
        let batch = BTreeMap::from([(key(0), agg(3, 4.5)), (key(60), agg(2, 3.0))]);
        let mut bad = agg(3, 4.5);
        bad.max = 99.0;
        let stream = BTreeMap::from([
            (
                key(0),
                StreamWindow {
                    agg: bad,
                    is_final: true,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
            (
                key(60),
                StreamWindow {
                    agg: agg(2, 3.0),
                    is_final: true,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
        ]);
        let a = compare(&stream, &batch, 60, &strict());
        assert!(!a.passed);
        assert_eq!(a.mismatches, 1);
        assert_eq!(a.worst[0].start_us, 0);
        assert!(a.worst[0].what.contains("max 99"), "{}", a.worst[0].what);
    }

    #[test]
    fn open_pending_missing_and_extra() {
        let batch = BTreeMap::from([
            (key(0), agg(3, 4.5)),
            (key(60), agg(2, 3.0)),
            (key(120), agg(1, 1.0)),
        ]);
        let stream = BTreeMap::from([
            // 0: missing although 60 is final.
            (
                key(60),
                StreamWindow {
                    agg: agg(1, 1.0),
                    is_final: false,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
            (
                key(90),
                StreamWindow {
                    agg: agg(1, 1.0),
                    is_final: true,
                    first: 1.0,
                    last: 1.0,
                    written_late: false,
                },
            ),
        ]);
        let a = compare(&stream, &batch, 60, &strict());
        assert_eq!((a.missing, a.open, a.pending, a.extra), (1, 1, 1, 1));
        assert!(!a.passed);
    }
}
