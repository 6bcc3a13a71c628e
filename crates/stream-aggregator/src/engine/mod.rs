//! The window engine: pure, I/O-free event-time aggregation for the events of one Kafka partition,
//! for several window specs at once, by slicing.
//!
//! Semantics (also in docs/architecture.md):
//! - Windows per pair on event time, UTC, aligned to the epoch, `[start, end)`, for each spec of
//!   [`Specs`]. Tumbling windows have `slide == size`; with a smaller slide an update belongs to
//!   every window covering it.
//! - Watermark = the largest event time seen on the partition minus the allowed lateness, one for
//!   every spec. When the partition has been idle, the caller may advance it with the wall clock
//!   ([`PartitionEngine::advance_to`]). A window is closed once the watermark reaches its end.
//! - Allowed lateness `L` (`--allowed-lateness`, default 0): a window closed by the watermark
//!   still takes updates until the watermark passes its end + `L`; each such update changes the
//!   closed window, which is emitted final again with its revision (1, 2, ...). Windows within
//!   `L` of the watermark are "admitting"; the admission horizon ([`PartitionEngine::admits_from`])
//!   is the watermark minus `L`, and never goes back before state was pruned (a larger `L`
//!   given to an existing state admits more only as the watermark moves on).
//! - An update applies to each of its windows (of every spec) that is still admitting. An update
//!   none of whose windows is admitting is late: not applied, reported. An update some of whose windows are
//!   closed is applied to the open ones and reported per spec that missed windows, so a batch
//!   recomputation can exclude it from exactly the windows that missed it. Lateness is per spec:
//!   an update can be late for `1m` and on time for `1h`.
//! - The first occurrence of a (pair, time) wins; later ones are duplicates and change nothing.
//! - Emissions: in update mode every window changed since the last emission; in append mode only
//!   windows that closed. A window that closes is emitted once more with `is_final`.
//!
//! Slicing (as Flink's sliding-window slicing and the Scotty processor do): an update whose
//! windows are all open is added to the one slice of its pair holding it (width: the gcd of every
//! size and slide, [`Specs`]); windows are assembled from slices only when emitted, with a
//! two-stack sliding aggregation ([`agg::Window`]). So an update costs the same whatever the
//! specs and their size/slide, and the state is the slices inside the largest window plus the
//! watermark's delay. The rare update that is late for some windows is kept apart with the
//! watermark it arrived at, and counted only in the windows open then.

mod agg;
mod emit;
mod specs;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::seen_times::SeenTimes;
use common::Pair;

pub use agg::Agg;
pub use common::window::WindowSpec;
pub use specs::Specs;

/// Of one spec, the windows an update missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    pub spec: WindowSpec,
    /// Its windows that had closed.
    pub closed: u32,
    /// Its windows covering the update.
    pub of: u32,
}

impl Missed {
    /// Applied to the spec's other windows.
    pub fn applied(&self) -> bool {
        self.closed < self.of
    }
}

/// What happened to one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied to all its windows.
    Accepted,
    /// Some of its windows had closed: `missed` per spec that missed any; `applied` if it went
    /// into any window at all.
    Late {
        watermark: i64,
        missed: Vec<Missed>,
        applied: bool,
    },
    /// Its (pair, time) was seen before: ignored.
    Duplicate,
}

/// One window result to write and publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emission {
    pub pair: Pair,
    pub spec: WindowSpec,
    pub start: i64,
    pub end: i64,
    pub agg: Agg,
    pub is_final: bool,
    /// 0 for every emission until the window's first final one (the watermark passing its end);
    /// then 1, 2, ... for each final emission an update admitted within the allowed lateness
    /// caused (a window that closed empty is first emitted with 1).
    pub revision: u32,
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
    /// Per pair (text) its slices, each `(start, aggregates as a row)` ([`Agg::row`]).
    #[serde(default)]
    pub slices: Vec<(String, Vec<(i64, agg::Row)>)>,
    /// Updates applied to only some of their windows: (pair text, time, rate, watermark then).
    #[serde(default)]
    pub late: Vec<(String, i64, f64, i64)>,
    /// Open windows of the one spec of a state written before slicing: (pair text, start,
    /// aggregates), kept until they close.
    #[serde(default)]
    pub windows: Vec<(String, i64, Agg)>,
    /// Closed windows emitted again within the allowed lateness: (pair text, spec, start,
    /// revision).
    #[serde(default)]
    pub revisions: Vec<(String, WindowSpec, i64, u32)>,
    /// The admission horizon state was pruned at (absent: the watermark, as before allowed
    /// lateness).
    #[serde(default)]
    pub pruned_to: Option<i64>,
}

