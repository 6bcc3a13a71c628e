//! The dashboard's state: both sides of every window in scope, kept current by changes (pure: the
//! poller feeds it rows, it answers which windows changed and how they look now).

use std::collections::{BTreeMap, BTreeSet};

use common::window::WindowSpec;

use crate::{
    accuracy::{compare, failing, Accuracy, Agg, Key, Status, StreamWindow},
    batch::Scope,
    settle::Settlement,
    view::{self, WindowView},
};

/// Both sides of the windows in scope.
#[derive(Debug)]
pub struct Live {
    pub spec: WindowSpec,
    pub stream: BTreeMap<Key, StreamWindow>,
    pub batch: BTreeMap<Key, Agg>,
    /// Latest final stream window start per pair (for "missing" against "pending").
    latest_final: BTreeMap<(String, String), i64>,
    /// Which windows the pipeline has not settled (as of the last tick's snapshot).
    settlement: Settlement,
}

impl Live {
    pub fn new(
        spec: WindowSpec,
        stream: BTreeMap<Key, StreamWindow>,
        batch: BTreeMap<Key, Agg>,
    ) -> Self {
        let mut live = Live {
            spec,
            stream: BTreeMap::new(),
            batch,
            latest_final: BTreeMap::new(),
            settlement: Settlement::default(),
        };
        live.apply_stream(stream);
        live
    }

    /// Stream rows read again or anew; returns the windows whose view changed (a window whose
    /// row did not change is not reported).
    pub fn apply_stream(
        &mut self,
        rows: impl IntoIterator<Item = (Key, StreamWindow)>,
    ) -> BTreeSet<Key> {
        let mut changed = BTreeSet::new();
        for (key, w) in rows {
            if self.stream.get(&key) == Some(&w) {
                continue;
            }
            if w.is_final {
                let pair = (key.0.clone(), key.1.clone());
                let previous = self.latest_final.get(&pair).copied();
                if previous.is_none_or(|p| key.2 > p) {
                    self.latest_final.insert(pair, key.2);
                    // Earlier windows of the pair without a stream row turn from pending to
                    // missing.
                    let from = (key.0.clone(), key.1.clone(), previous.unwrap_or(i64::MIN));
                    changed.extend(
                        self.batch
                            .range(from..key.clone())
                            .filter(|(k, _)| !self.stream.contains_key(*k))
                            .map(|(k, _)| k.clone()),
                    );
                }
            }
            self.stream.insert(key.clone(), w);
            changed.insert(key);
        }
        changed
    }

    /// A fresh batch recomputation of `scope` replaces what was known of it; returns the windows
    /// whose batch side changed.
    pub fn apply_batch(&mut self, scope: &Scope, windows: BTreeMap<Key, Agg>) -> BTreeSet<Key> {
        let mut changed: BTreeSet<Key> = self
            .batch
            .keys()
            .filter(|(b, q, s)| {
                scope.contains(b, q, *s) && !windows.contains_key(&(b.clone(), q.clone(), *s))
            })
            .cloned()
            .collect();
        for k in &changed {
            self.batch.remove(k);
        }
        for (k, a) in windows {
            if self.batch.get(&k) != Some(&a) {
                self.batch.insert(k.clone(), a);
                changed.insert(k);
            }
        }
        changed
    }

    /// A new settlement (read in this tick's snapshot); returns the windows whose status it
    /// changed. The rule is evaluated once per pair, and only the windows it may move are looked
    /// at again.
    pub fn apply_settlement(&mut self, settlement: Settlement) -> BTreeSet<Key> {
        let same = settlement.same_rule(&self.settlement);
        let old = std::mem::replace(&mut self.settlement, settlement);
        if same {
            return BTreeSet::new();
        }
        let size = self.spec.size_us;
        let mut candidates: BTreeSet<&Key> = BTreeSet::new();
        for map in [
            self.stream.keys().collect::<Vec<_>>(),
            self.batch.keys().collect(),
        ] {
            let mut pair: Option<(&str, &str, Option<i64>)> = None;
            for k in map {
                let after = match pair {
                    Some((b, q, after)) if b == k.0 && q == k.1 => after,
                    _ => {
                        let after = self.settlement.moved_after(&old, &k.0, &k.1);
                        pair = Some((&k.0, &k.1, after));
                        after
                    }
                };
                if after.is_some_and(|a| k.2 + size > a) {
                    candidates.insert(k);
                }
            }
        }
        let unread: Vec<&Key> = self
            .settlement
            .unread()
            .symmetric_difference(old.unread())
            .collect();
        candidates.extend(unread);
        candidates
            .into_iter()
            .filter(|k| self.view(k).status != self.view_with(k, &old).status)
            .cloned()
            .collect()
    }

