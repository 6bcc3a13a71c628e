//! The watchdog: decides from probes when the group has stopped making progress on a topic that
//! has work, so the instance rejoins the group instead of idling silently. Pure: the runtime feeds
//! it probes and its own view and acts on the verdict.
//!
//! A partition is stalled when messages wait in it (MySQL's offset below the high watermark) and
//! - this instance holds it but has received nothing from it for the stall period (its fetch
//!   stopped: a broker that lost track of the assignment, a seek that never resumed), or
//! - another member holds it (or nobody does) and its offset in MySQL has not moved for the stall
//!   period: a dead member the coordinator still counts, or partitions orphaned by a rebalance
//!   (the test broker keeps a dead member's partitions, measured), or an instance with none.
//!
//! The stall period is two session timeouts, longer than any rebalance. A held partition is not
//! judged while the instance itself stopped reading (its write waits for the database: that is
//! the database's problem, reported by the write's retries). Rejoins back off exponentially
//! (with jitter) while the stall lasts, so a group that cannot heal is not rebalanced in a loop.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::probe::Probe;
use common::backoff::Backoff;

/// Longest wait between two rejoins while the group stays stuck.
const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(300);

/// This instance's view of a partition it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub partition: i32,
    /// Next offset to read, as far as this instance knows (`None`: nothing read or stored).
    pub position: Option<i64>,
    /// Its last sign of life: a message received, the assignment, or the end of a pause of ours.
    pub active_at: Instant,
}

/// A partition without progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub partition: i32,
    /// Messages waiting.
    pub lag: i64,
    /// Held by this instance (and not fetched) or by another member / nobody.
    pub held: bool,
    /// How long it has shown no progress.
    pub stalled_for: Duration,
}

/// What the runtime should do after a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Progress everywhere, or nothing to do.
    Fine,
    /// Stalled, but a rejoin was tried recently: wait (backoff).
    Waiting(Vec<Stall>),
    /// Stalled: rejoin the group now.
    Rejoin(Vec<Stall>),
}

/// Stall detection over successive probes.
#[derive(Debug)]
pub struct Watchdog {
    stall_after: Duration,
    /// Per partition with messages waiting: the stored offset last seen, and since when.
    unmoved: BTreeMap<i32, (Option<i64>, Instant)>,
    backoff: Backoff,
    next_rejoin: Option<Instant>,
}

impl Watchdog {
    pub fn new(stall_after: Duration) -> Self {
        Watchdog {
            stall_after,
            unmoved: BTreeMap::new(),
            backoff: Backoff::new(stall_after, MAX_REJOIN_BACKOFF.max(stall_after)),
            next_rejoin: None,
        }
    }

