//! The window engine: pure, I/O-free event-time aggregation for the events of one Kafka partition.
//!
//! Semantics (also in the README):
//! - Windows per pair on event time, UTC, aligned to the epoch, `[start, end)`. Tumbling windows
//!   have `slide == size`; with a smaller slide an event belongs to every window covering it.
//! - Watermark = the largest event time seen on the partition minus the allowed lateness. When the
//!   partition has been idle, the caller may advance it with the wall clock ([`PartitionEngine::advance_to`]).
//!   A window is closed once the watermark reaches its end (`end <= watermark`).
//! - An event applies to each of its windows that is still open. An event none of whose windows is
//!   open is late: it is not applied and is reported. An event some of whose windows are closed is
//!   applied to the open ones and reported as partly late, so a batch recomputation can exclude it
//!   from exactly the windows that missed it.
//! - The first occurrence of a (pair, time) wins; later ones are duplicates and change nothing
//!   (the raw table keeps the first occurrence too).
//! - Emissions: in update mode every window changed since the last emission; in append mode only
//!   windows that closed. A window that closes is emitted once more with `is_final` and dropped.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxBuildHasher;

use crate::seen_times::SeenTimes;

pub use common::window::WindowSpec;
use common::Pair;
use serde::{Deserialize, Serialize};

/// Aggregates of one (pair, window).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first_time: i64,
    pub first_rate: f64,
    pub last_time: i64,
    pub last_rate: f64,
}

impl Agg {
    fn new(time: i64, rate: f64) -> Self {
        Agg {
            count: 1,
            sum: rate,
            min: rate,
            max: rate,
            first_time: time,
            first_rate: rate,
            last_time: time,
            last_rate: rate,
        }
    }

    fn add(&mut self, time: i64, rate: f64) {
        self.count += 1;
        self.sum += rate;
        self.min = self.min.min(rate);
        self.max = self.max.max(rate);
        if time < self.first_time {
            self.first_time = time;
            self.first_rate = rate;
        }
        if time > self.last_time {
            self.last_time = time;
            self.last_rate = rate;
        }
    }

    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied to all its windows.
    Accepted,
    /// Applied to the open windows only; `closed` of its windows had closed already.
    PartlyLate { watermark: i64, closed: u32 },
    /// All its windows had closed: not applied.
    Late { watermark: i64 },
    /// Its (pair, time) was seen before: ignored.
    Duplicate,
}

/// One window result to write and publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emission {
    pub pair: Pair,
    pub start: i64,
    pub end: i64,
    pub agg: Agg,
    pub is_final: bool,
}

/// Output mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Emit every changed window at each flush; final once more when it closes.
    Update,
    /// Emit each window once, when it closes.
    Append,
}

/// The persistent part of a partition's state (see [`PartitionEngine::snapshot`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub max_event: Option<i64>,
    pub watermark: i64,
    /// Open windows: (pair text, start, aggregates).
    pub windows: Vec<(String, i64, Agg)>,
}

/// One open window of a pair.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    agg: Agg,
    /// Changed since the last emission.
    dirty: bool,
}

/// Everything the engine keeps for one pair.
#[derive(Debug, Clone)]
struct PairState {
    pair: Pair,
    /// Open windows, sorted by start (so closed ones are a prefix).
    windows: VecDeque<Window>,
    seen: SeenTimes,
    /// Times accepted since the last [`PartitionEngine::take_new_seen`].
    new_seen: Vec<i64>,
}

impl PairState {
    fn new(pair: Pair) -> Self {
        PairState {
            pair,
            windows: VecDeque::new(),
            seen: SeenTimes::default(),
            new_seen: Vec::new(),
        }
    }

    /// The window starting at `start`, created if missing (events mostly hit the latest one).
    fn window(&mut self, start: i64, time: i64, rate: f64) -> &mut Window {
        let i = match self.windows.iter().rposition(|w| w.start <= start) {
            Some(i) if self.windows[i].start == start => {
                self.windows[i].agg.add(time, rate);
                i
            }
            found => {
                let i = found.map_or(0, |i| i + 1);
                let w = Window {
                    start,
                    agg: Agg::new(time, rate),
                    dirty: false,
                };
                self.windows.insert(i, w);
                i
            }
        };
        &mut self.windows[i]
    }
}