    /// The settlement in use.
    pub fn settlement(&self) -> &Settlement {
        &self.settlement
    }

    /// Windows worth checking for raw rows the aggregator has not read: those of `keys` that
    /// would differ or be missing (the unread mark aside), and those marked so far.
    pub fn unread_candidates(&self, keys: &BTreeSet<Key>, settlement: &Settlement) -> Vec<Key> {
        let mut out: BTreeSet<Key> = self.settlement.unread().clone();
        for k in keys {
            let status = self.view_with(k, settlement).status;
            if matches!(status, Status::Differs | Status::Missing) {
                out.insert(k.clone());
            }
        }
        out.into_iter().collect()
    }

    /// Every window that would differ or be missing under `settlement` (after a start).
    pub fn failing(&self, settlement: &Settlement) -> Vec<Key> {
        failing(&self.stream, &self.batch, self.spec.size_us, settlement)
    }

    /// How a window looks now.
    pub fn view(&self, key: &Key) -> WindowView {
        self.view_with(key, &self.settlement)
    }

    fn view_with(&self, key: &Key, settlement: &Settlement) -> WindowView {
        let later_final = self
            .latest_final
            .get(&(key.0.clone(), key.1.clone()))
            .is_some_and(|s| *s > key.2);
        let sides = (self.stream.get(key), self.batch.get(key));
        view::window(key, self.spec.size_us, sides, later_final, settlement)
    }

    /// Windows of one pair starting in `[since, until)`, at most `limit` (the latest ones).
    pub fn windows(
        &self,
        base: &str,
        quote: &str,
        since: i64,
        until: i64,
        limit: usize,
    ) -> Vec<WindowView> {
        let from = (base.to_string(), quote.to_string(), since);
        let to = (base.to_string(), quote.to_string(), until);
        let keys: BTreeSet<&Key> = self
            .stream
            .range(from.clone()..to.clone())
            .map(|(k, _)| k)
            .chain(self.batch.range(from..to).map(|(k, _)| k))
            .collect();
        let skip = keys.len().saturating_sub(limit);
        keys.into_iter().skip(skip).map(|k| self.view(k)).collect()
    }

    /// The pairs known, each with its latest window start: a few lookups per pair, not a walk
    /// over every window.
    pub fn pairs(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for (pair, latest) in latest_per_pair(&self.stream).chain(latest_per_pair(&self.batch)) {
            let e = out.entry(pair).or_insert(latest);
            *e = (*e).max(latest);
        }
        out
    }

    /// Whether `base/quote` has a window on either side.
    pub fn has_pair(&self, base: &str, quote: &str) -> bool {
        let range = || {
            (base.to_owned(), quote.to_owned(), i64::MIN)
                ..=(base.to_owned(), quote.to_owned(), i64::MAX)
        };
        self.stream.range(range()).next().is_some() || self.batch.range(range()).next().is_some()
    }

    /// The verdict over every window in scope.
    pub fn accuracy(&self) -> Accuracy {
        compare(
            &self.stream,
            &self.batch,
            self.spec.size_us,
            &self.settlement,
        )
    }
}

