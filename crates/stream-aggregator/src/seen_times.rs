//! The event times of one pair that can still matter, for duplicate detection: sorted offsets of
//! four bytes from a base (a steady feed keeps `--watermark` plus a window of times per pair, so
//! this is most of the aggregator's own memory). Times that do not fit as an offset (earlier than
//! the base, or more than 71 minutes after it) are kept aside at full width; they are rare.

use std::collections::{BTreeSet, VecDeque};

/// Offsets this far past the base are re-based when the oldest times are forgotten.
const REBASE_AT: u32 = 1 << 30;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SeenTimes {
    base: i64,
    /// Sorted offsets from `base`.
    near: VecDeque<u32>,
    /// Times that did not fit as an offset when inserted.
    far: BTreeSet<i64>,
}

impl SeenTimes {
    /// Inserts `t`; false when it was there already.
    pub(crate) fn insert(&mut self, t: i64) -> bool {
        if !self.far.is_empty() && self.far.contains(&t) {
            return false;
        }
        if self.near.is_empty() {
            self.base = t;
        }
        let Some(off) = t.checked_sub(self.base).and_then(|d| u32::try_from(d).ok()) else {
            return self.far.insert(t);
        };
        match self.near.back() {
            Some(&last) if off <= last => match self.near.binary_search(&off) {
                Ok(_) => false,
                Err(i) => {
                    self.near.insert(i, off);
                    true
                }
            },
            _ => {
                self.near.push_back(off);
                true
            }
        }
    }

    /// Forgets times before `t`.
    pub(crate) fn prune_before(&mut self, t: i64) {
        while self
            .near
            .front()
            .is_some_and(|&f| self.base + i64::from(f) < t)
        {
            self.near.pop_front();
        }
        if self.far.first().is_some_and(|&f| f < t) {
            self.far = self.far.split_off(&t);
        }
        if let Some(&shift) = self.near.front().filter(|&&f| f >= REBASE_AT) {
            for off in self.near.iter_mut() {
                *off -= shift;
            }
            self.base += i64::from(shift);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.near.is_empty() && self.far.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64),
        Prune(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Times close together (the usual case) and far apart (offsets that do not fit).
        let time = prop_oneof![
            4 => 0i64..2_000,
            1 => -(1i64 << 34)..(1i64 << 34),
        ];
        prop_oneof![
            8 => time.clone().prop_map(Op::Insert),
            1 => time.prop_map(Op::Prune),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec(op(), 1..300)) {
            let mut seen = SeenTimes::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(t) => prop_assert_eq!(seen.insert(t), model.insert(t), "insert {}", t),
                    Op::Prune(t) => {
                        seen.prune_before(t);
                        model = model.split_off(&t);
                    }
                }
                prop_assert_eq!(seen.is_empty(), model.is_empty());
            }
        }
    }

    #[test]
    fn rebases_as_time_moves_on() {
        let mut seen = SeenTimes::default();
        let step = 1_000_000_000; // 1,000 s apart: a u32 offset covers only about 71 minutes
        for i in 0..100 {
            assert!(seen.insert(i * step));
            seen.prune_before((i - 2) * step);
        }
        assert!(seen.far.is_empty(), "re-basing kept every time near");
        assert!(!seen.insert(99 * step));
        assert!(!seen.insert(98 * step));
    }
}
