//! The batch side's pure part: windows assembled from their slide buckets, and late events taken
//! out of exactly the windows they missed (the SQL that reads the buckets is in `super`).

use std::collections::BTreeMap;

use common::window::WindowSpec;

use crate::accuracy::{Agg, Key};

/// Count, sum, min and max of some rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partial {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Partial {
    pub fn of(rate: f64) -> Self {
        Partial {
            count: 1,
            sum: rate,
            min: rate,
            max: rate,
        }
    }

    pub fn merge(&mut self, o: &Partial) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    pub fn agg(&self) -> Agg {
        Agg {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            avg: self.sum / self.count as f64,
        }
    }
}

/// One slide bucket of one pair: `(base, quote, bucket number)` (start = number × slide).
pub type BucketKey = (String, String, i64);

/// Windows from their buckets: a window starting at `s` is the union of the buckets
/// `s / slide .. s / slide + size / slide`.
pub fn assemble(
    spec: WindowSpec,
    buckets: &BTreeMap<BucketKey, Partial>,
) -> BTreeMap<Key, Partial> {
    let k = spec.windows_per_event();
    let mut windows: BTreeMap<Key, Partial> = BTreeMap::new();
    for ((b, q, n), p) in buckets {
        for j in 0..k {
            let start = (n - j) * spec.slide_us;
            windows
                .entry((b.clone(), q.clone(), start))
                .and_modify(|w| w.merge(p))
                .or_insert(*p);
        }
    }
    windows
}

/// A late event the aggregator recorded, matched to its raw row.
#[derive(Debug, Clone, PartialEq)]
pub struct Late {
    pub base: String,
    pub quote: String,
    pub time_us: i64,
    pub rate: f64,
    pub partition: i32,
    pub offset: i64,
    /// Applied to its windows still open when it came.
    pub applied: bool,
    pub watermark_us: i64,
}

/// The windows each late event is left out of: all of its windows when not applied; when applied,
/// those that had closed (ended at or before the watermark it missed).
pub fn exclusions(spec: WindowSpec, late: &[Late]) -> BTreeMap<Key, Vec<&Late>> {
    let mut out: BTreeMap<Key, Vec<&Late>> = BTreeMap::new();
    for l in late {
        for start in spec.starts(l.time_us) {
            if !l.applied || l.watermark_us >= start + spec.size_us {
                out.entry((l.base.clone(), l.quote.clone(), start))
                    .or_default()
                    .push(l);
            }
        }
    }
    out
}

/// Takes excluded events out of their windows. Returns the windows that must be recomputed from
/// their rows: one of its excluded rates was its min or max.
pub fn exclude(
    windows: &mut BTreeMap<Key, Partial>,
    excluded: &BTreeMap<Key, Vec<&Late>>,
) -> Vec<Key> {
    let mut exact = Vec::new();
    for (key, events) in excluded {
        let Some(w) = windows.get_mut(key) else {
            continue;
        };
        if events.iter().any(|l| l.rate == w.min || l.rate == w.max) {
            exact.push(key.clone());
            continue;
        }
        w.count -= events.len() as i64;
        w.sum -= events.iter().map(|l| l.rate).sum::<f64>();
        if w.count <= 0 {
            windows.remove(key);
        }
    }
    exact
}