    /// Judges a probe. `held` is what this instance holds; `reading` is false while it stopped
    /// reading on purpose (waiting for its own write), when held partitions are not judged.
    pub fn observe(
        &mut self,
        probe: &Probe,
        held: &[Held],
        reading: bool,
        now: Instant,
    ) -> Verdict {
        let mut stalls = Vec::new();
        for (&p, mark) in &probe.partitions {
            if mark.lag() == 0 {
                self.unmoved.remove(&p);
                continue;
            }
            let since = match self.unmoved.get(&p) {
                Some((stored, since)) if *stored == mark.stored => *since,
                _ => {
                    self.unmoved.insert(p, (mark.stored, probe.at));
                    probe.at
                }
            };
            match held.iter().find(|h| h.partition == p) {
                Some(h) => {
                    let position = h.position.unwrap_or(mark.resume_at()).max(mark.low);
                    let quiet = now.saturating_duration_since(h.active_at);
                    if reading && position < mark.high && quiet >= self.stall_after {
                        stalls.push(Stall {
                            partition: p,
                            lag: mark.high - position,
                            held: true,
                            stalled_for: quiet,
                        });
                    }
                }
                None => {
                    let unmoved_for = now.saturating_duration_since(since);
                    if unmoved_for >= self.stall_after {
                        stalls.push(Stall {
                            partition: p,
                            lag: mark.lag(),
                            held: false,
                            stalled_for: unmoved_for,
                        });
                    }
                }
            }
        }
        self.unmoved.retain(|p, _| probe.partitions.contains_key(p));
        if stalls.is_empty() {
            self.backoff.reset();
            self.next_rejoin = None;
            return Verdict::Fine;
        }
        if self.next_rejoin.is_some_and(|t| now < t) {
            return Verdict::Waiting(stalls);
        }
        self.next_rejoin = Some(now + self.backoff.next_delay());
        Verdict::Rejoin(stalls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::PartitionMark;

    const S: Duration = Duration::from_secs(1);

    fn probe(at: Instant, marks: &[(i32, Option<i64>, i64)]) -> Probe {
        Probe {
            at,
            partitions: marks
                .iter()
                .map(|&(p, stored, high)| {
                    let mark = PartitionMark {
                        stored,
                        low: 0,
                        high,
                    };
                    (p, mark)
                })
                .collect(),
        }
    }

    fn rejoined(v: &Verdict) -> Vec<i32> {
        match v {
            Verdict::Rejoin(s) => s.iter().map(|s| s.partition).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn an_instance_without_partitions_rejoins_when_the_topic_waits() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(20 * S);
        // Work waits in partition 1, nobody moves it.
        for t in [0, 5, 10, 19] {
            let v = w.observe(
                &probe(t0 + t * S, &[(0, Some(5), 5), (1, Some(2), 9)]),
                &[],
                true,
                t0 + t * S,
            );
            assert_eq!(v, Verdict::Fine, "at {t} s");
        }
        let v = w.observe(
            &probe(t0 + 20 * S, &[(0, Some(5), 5), (1, Some(2), 9)]),
            &[],
            true,
            t0 + 20 * S,
        );
        assert_eq!(rejoined(&v), vec![1]);
        // Still stuck right after: wait for the backoff, then again.
        let v = w.observe(
            &probe(t0 + 21 * S, &[(1, Some(2), 9)]),
            &[],
            true,
            t0 + 21 * S,
        );
        assert!(matches!(v, Verdict::Waiting(_)), "{v:?}");
        let v = w.observe(
            &probe(t0 + 41 * S, &[(1, Some(2), 9)]),
            &[],
            true,
            t0 + 41 * S,
        );
        assert_eq!(rejoined(&v), vec![1]);
    }

    #[test]
    fn progress_anywhere_resets_the_clock() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(10 * S);
        for (i, t) in [0u32, 6, 12, 18, 24].iter().enumerate() {
            // Another member moves partition 0 forward at every probe: never stalled.
            let p = probe(t0 + *t * S, &[(0, Some(i as i64 * 100), 1_000)]);
            assert_eq!(w.observe(&p, &[], true, t0 + *t * S), Verdict::Fine);
        }
        // Caught up: no lag is never a stall, however long it lasts.
        for t in [30, 60, 90] {
            let p = probe(t0 + t * S, &[(0, Some(1_000), 1_000)]);
            assert_eq!(w.observe(&p, &[], true, t0 + t * S), Verdict::Fine);
        }
    }

    #[test]
    fn a_held_partition_that_is_not_fetched_is_a_stall() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(10 * S);
        let held = |pos, at| Held {
            partition: 0,
            position: pos,
            active_at: at,
        };
        let p = probe(t0 + 15 * S, &[(0, Some(3), 50)]);
        // Read recently: fine.
        assert_eq!(
            w.observe(&p, &[held(Some(40), t0 + 12 * S)], true, t0 + 15 * S),
            Verdict::Fine
        );
        // Paused by its own write: not judged.
        assert_eq!(
            w.observe(&p, &[held(Some(3), t0)], false, t0 + 15 * S),
            Verdict::Fine
        );
        // Nothing for 15 s while 47 messages wait.
        let v = w.observe(&p, &[held(Some(3), t0)], true, t0 + 15 * S);
        match v {
            Verdict::Rejoin(s) => {
                assert_eq!(s.len(), 1);
                assert!(
                    s[0].held && s[0].lag == 47 && s[0].stalled_for == 15 * S,
                    "{s:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // At the end of its log a quiet partition is fine.
        let mut w = Watchdog::new(10 * S);
        let p = probe(t0 + 15 * S, &[(0, Some(50), 50)]);
        assert_eq!(
            w.observe(&p, &[held(Some(50), t0)], true, t0 + 15 * S),
            Verdict::Fine
        );
    }
}
