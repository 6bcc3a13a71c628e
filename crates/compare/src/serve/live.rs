//! The dashboard's state: both sides of every window in scope, kept current by changes (pure: the
//! poller feeds it rows, it answers which windows changed and how they look now).

use std::collections::{BTreeMap, BTreeSet};

use common::window::WindowSpec;

use crate::{
    accuracy::{compare, Accuracy, Agg, Key, StreamWindow},
    batch::Scope,
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

    /// How a window looks now.
    pub fn view(&self, key: &Key) -> WindowView {
        let later_final = self
            .latest_final
            .get(&(key.0.clone(), key.1.clone()))
            .is_some_and(|s| *s > key.2);
        view::window(
            key,
            self.spec.size_us,
            self.stream.get(key),
            self.batch.get(key),
            later_final,
        )
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

    /// The pairs known, each with its latest window start.
    pub fn pairs(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for (b, q, s) in self.stream.keys().chain(self.batch.keys()) {
            let e = out.entry(format!("{b}/{q}")).or_insert(*s);
            *e = (*e).max(*s);
        }
        out
    }

    /// The verdict over every window in scope.
    pub fn accuracy(&self) -> Accuracy {
        compare(&self.stream, &self.batch)
    }
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
}