/// An update applied to the windows that were open when it arrived (at watermark `arrived`).
#[derive(Debug, Clone, Copy)]
struct LateItem {
    time: i64,
    rate: f64,
    arrived: i64,
}

/// Everything the engine keeps for one pair.
#[derive(Debug, Clone)]
struct PairState {
    pair: Pair,
    /// Slices with updates, sorted by start.
    slices: VecDeque<(i64, Agg)>,
    late: Vec<LateItem>,
    /// Windows of the first spec from a state written before slicing, sorted by start.
    legacy: Vec<(i64, Agg)>,
    /// Times of updates since the last emission (their windows changed).
    dirty: Vec<i64>,
    seen: SeenTimes,
    /// Times accepted since the last [`PartitionEngine::take_new_seen`].
    new_seen: Vec<i64>,
    /// Closed windows emitted again: (spec, start, revision), sorted.
    revisions: Vec<(WindowSpec, i64, u32)>,
    /// Updates admitted into windows already emitted final, since the last emission: (time,
    /// admission horizon then); each such window ending after the horizon is emitted again.
    refire: Vec<(i64, i64)>,
}

impl PairState {
    fn new(pair: Pair) -> Self {
        PairState {
            pair,
            slices: VecDeque::new(),
            late: Vec::new(),
            legacy: Vec::new(),
            dirty: Vec::new(),
            seen: SeenTimes::default(),
            new_seen: Vec::new(),
            revisions: Vec::new(),
            refire: Vec::new(),
        }
    }

    /// The next revision of the closed window of `spec` at `start`.
    fn next_revision(&mut self, spec: WindowSpec, start: i64) -> u32 {
        match self
            .revisions
            .binary_search_by_key(&(spec, start), |(sp, s, _)| (*sp, *s))
        {
            Ok(i) => {
                self.revisions[i].2 += 1;
                self.revisions[i].2
            }
            Err(i) => {
                self.revisions.insert(i, (spec, start, 1));
                1
            }
        }
    }

    /// Adds an update to the slice starting at `start` (updates mostly hit the latest one).
    #[inline]
    fn add(&mut self, start: i64, time: i64, rate: f64) {
        match self.slices.back_mut() {
            Some((s, agg)) if *s == start => agg.add(time, rate),
            Some((s, _)) if *s > start => {
                let i = self.slices.partition_point(|(s, _)| *s < start);
                match self.slices.get_mut(i) {
                    Some((s, agg)) if *s == start => agg.add(time, rate),
                    _ => self.slices.insert(i, (start, Agg::new(time, rate))),
                }
            }
            _ => self.slices.push_back((start, Agg::new(time, rate))),
        }
        if self.dirty.last() != Some(&start) {
            self.dirty.push(start);
        }
    }

    fn is_empty(&self) -> bool {
        self.slices.is_empty()
            && self.late.is_empty()
            && self.legacy.is_empty()
            && self.seen.is_empty()
            && self.new_seen.is_empty()
            && self.revisions.is_empty()
    }
}

/// Engine state of one partition: per pair its slices and recently seen event times.
#[derive(Debug, Clone)]
pub struct PartitionEngine {
    specs: Specs,
    lateness: i64,
    /// Allowed lateness (µs): how long after the watermark closed a window it still takes updates.
    allowed: i64,
    /// The admission horizon state was last pruned at: never admit before it.
    pruned_to: i64,
    max_event: Option<i64>,
    watermark: i64,
    /// The watermark at the last emission: windows ending by it were emitted final.
    emitted_to: i64,
    pairs: Vec<PairState>,
    index: HashMap<Pair, usize, FxBuildHasher>,
    /// Index of the pair of the previous update (consecutive updates are mostly of one pair).
    last: usize,
}

