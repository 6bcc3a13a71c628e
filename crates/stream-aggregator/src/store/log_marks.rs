//! Where the duplicate log (`aggregator_seen`) can be cut: its entries are dropped once every
//! time in them is behind the engine's horizon. The table has no index on the times, so a delete
//! by time scans (and locks) every entry of the partition: milliseconds on every flush once a
//! minute of entries is kept. Instead the aggregator remembers, for about every `step` of event
//! time, the last entry written and the largest time in it and in every entry before it, and
//! deletes by sequence number (the primary key) up to the last such mark behind the horizon.
//! Entries after that mark wait for the next one (at most about `step` more of them are kept).

use std::collections::VecDeque;

/// One mark: every entry up to `seq` holds times up to `max_time` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    seq: i64,
    max_time: i64,
    /// `max_time` when the mark was opened: a mark spans at most `step` of event time.
    opened: i64,
}

/// The marks of one partition's duplicate log.
#[derive(Debug, Clone)]
pub struct LogMarks {
    step: i64,
    running: i64,
    marks: VecDeque<Mark>,
}

impl LogMarks {
    /// No entries yet; a mark per `step_us` of event time (at least 1).
    pub fn new(step_us: i64) -> Self {
        LogMarks {
            step: step_us.max(1),
            running: i64::MIN,
            marks: VecDeque::new(),
        }
    }

    /// The marks of entries already in the log, as (seq, largest time), in sequence order.
    pub fn of_entries(step_us: i64, entries: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut marks = LogMarks::new(step_us);
        for (seq, max_time) in entries {
            marks.written(seq, max_time);
        }
        marks
    }

    /// Entry `seq`, whose largest time is `max_time`, was written (sequence numbers increase).
    pub fn written(&mut self, seq: i64, max_time: i64) {
        self.running = self.running.max(max_time);
        let running = self.running;
        match self.marks.back_mut() {
            Some(last) if running < last.opened.saturating_add(self.step) => {
                last.seq = seq;
                last.max_time = running;
            }
            _ => self.marks.push_back(Mark {
                seq,
                max_time: running,
                opened: running,
            }),
        }
    }

    /// The last entry that can be deleted, with every entry before it, when times older than
    /// `horizon` are no longer needed: `None` when no mark is wholly behind it.
    pub fn cut(&self, horizon: i64) -> Option<i64> {
        self.marks
            .iter()
            .take_while(|m| m.max_time < horizon)
            .last()
            .map(|m| m.seq)
    }

    /// Entries up to `seq` were deleted.
    pub fn deleted(&mut self, seq: i64) {
        while self.marks.front().is_some_and(|m| m.seq <= seq) {
            self.marks.pop_front();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cuts_only_behind_the_horizon_and_keeps_one_mark_per_step() {
        let mut m = LogMarks::new(1_000);
        for seq in 1..=100 {
            m.written(seq, seq * 100); // 10 entries a step
        }
        assert_eq!(m.len(), 10);
        assert_eq!(m.cut(50), None);
        // Marks end at seq 10, 20, ...: the 25th entry's time (2,500) is behind 2,600 but the
        // mark holding it also holds entry 30 (3,000).
        assert_eq!(m.cut(2_600), Some(20));
        m.deleted(20);
        assert_eq!(m.len(), 8);
        assert_eq!(m.cut(2_600), None);
        assert_eq!(m.cut(i64::MAX), Some(100));
    }

    #[test]
    fn a_late_entry_never_lets_a_newer_one_go() {
        let mut m = LogMarks::new(1_000);
        m.written(1, 5_000);
        m.written(2, 100); // only late times in this flush
        m.written(3, 5_100);
        // Entry 2 is behind 1,000, but entries 1 and 3 are not.
        assert_eq!(m.cut(1_000), None);
        assert_eq!(m.cut(6_000), Some(3));
    }

    proptest! {
        /// Whatever the times, a cut never deletes an entry holding a time at or after the
        /// horizon, and deletes every entry that it and the entries before it hold only times
        /// at least a step behind the horizon.
        #[test]
        fn a_cut_is_safe_and_leaves_little(
            // Mostly rising times, some flushes holding only late ones.
            steps in prop::collection::vec(-3_000i64..2_000, 1..200),
            step in 1i64..5_000,
            horizon in -10_000i64..400_000,
        ) {
            let mut t = 0i64;
            let entries: Vec<(i64, i64)> = steps
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    t += d.abs();
                    (i as i64 + 1, if *d < -2_000 { t + d * 5 } else { t })
                })
                .collect();
            let m = LogMarks::of_entries(step, entries.iter().copied());
            let cut = m.cut(horizon).unwrap_or(0);
            for &(seq, t) in &entries {
                if seq <= cut {
                    prop_assert!(t < horizon, "entry {seq} ({t}) deleted at horizon {horizon}");
                }
            }
            // An entry is kept only while it or one before it is within a step of the horizon.
            let mut running = i64::MIN;
            for &(seq, t) in &entries {
                running = running.max(t);
                if running.saturating_add(step) <= horizon {
                    prop_assert!(seq <= cut, "entry {seq} kept at horizon {horizon} (cut {cut})");
                }
            }
        }
    }
}