/// `BASE/QUOTE` and its latest window start, for each pair of `map`: jumps from pair to pair.
fn latest_per_pair<V>(map: &BTreeMap<Key, V>) -> impl Iterator<Item = (String, i64)> + '_ {
    let mut next = map.keys().next().cloned();
    std::iter::from_fn(move || {
        let (b, q, _) = next.take()?;
        let end = (b, q, i64::MAX);
        let (latest, _) = map.range(..=end.clone()).next_back()?;
        let item = (format!("{}/{}", latest.0, latest.1), latest.2);
        next = map
            .range((std::ops::Bound::Excluded(end), std::ops::Bound::Unbounded))
            .next()
            .map(|(k, _)| k.clone());
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accuracy::Status;

    fn k(s: i64) -> Key {
        ("BTC".into(), "USD".into(), s)
    }

    fn agg(count: i64) -> Agg {
        Agg {
            count,
            sum: count as f64,
            min: 1.0,
            max: 1.0,
            avg: 1.0,
        }
    }

    fn sw(count: i64, is_final: bool) -> StreamWindow {
        StreamWindow {
            agg: agg(count),
            is_final,
            first: 1.0,
            last: 1.0,
            written_late: false,
        }
    }

    #[test]
    fn changes_are_reported_once_and_statuses_follow() {
        let mut live = Live::new(
            WindowSpec::tumbling(60),
            BTreeMap::from([(k(0), sw(2, false))]),
            BTreeMap::from([(k(0), agg(3)), (k(60), agg(1))]),
        );
        assert_eq!(live.view(&k(0)).status, Status::Open);
        assert_eq!(live.view(&k(60)).status, Status::Pending);
        // The same row read again: nothing changed.
        assert!(live.apply_stream([(k(0), sw(2, false))]).is_empty());
        // It catches up and turns final; a later final window makes the one before it missing.
        let changed = live.apply_stream([(k(0), sw(3, true)), (k(120), sw(1, true))]);
        assert_eq!(changed, BTreeSet::from([k(0), k(60), k(120)]));
        assert_eq!(live.view(&k(0)).status, Status::Match);
        assert_eq!(live.view(&k(60)).status, Status::Missing);
        assert_eq!(live.view(&k(120)).status, Status::Extra);
        // The raw rows of 120 arrive: a recomputation of its range matches it.
        let scope = Scope {
            since: chrono::DateTime::from_timestamp_micros(120),
            until: chrono::DateTime::from_timestamp_micros(180),
            ..Default::default()
        };
        let changed = live.apply_batch(&scope, BTreeMap::from([(k(120), agg(1))]));
        assert_eq!(changed, BTreeSet::from([k(120)]));
        assert_eq!(live.view(&k(120)).status, Status::Match);
        // Recomputed again, unchanged: nothing to report; windows of other ranges untouched.
        assert!(live
            .apply_batch(&scope, BTreeMap::from([(k(120), agg(1))]))
            .is_empty());
        assert_eq!(live.batch.len(), 3);
        let w = live.windows("BTC", "USD", 0, 1000, 2);
        assert_eq!(
            w.iter().map(|v| v.start_us).collect::<Vec<_>>(),
            vec![60, 120]
        );
        assert_eq!(live.pairs()["BTC/USD"], 120);
        assert_eq!(live.accuracy().missing, 1);
    }

    #[test]
    fn a_new_settlement_moves_exactly_the_windows_it_decides_otherwise() {
        use crate::settle::Inputs;
        let rule = |raw: i64, latest_us: i64| {
            Settlement::derive(&Inputs {
                offsets: vec![
                    ("raw".into(), "t".into(), 0, raw),
                    ("agg".into(), "t".into(), 0, 100),
                ],
                raw_group: "raw".into(),
                aggregator_group: "agg".into(),
                pairs: vec![("BTC".into(), "USD".into(), Some(0), latest_us)],
                watermark_us: Some(10),
                raw_empty: false,
                stream_empty: false,
            })
        };
        // Stream windows 0..300 final; the batch side has 0 and 60 only.
        let stream = (0..5).map(|i| (k(i * 60), sw(1, true))).collect();
        let batch = BTreeMap::from([(k(0), agg(1)), (k(60), agg(1))]);
        let mut live = Live::new(WindowSpec::tumbling(60), stream, batch);
        assert_eq!(live.view(&k(120)).status, Status::Extra);
        // The raw consumer behind, latest event 130: settled up to 120.
        let changed = live.apply_settlement(rule(50, 130));
        assert_eq!(changed, BTreeSet::from([k(120), k(180), k(240)]));
        assert_eq!(live.view(&k(120)).status, Status::Pending);
        assert_eq!(live.accuracy().pending, 3);
        // Only the offsets moved: nothing to push.
        assert!(live.apply_settlement(rule(51, 130)).is_empty());
        // Its bound moves to 200: 120 is settled again (extra).
        let changed = live.apply_settlement(rule(60, 210));
        assert_eq!(changed, BTreeSet::from([k(120)]));
        // Caught up: the rest are extra.
        let changed = live.apply_settlement(rule(100, 300));
        assert_eq!(changed, BTreeSet::from([k(180), k(240)]));
        assert_eq!(live.accuracy().extra, 3);
    }

    #[test]
    fn pairs_with_their_latest_window_from_both_sides() {
        let key = |b: &str, s: i64| (b.to_string(), "USD".to_string(), s);
        let stream = BTreeMap::from([
            (key("ADA", 0), sw(1, true)),
            (key("ADA", 60), sw(1, false)),
            (key("ETH", 0), sw(1, true)),
        ]);
        let batch = BTreeMap::from([
            (key("ADA", 0), agg(1)),
            (key("BTC", 120), agg(1)),
            (key("ETH", 0), agg(1)),
            (key("ETH", 180), agg(1)),
        ]);
        let live = Live::new(WindowSpec::tumbling(60), stream, batch);
        assert_eq!(
            live.pairs().into_iter().collect::<Vec<_>>(),
            vec![
                ("ADA/USD".to_string(), 60),
                ("BTC/USD".to_string(), 120),
                ("ETH/USD".to_string(), 180)
            ]
        );
        assert!(live.has_pair("BTC", "USD") && live.has_pair("ADA", "USD"));
        assert!(!live.has_pair("SOL", "USD") && !live.has_pair("ADA", "EUR"));
    }
}