/// Engine state of one partition: per pair its open windows and recently seen event times.
#[derive(Debug, Clone)]
pub struct PartitionEngine {
    spec: WindowSpec,
    lateness: i64,
    max_event: Option<i64>,
    watermark: i64,
    pairs: Vec<PairState>,
    index: HashMap<Pair, usize, FxBuildHasher>,
    /// Index of the pair of the previous event (consecutive events are mostly of one pair).
    last: usize,
}

impl PartitionEngine {
    /// An empty engine; `lateness` is the watermark delay in microseconds.
    pub fn new(spec: WindowSpec, lateness: i64) -> Self {
        PartitionEngine {
            spec,
            lateness,
            max_event: None,
            watermark: i64::MIN,
            pairs: Vec::new(),
            index: HashMap::default(),
            last: 0,
        }
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn max_event(&self) -> Option<i64> {
        self.max_event
    }

    /// Open windows held.
    pub fn open_windows(&self) -> usize {
        self.pairs.iter().map(|p| p.windows.len()).sum()
    }

    fn pair_index(&mut self, pair: Pair) -> usize {
        if self.pairs.get(self.last).is_some_and(|s| s.pair == pair) {
            return self.last;
        }
        let i = *self.index.entry(pair).or_insert_with(|| {
            self.pairs.push(PairState::new(pair));
            self.pairs.len() - 1
        });
        self.last = i;
        i
    }

    /// Applies one event.
    pub fn apply(&mut self, pair: Pair, time: i64, rate: f64) -> Applied {
        let wm = self.watermark;
        // A window is open while its end is after the watermark.
        if self.spec.last_end(time) <= wm {
            return Applied::Late { watermark: wm };
        }
        let spec = self.spec;
        let i = self.pair_index(pair);
        let state = &mut self.pairs[i];
        if !state.seen.insert(time) {
            return Applied::Duplicate;
        }
        state.new_seen.push(time);
        let mut closed = 0;
        for start in spec.starts(time) {
            if start + spec.size_us <= wm {
                closed += 1;
                continue;
            }
            state.window(start, time, rate).dirty = true;
        }
        self.max_event = Some(self.max_event.map_or(time, |m| m.max(time)));
        self.advance_to(time.saturating_sub(self.lateness));
        if closed > 0 {
            Applied::PartlyLate {
                watermark: wm,
                closed,
            }
        } else {
            Applied::Accepted
        }
    }

    /// Raises the watermark to `wm` if that is later (it never goes back).
    pub fn advance_to(&mut self, wm: i64) {
        self.watermark = self.watermark.max(wm);
    }

    /// Emissions due now: changed windows (update mode) and windows the watermark closed, which
    /// are dropped after their final emission. Ordered: open ones, then final ones, each by
    /// (pair, start).
    pub fn take_emissions(&mut self, mode: Mode) -> Vec<Emission> {
        let wm = self.watermark;
        let size = self.spec.size_us;
        let mut out = Vec::new();
        let emission = |pair, w: &Window, is_final| Emission {
            pair,
            start: w.start,
            end: w.start + size,
            agg: w.agg,
            is_final,
        };
        for state in &mut self.pairs {
            while state.windows.front().is_some_and(|w| w.start + size <= wm) {
                let w = state.windows.pop_front().expect("checked");
                out.push(emission(state.pair, &w, true));
            }
            for w in state.windows.iter_mut().filter(|w| w.dirty) {
                w.dirty = false;
                if mode == Mode::Update {
                    out.push(emission(state.pair, w, false));
                }
            }
        }
        out.sort_unstable_by_key(|e| (e.is_final, e.pair, e.start));
        // Times whose every window has closed can no longer be applied: forget them.
        let horizon = wm.saturating_sub(size);
        for state in &mut self.pairs {
            state.seen.prune_before(horizon);
        }
        let before = self.pairs.len();
        self.pairs
            .retain(|s| !(s.windows.is_empty() && s.seen.is_empty() && s.new_seen.is_empty()));
        if self.pairs.len() != before {
            self.reindex();
        }
        out
    }

    fn reindex(&mut self) {
        self.index = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.pair, i))
            .collect();
        self.last = 0;
    }

    /// Times accepted since the last call, per pair, for the persistent duplicate log: pairs
    /// sorted, each once, with its times sorted.
    pub fn take_new_seen(&mut self) -> Vec<(Pair, Vec<i64>)> {
        let mut out: Vec<(Pair, Vec<i64>)> = self
            .pairs
            .iter_mut()
            .filter(|s| !s.new_seen.is_empty())
            .map(|s| {
                let mut times = std::mem::take(&mut s.new_seen);
                times.sort_unstable();
                (s.pair, times)
            })
            .collect();
        out.sort_unstable_by_key(|(p, _)| *p);
        out
    }

    /// Times older than this can be dropped from the duplicate log.
    pub fn seen_horizon(&self) -> i64 {
        self.watermark.saturating_sub(self.spec.size_us)
    }

    /// The open windows and watermark, for storing with the offsets.
    pub fn snapshot(&self) -> Snapshot {
        let mut windows: Vec<(Pair, i64, Agg)> = self
            .pairs
            .iter()
            .flat_map(|s| s.windows.iter().map(|w| (s.pair, w.start, w.agg)))
            .collect();
        windows.sort_unstable_by_key(|(p, s, _)| (*p, *s));
        Snapshot {
            max_event: self.max_event,
            watermark: self.watermark,
            windows: windows
                .into_iter()
                .map(|(p, s, a)| (p.to_string(), s, a))
                .collect(),
        }
    }

    /// Rebuilds an engine from a snapshot and the duplicate log's (pair, time) entries.
    pub fn restore(
        spec: WindowSpec,
        lateness: i64,
        snapshot: &Snapshot,
        seen: impl IntoIterator<Item = (Pair, i64)>,
    ) -> Result<Self, common::ModelError> {
        let mut e = PartitionEngine::new(spec, lateness);
        e.max_event = snapshot.max_event;
        e.watermark = snapshot.watermark;
        for (p, s, a) in &snapshot.windows {
            let i = e.pair_index(p.parse()?);
            let windows = &mut e.pairs[i].windows;
            let at = windows.partition_point(|w| w.start < *s);
            if windows.get(at).is_some_and(|w| w.start == *s) {
                windows[at].agg = *a;
            } else {
                let w = Window {
                    start: *s,
                    agg: *a,
                    dirty: false,
                };
                windows.insert(at, w);
            }
        }
        let horizon = e.seen_horizon();
        for (p, t) in seen {
            if t >= horizon {
                let i = e.pair_index(p);
                e.pairs[i].seen.insert(t);
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn pair(s: &str) -> Pair {
        s.parse().unwrap()
    }

    #[test]
    fn tumbling_membership_and_exact_end() {
        let spec = WindowSpec::tumbling(5 * MIN);
        assert_eq!(spec.starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(spec.starts(5 * MIN - 1).collect::<Vec<_>>(), vec![0]);
        // An event exactly at a window's end belongs to the next window.
        assert_eq!(spec.starts(5 * MIN).collect::<Vec<_>>(), vec![5 * MIN]);
        // Before the epoch too.
        assert_eq!(spec.starts(-1).collect::<Vec<_>>(), vec![-5 * MIN]);
    }

    #[test]
    fn sliding_membership() {
        let spec = WindowSpec::sliding(10 * MIN, 5 * MIN);
        assert_eq!(
            spec.starts(12 * MIN).collect::<Vec<_>>(),
            vec![10 * MIN, 5 * MIN]
        );
        assert_eq!(
            spec.starts(10 * MIN).collect::<Vec<_>>(),
            vec![10 * MIN, 5 * MIN]
        );
        let spec = WindowSpec::sliding(3 * MIN, MIN);
        assert_eq!(spec.starts(3 * MIN + 1).count(), 3);
    }

    #[test]
    fn aggregates_first_last_by_event_time() {
        let mut e = PartitionEngine::new(WindowSpec::tumbling(5 * MIN), 10 * MIN);
        let p = pair("BTC/USD");
        assert_eq!(e.apply(p, 3 * MIN, 3.0), Applied::Accepted);
        assert_eq!(e.apply(p, MIN, 1.0), Applied::Accepted);
        assert_eq!(e.apply(p, 2 * MIN, 5.0), Applied::Accepted);
        assert_eq!(e.apply(p, 2 * MIN, 7.0), Applied::Duplicate);
        let em = e.take_emissions(Mode::Update);
        assert_eq!(em.len(), 1);
        let a = em[0].agg;
        assert_eq!((a.count, a.sum, a.min, a.max), (3, 9.0, 1.0, 5.0));
        assert_eq!(
            (a.first_rate, a.last_rate, a.last_time),
            (1.0, 3.0, 3 * MIN)
        );
        assert!(!em[0].is_final);
        // Nothing changed: nothing to emit in update mode.
        assert!(e.take_emissions(Mode::Update).is_empty());
    }

    #[test]
    fn watermark_closes_windows_and_late_events_are_reported() {
        let mut e = PartitionEngine::new(WindowSpec::tumbling(5 * MIN), 10 * MIN);
        let p = pair("ETH/USD");
        e.apply(p, MIN, 1.0);
        // Watermark = 16 min - 10 min = 6 min: the [0, 5) window closes.
        e.apply(p, 16 * MIN, 2.0);
        assert_eq!(e.watermark(), 6 * MIN);
        let em = e.take_emissions(Mode::Update);
        let finals: Vec<_> = em.iter().filter(|x| x.is_final).collect();
        assert_eq!(finals.len(), 1);
        assert_eq!((finals[0].start, finals[0].agg.count), (0, 1));
        assert_eq!(
            e.apply(p, 4 * MIN, 9.0),
            Applied::Late { watermark: 6 * MIN }
        );
        // Exactly at the watermark: window [5, 10) is open (end 10 > 6).
        assert_eq!(e.apply(p, 6 * MIN, 9.0), Applied::Accepted);
        // A window ending exactly at the watermark is closed.
        e.advance_to(10 * MIN);
        assert!(matches!(e.apply(p, 9 * MIN, 1.0), Applied::Late { .. }));
    }

    #[test]
    fn sliding_partly_late_applies_to_open_windows_only() {
        let mut e = PartitionEngine::new(WindowSpec::sliding(10 * MIN, 5 * MIN), 0);
        let p = pair("SOL/USD");
        e.apply(p, 11 * MIN, 1.0); // watermark 11
                                   // 7 min is in [0,10) (closed) and [5,15) (open).
        assert_eq!(
            e.apply(p, 7 * MIN, 2.0),
            Applied::PartlyLate {
                watermark: 11 * MIN,
                closed: 1
            }
        );
        let em = e.take_emissions(Mode::Append);
        assert!(em.iter().all(|x| x.is_final));
    }

    #[test]
    fn idle_advance_closes_the_last_windows() {
        let mut e = PartitionEngine::new(WindowSpec::tumbling(MIN), 10 * MIN);
        e.apply(pair("BTC/USD"), 30 * MIN + 5, 1.0);
        assert!(e.take_emissions(Mode::Append).is_empty());
        e.advance_to(31 * MIN);
        let em = e.take_emissions(Mode::Append);
        assert_eq!(em.len(), 1);
        assert!(em[0].is_final);
        assert_eq!(e.open_windows(), 0);
    }

    #[test]
    fn append_mode_emits_each_window_once() {
        let mut e = PartitionEngine::new(WindowSpec::tumbling(MIN), 0);
        let p = pair("BTC/USD");
        for t in 0..10 {
            e.apply(p, t * MIN / 2, 1.0);
        }
        let em = e.take_emissions(Mode::Append);
        assert!(em.iter().all(|x| x.is_final && x.agg.count == 2));
        assert_eq!(em.len(), 4, "windows [0..4) closed by watermark 4.5 min");
    }

    #[test]
    fn snapshot_and_restore_continue_identically() {
        let spec = WindowSpec::tumbling(MIN);
        let mut a = PartitionEngine::new(spec, 2 * MIN);
        let p = pair("BTC/USD");
        let mut seen_log = Vec::new();
        for t in 0..50 {
            a.apply(p, t * 7_000_000, t as f64);
            if t == 25 {
                a.take_emissions(Mode::Update);
                seen_log.extend(
                    a.take_new_seen()
                        .into_iter()
                        .flat_map(|(p, ts)| ts.into_iter().map(move |t| (p, t))),
                );
                let snap = a.snapshot();
                let mut b =
                    PartitionEngine::restore(spec, 2 * MIN, &snap, seen_log.clone()).unwrap();
                // The restored duplicate log still knows what was applied.
                assert_eq!(b.clone().apply(p, 25 * 7_000_000, 0.0), Applied::Duplicate);
                for u in 26..50 {
                    b.apply(p, u * 7_000_000, u as f64);
                }
                let mut rest = a.clone();
                for u in 26..50 {
                    rest.apply(p, u * 7_000_000, u as f64);
                }
                assert_eq!(
                    rest.take_emissions(Mode::Append),
                    b.take_emissions(Mode::Append)
                );
                assert_eq!(rest.snapshot(), b.snapshot());
                return;
            }
        }
    }
}
