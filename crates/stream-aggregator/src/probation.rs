//! Finding the messages behind a flush the database refused, for one partition (pure).
//!
//! A partition's flush holds window rows built from many messages, so a refused flush cannot be
//! split in memory like a batch of rows. Instead the partition is restored from MySQL (its state
//! as of its last commit), read again from its stored offset, and flushed in smaller steps until
//! the refusal is pinned on single messages:
//!
//! 1. The refused flush covered `base..until`: the partition is read again flushing every
//!    `step = (until - base) / 2` messages.
//! 2. A step that commits is kept (its messages are good). A refused step halves `step` and the
//!    partition is read again from its (new) stored offset.
//! 3. A refused step of one message pins the refusal on it: it is read again and kept as a dead
//!    letter (reason `rejected`) instead of being applied, flushed alone to confirm that the rest
//!    of the flush is accepted without it; then the remaining range is tried at once.
//! 4. A refused flush with no message left to blame (the dead letters and the partition's state
//!    alone) is not about the data: the service stops with the error (exit 1).
//!
//! One refused message in a flush of `n` costs about `log2(n)` re-reads of at most `n` messages.

use std::collections::BTreeMap;

/// The narrowing down of one partition's refused flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probation {
    /// The refused flush covered offsets before this one.
    pub until: i64,
    /// Messages per flush now.
    step: u64,
    /// Messages handled since the partition was last restored or its last flush started.
    taken: u64,
    /// The first message of the current flush that is not a known refused one.
    blame: Option<i64>,
    /// Offsets found refused, with the database's error: kept as dead letters when read again.
    refused: BTreeMap<i64, String>,
    /// The next flush is the one that confirms a pinned message (it holds it as a dead letter).
    confirming: bool,
}

/// A refused flush with no message to blame.
#[derive(Debug, thiserror::Error)]
#[error("the database refuses partition {partition}'s flush with no message left to blame (only dead letters and the partition's state): {error}")]
pub struct NoBlame {
    pub partition: i32,
    pub error: String,
}

impl Probation {
    /// After a refused flush of offsets `base..until`.
    pub fn start(base: i64, until: i64) -> Self {
        Probation {
            until,
            step: half(until - base),
            taken: 0,
            blame: None,
            refused: BTreeMap::new(),
            confirming: false,
        }
    }

    /// Message `offset` is handled: `Some(error)` when it is a refused one (keep it as a dead
    /// letter, do not apply it).
    pub fn on_message(&mut self, offset: i64) -> Option<&str> {
        self.taken += 1;
        if let Some(error) = self.refused.get(&offset) {
            return Some(error);
        }
        self.blame.get_or_insert(offset);
        None
    }

    /// Enough messages for this step's flush.
    pub fn due(&self) -> bool {
        self.taken >= self.step
    }

    /// A flush is taken: counting starts again for the next one.
    pub fn flushing(&mut self) -> Flushing {
        let f = Flushing {
            blame: self.blame.take(),
        };
        self.taken = 0;
        f
    }

    /// The flush committed up to `next_offset`; true when the refused range is passed.
    pub fn committed(&mut self, next_offset: i64) -> bool {
        if std::mem::take(&mut self.confirming) {
            self.step = u64::try_from(self.until - next_offset).unwrap_or(1).max(1);
        }
        next_offset >= self.until
    }

    /// The flush was refused with `error`; the partition is read again from its stored offset.
    pub fn rejected(
        &mut self,
        partition: i32,
        flushing: Flushing,
        error: &str,
    ) -> Result<(), NoBlame> {
        self.taken = 0;
        self.blame = None;
        let Some(blame) = flushing.blame else {
            return Err(NoBlame {
                partition,
                error: error.to_owned(),
            });
        };
        if self.step <= 1 {
            self.refused.insert(blame, error.to_owned());
            self.confirming = true;
        } else {
            self.step = half(i64::try_from(self.step).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// Offsets found refused so far.
    pub fn refused(&self) -> impl Iterator<Item = i64> + '_ {
        self.refused.keys().copied()
    }
}

/// What a flush of a partition on probation held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushing {
    blame: Option<i64>,
}

fn half(n: i64) -> u64 {
    u64::try_from(n / 2).unwrap_or(0).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Runs probation over offsets `0..n` where `bad` offsets make any flush holding them
    /// (applied) refused; returns the offsets pinned, and the flushes it took.
    fn narrow(n: i64, bad: &BTreeSet<i64>) -> (Vec<i64>, usize) {
        let mut p = Probation::start(0, n);
        let mut stored = 0i64; // MySQL's next offset
        let mut flushes = 0;
        loop {
            // Read from the stored offset until a flush is due (or the range ends).
            let mut offset = stored;
            let mut applied = Vec::new();
            while offset < n && !p.due() {
                if p.on_message(offset).is_none() {
                    applied.push(offset);
                }
                offset += 1;
            }
            let f = p.flushing();
            flushes += 1;
            assert!(flushes < 10_000, "does not converge");
            if applied.iter().any(|o| bad.contains(o)) {
                p.rejected(0, f, "refused").expect("a message to blame");
            } else {
                stored = offset;
                if p.committed(stored) {
                    return (p.refused().collect(), flushes);
                }
            }
        }
    }

    #[test]
    fn pins_one_refused_message_in_about_log2_n_flushes() {
        let bad = BTreeSet::from([737]);
        let (pinned, flushes) = narrow(1000, &bad);
        assert_eq!(pinned, vec![737]);
        assert!(flushes <= 30, "{flushes} flushes");
    }

    #[test]
    fn a_flush_refused_without_a_message_to_blame_stops() {
        let mut p = Probation::start(10, 11);
        assert!(p.on_message(10).is_none());
        let f = p.flushing();
        p.rejected(3, f, "refused").unwrap();
        // Read again: 10 is now a dead letter; the flush holding only it is refused too.
        assert_eq!(p.on_message(10), Some("refused"));
        let f = p.flushing();
        let e = p.rejected(3, f, "still refused").unwrap_err();
        assert_eq!(e.partition, 3);
        assert!(e.to_string().contains("no message left to blame"), "{e}");
    }

    proptest! {
        #[test]
        fn pins_exactly_the_refused_messages(
            n in 1i64..400,
            bad in prop::collection::btree_set(0i64..400, 0..6),
        ) {
            let bad: BTreeSet<i64> = bad.into_iter().filter(|b| *b < n).collect();
            let (pinned, _) = narrow(n, &bad);
            prop_assert_eq!(pinned, bad.into_iter().collect::<Vec<_>>());
        }
    }
}