impl PartitionEngine {
    /// An empty engine; `lateness` is the watermark delay in microseconds.
    pub fn new(specs: Specs, lateness: i64) -> Self {
        PartitionEngine {
            specs,
            lateness,
            allowed: 0,
            pruned_to: i64::MIN,
            max_event: None,
            watermark: i64::MIN,
            emitted_to: i64::MIN,
            pairs: Vec::new(),
            index: HashMap::default(),
            last: 0,
        }
    }

    /// With allowed lateness `allowed` (µs): closed windows take updates until the watermark
    /// passes their end + `allowed`.
    pub fn with_allowed_lateness(mut self, allowed: i64) -> Self {
        self.allowed = allowed.max(0);
        self
    }

    pub fn specs(&self) -> &Specs {
        &self.specs
    }

    /// Windows ending after this still take updates: the watermark minus the allowed lateness,
    /// never before the horizon state was pruned at.
    pub fn admits_from(&self) -> i64 {
        self.watermark
            .saturating_sub(self.allowed)
            .max(self.pruned_to)
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn max_event(&self) -> Option<i64> {
        self.max_event
    }

    /// Slices (and windows from before slicing) held.
    pub fn slices_held(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.slices.len() + p.legacy.len())
            .sum()
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

    /// Applies one update.
    pub fn apply(&mut self, pair: Pair, time: i64, rate: f64) -> Applied {
        let wm = self.admits_from();
        // Every window holding `time` admits it while the horizon is before the earliest end.
        let on_time = time >= wm || self.specs.first_end(time) > wm;
        if !on_time && self.specs.last_end(time) <= wm {
            return Applied::Late {
                watermark: wm,
                missed: self.missed(time, wm),
                applied: false,
            };
        }
        let slice = self.specs.slice_of(time);
        let i = self.pair_index(pair);
        let state = &mut self.pairs[i];
        if !state.seen.insert(time) {
            return Applied::Duplicate;
        }
        state.new_seen.push(time);
        let outcome = if on_time {
            state.add(slice, time, rate);
            Applied::Accepted
        } else {
            let arrived = wm;
            state.late.push(LateItem {
                time,
                rate,
                arrived,
            });
            state.dirty.push(time);
            Applied::Late {
                watermark: wm,
                missed: self.missed(time, wm),
                applied: true,
            }
        };
        // Admitted into a window emitted final already (allowed lateness): emitted again.
        if self.allowed > 0 && self.specs.first_end(time) <= self.emitted_to {
            self.pairs[i].refire.push((time, wm));
        }
        self.max_event = Some(self.max_event.map_or(time, |m| m.max(time)));
        self.advance_to(time.saturating_sub(self.lateness));
        outcome
    }

    /// Per spec, the windows holding `time` that have closed at `wm`.
    fn missed(&self, time: i64, wm: i64) -> Vec<Missed> {
        self.specs
            .list()
            .iter()
            .map(|spec| Missed {
                spec: *spec,
                closed: specs::closed_windows(spec, time, wm),
                of: spec.windows_per_event() as u32,
            })
            .filter(|m| m.closed > 0)
            .collect()
    }

    /// Raises the watermark to `wm` if that is later (it never goes back).
    pub fn advance_to(&mut self, wm: i64) {
        self.watermark = self.watermark.max(wm);
    }

    /// Emissions due now: changed windows (update mode) and windows the watermark closed since
    /// the last emission (final). State no open window needs is dropped. Ordered: open ones,
    /// then final ones, each by (pair, spec, start).
    pub fn take_emissions(&mut self, mode: Mode) -> Vec<Emission> {
        let (wm, from, admits) = (self.watermark, self.emitted_to, self.admits_from());
        let mut out = Vec::new();
        for state in &mut self.pairs {
            emit::emit_pair(state, &self.specs, from, wm, mode, &mut out);
        }
        out.sort_unstable_by_key(|e| (e.is_final, e.pair, e.spec, e.start));
        if wm == from {
            return out; // nothing closed since the last emission: nothing to drop either
        }
        self.emitted_to = wm;
        self.pruned_to = admits;
        let horizon = self.seen_horizon();
        for state in &mut self.pairs {
            emit::prune(state, &self.specs, admits, horizon);
        }
        let before = self.pairs.len();
        self.pairs.retain(|s| !s.is_empty());
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

    /// Times older than this can be dropped from the duplicate log: every window holding them
    /// has closed, so they are late before they are looked up.
    pub fn seen_horizon(&self) -> i64 {
        self.admits_from().saturating_sub(self.specs.max_size_us())
    }

    /// The slices, late updates and watermark, for storing with the offsets.
    pub fn snapshot(&self) -> Snapshot {
        let mut pairs: Vec<&PairState> = self.pairs.iter().collect();
        pairs.sort_unstable_by_key(|s| s.pair);
        let mut snap = Snapshot {
            max_event: self.max_event,
            watermark: self.watermark,
            slices: Vec::new(),
            late: Vec::new(),
            windows: Vec::new(),
            revisions: Vec::new(),
            pruned_to: Some(self.pruned_to),
        };
        for s in pairs {
            let name = s.pair.to_string();
            if !s.slices.is_empty() {
                let rows = s.slices.iter().map(|(t, a)| (*t, a.row())).collect();
                snap.slices.push((name.clone(), rows));
            }
            snap.late.extend(
                s.late
                    .iter()
                    .map(|l| (name.clone(), l.time, l.rate, l.arrived)),
            );
            snap.windows
                .extend(s.legacy.iter().map(|(t, a)| (name.clone(), *t, *a)));
            snap.revisions.extend(
                s.revisions
                    .iter()
                    .map(|(spec, start, r)| (name.clone(), *spec, *start, *r)),
            );
        }
        snap
    }

    /// Rebuilds an engine from a snapshot (taken right after an emission) and the duplicate
    /// log's (pair, time) entries (allowed lateness: [`PartitionEngine::with_allowed_lateness`]). Windows of a snapshot from before slicing belong to the
    /// first spec.
    pub fn restore(
        specs: Specs,
        lateness: i64,
        snapshot: &Snapshot,
        seen: impl IntoIterator<Item = (Pair, i64)>,
    ) -> Result<Self, common::ModelError> {
        let mut e = PartitionEngine::new(specs, lateness);
        e.max_event = snapshot.max_event;
        e.watermark = snapshot.watermark;
        e.emitted_to = snapshot.watermark;
        // A state from before allowed lateness was pruned at its watermark.
        e.pruned_to = snapshot.pruned_to.unwrap_or(snapshot.watermark);
        for (p, rows) in &snapshot.slices {
            let i = e.pair_index(p.parse()?);
            let slices = &mut e.pairs[i].slices;
            slices.extend(rows.iter().map(|(start, row)| (*start, Agg::from_row(row))));
            slices.make_contiguous().sort_unstable_by_key(|(s, _)| *s);
        }
        for (p, time, rate, arrived) in &snapshot.late {
            let i = e.pair_index(p.parse()?);
            e.pairs[i].late.push(LateItem {
                time: *time,
                rate: *rate,
                arrived: *arrived,
            });
        }
        for (p, spec, start, r) in &snapshot.revisions {
            let i = e.pair_index(p.parse()?);
            let revisions = &mut e.pairs[i].revisions;
            let at = revisions.partition_point(|(sp, s, _)| (sp, s) < (spec, start));
            revisions.insert(at, (*spec, *start, *r));
        }
        for (p, start, agg) in &snapshot.windows {
            let i = e.pair_index(p.parse()?);
            let legacy = &mut e.pairs[i].legacy;
            let at = legacy.partition_point(|(s, _)| s < start);
            legacy.insert(at, (*start, *agg));
        }
        // Every logged time is kept (the log holds what the writer's horizon, allowed lateness
        // included, kept); the next emission prunes by this run's horizon.
        for (p, t) in seen {
            let i = e.pair_index(p);
            e.pairs[i].seen.insert(t);
        }
        Ok(e)
    }
}
