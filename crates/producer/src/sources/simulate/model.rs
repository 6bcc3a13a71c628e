//! The built-in simulator: random-walk rates for a set of pairs, so the pipeline runs with no API
//! key and no network. Pure: the caller passes the clock, so runs are reproducible with a seed.
//!
//! Event times are unique per pair: each pair has a clock that advances at least 2 µs per event
//! on even microseconds. Realism for the aggregator comes from two options:
//! - `jitter`: each event is *released* (published) up to `jitter` after its event time, so
//!   events of a pair arrive out of order within that bound; the producer stamps `received_at`
//!   at the release (a feed that delivers an update late: the hold is the network's);
//! - `late_fraction`: that fraction of events carry a time `late_by` in the past (on odd
//!   microseconds, so still unique) and are released at once: they arrive after newer events,
//!   later than a watermark shorter than `late_by` allows.

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use chrono::{DateTime, Utc};
use common::{AssetId, Pair, RateUpdate};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const BASES: [&str; 12] = [
    "BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "LTC", "AVAX", "LINK", "TRX", "BCH",
];
const QUOTES: [&str; 6] = ["USD", "EUR", "GBP", "JPY", "USDT", "CHF"];

/// `n` distinct, plausible pairs: BTC/USD, ETH/USD, ... then other quotes, then synthetic bases.
pub fn generate_pairs(n: usize) -> Vec<Pair> {
    let mut out = Vec::with_capacity(n);
    let asset = |s: &str| AssetId::parse_field(s, "pair").expect("built-in asset ids are valid");
    'outer: for q in QUOTES {
        for b in BASES {
            if out.len() == n {
                break 'outer;
            }
            out.push(Pair::new(asset(b), asset(q)));
        }
    }
    let mut i = 0;
    while out.len() < n {
        out.push(Pair::new(asset(&format!("SIM{i}")), asset("USD")));
        i += 1;
    }
    out
}

/// Simulator options.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub pairs: Vec<Pair>,
    pub seed: u64,
    pub jitter: Duration,
    pub late_fraction: f64,
    pub late_by: Duration,
    /// Fraction (0 to 1) of events published twice (the copy a little later).
    pub duplicate_fraction: f64,
}

#[derive(Debug)]
struct PairState {
    pair: Pair,
    rate: f64,
    /// Last regular event time, µs since the epoch (even).
    last_us: i64,
}

#[derive(Debug, PartialEq)]
struct Pending {
    release_us: i64,
    seq: u64,
    update: RateUpdate,
}

impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release_us, self.seq).cmp(&(other.release_us, other.seq))
    }
}

/// Generates events and holds them until their release time.
#[derive(Debug)]
pub struct Simulator {
    states: Vec<PairState>,
    rng: SmallRng,
    jitter_us: i64,
    late_fraction: f64,
    late_by_us: i64,
    duplicate_fraction: f64,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
}

impl Simulator {
    pub fn new(config: &SimConfig) -> Self {
        assert!(
            !config.pairs.is_empty(),
            "the simulator needs at least one pair"
        );
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let states = config
            .pairs
            .iter()
            .map(|p| PairState {
                pair: *p,
                rate: initial_rate(p, &mut rng),
                last_us: i64::MIN,
            })
            .collect();
        Simulator {
            states,
            rng,
            jitter_us: config.jitter.as_micros() as i64,
            late_fraction: config.late_fraction.clamp(0.0, 1.0),
            // Keep late events on odd microseconds: shift by an even amount, then add 1.
            late_by_us: (config.late_by.as_micros() as i64) & !1,
            duplicate_fraction: config.duplicate_fraction.clamp(0.0, 1.0),
            pending: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Generates one event at time `now` and queues it for release; `received_at` is when the
    /// producer "received" it (the wall clock; equal to `now` unless event time is simulated).
    pub fn generate_at(&mut self, now: DateTime<Utc>, received_at: DateTime<Utc>) {
        self.generate_inner(now, received_at)
    }

    /// Generates one event at wall time `now` and queues it for release.
    pub fn generate(&mut self, now: DateTime<Utc>) {
        self.generate_inner(now, now)
    }

    fn generate_inner(&mut self, now: DateTime<Utc>, received_at: DateTime<Utc>) {
        let now_us = now.timestamp_micros() & !1;
        let i = self.rng.random_range(0..self.states.len());
        let s = &mut self.states[i];
        s.rate *= 1.0 + (self.rng.random::<f64>() - 0.5) * 0.002;
        s.last_us = if s.last_us == i64::MIN {
            now_us
        } else {
            now_us.max(s.last_us + 2)
        };
        let late = self.late_fraction > 0.0 && self.rng.random::<f64>() < self.late_fraction;
        let (time_us, release_us) = if late {
            (s.last_us - self.late_by_us + 1, s.last_us)
        } else {
            let delay = if self.jitter_us > 0 {
                self.rng.random_range(0..=self.jitter_us)
            } else {
                0
            };
            (s.last_us, s.last_us + delay)
        };
        let time = DateTime::from_timestamp_micros(time_us).expect("simulated time in range");
        let update = RateUpdate::new(time, s.pair, s.rate, Some(received_at))
            .expect("simulated rate is positive");
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            release_us,
            seq: self.seq,
            update,
        }));
        if self.duplicate_fraction > 0.0 && self.rng.random::<f64>() < self.duplicate_fraction {
            // The same message again, up to 1 ms later (a producer retry, a replay).
            self.seq += 1;
            self.pending.push(Reverse(Pending {
                release_us: release_us + self.rng.random_range(0..1_000),
                seq: self.seq,
                update,
            }));
        }
    }

    /// The next event due for release at wall time `now`, if any.
    pub fn pop_ready(&mut self, now: DateTime<Utc>) -> Option<RateUpdate> {
        let now_us = now.timestamp_micros();
        if self.pending.peek()?.0.release_us <= now_us {
            self.pending.pop().map(|p| p.0.update)
        } else {
            None
        }
    }

    /// Every held event, in release order, without waiting (end of a counted run).
    pub fn drain(&mut self) -> impl Iterator<Item = RateUpdate> + '_ {
        std::iter::from_fn(move || self.pending.pop().map(|p| p.0.update))
    }

    /// Events generated but not yet released.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

fn initial_rate(p: &Pair, rng: &mut SmallRng) -> f64 {
    let base = match p.base.as_str() {
        "BTC" => 60_000.0,
        "ETH" => 3_000.0,
        "SOL" => 150.0,
        "BCH" => 400.0,
        "LTC" => 80.0,
        "AVAX" => 30.0,
        "LINK" => 15.0,
        "DOT" => 7.0,
        _ => 1.0,
    };
    base * rng.random_range(0.9..1.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn config(jitter_ms: u64, late_fraction: f64) -> SimConfig {
        SimConfig {
            pairs: generate_pairs(4),
            seed: 7,
            jitter: Duration::from_millis(jitter_ms),
            late_fraction,
            late_by: Duration::from_secs(900),
            duplicate_fraction: 0.0,
        }
    }

    fn run(sim: &mut Simulator, n: usize) -> Vec<RateUpdate> {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let now = start + chrono::Duration::microseconds(i as i64 * 100);
            sim.generate(now);
            while let Some(u) = sim.pop_ready(now) {
                out.push(u);
            }
        }
        out.extend(sim.drain());
        out
    }

    #[test]
    fn pairs_are_distinct_and_plenty() {
        let p = generate_pairs(100);
        assert_eq!(p.iter().collect::<HashSet<_>>().len(), 100);
        assert_eq!(p[0].to_string(), "BTC/USD");
    }

    #[test]
    fn same_seed_same_stream_and_every_event_released_once() {
        let a = run(&mut Simulator::new(&config(5, 0.05)), 5_000);
        let b = run(&mut Simulator::new(&config(5, 0.05)), 5_000);
        assert_eq!(a, b);
        assert_eq!(a.len(), 5_000);
        let keys: HashSet<_> = a.iter().map(|u| (u.pair, u.time)).collect();
        assert_eq!(keys.len(), 5_000, "event times are unique per pair");
    }

    #[test]
    fn jitter_reorders_within_bound_and_late_events_are_old() {
        let events = run(&mut Simulator::new(&config(5, 0.02)), 20_000);
        let mut max_seen: HashMap<Pair, DateTime<Utc>> = HashMap::new();
        let (mut out_of_order, mut late) = (0, 0);
        for u in &events {
            let m = max_seen.entry(u.pair).or_insert(u.time);
            if u.time < *m {
                let behind = *m - u.time;
                if u.time.timestamp_subsec_micros() % 2 == 1 {
                    late += 1;
                    assert!(behind >= chrono::Duration::seconds(899), "{behind}");
                } else {
                    out_of_order += 1;
                    assert!(behind <= chrono::Duration::milliseconds(5), "{behind}");
                }
            }
            *m = (*m).max(u.time);
        }
        assert!(out_of_order > 100, "{out_of_order}");
        assert!((200..=600).contains(&late), "{late}");
    }

    #[test]
    fn without_jitter_events_come_out_at_once_in_order() {
        let mut sim = Simulator::new(&config(0, 0.0));
        let now = Utc::now();
        sim.generate(now);
        assert!(sim.pop_ready(now).is_some());
        assert_eq!(sim.pending(), 0);
    }

    use std::collections::HashMap;
}
