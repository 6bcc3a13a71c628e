//! Property test: for random streams (several pairs, out-of-order arrival within and beyond the
//! watermark, duplicates), the engine's final windows equal a naive batch computation over the
//! events it accepted, and the late events are exactly those the definition says.

use std::collections::{BTreeMap, HashSet};

use common::Pair;
use proptest::prelude::*;
use stream_aggregator::engine::{Applied, Mode, PartitionEngine, WindowSpec};

const SEC: i64 = 1_000_000;
const PAIRS: [&str; 3] = ["BTC/USD", "ETH/USD", "SOL/EUR"];

#[derive(Debug, Clone, Copy)]
struct Ev {
    pair: usize,
    time: i64,
    rate: f64,
}

/// A stream that mostly moves forward, with jitter back in time, occasional far-late events and
/// exact duplicates of earlier events.
fn stream() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0usize..3, 0i64..8, -30i64..5, 1u32..1000, 0u8..10), 1..300).prop_map(
        |steps| {
            let mut clock = 1_000 * SEC;
            let mut out: Vec<Ev> = Vec::new();
            for (pair, advance, jitter, rate, kind) in steps {
                clock += advance * SEC;
                let ev = match kind {
                    // A duplicate of an earlier event.
                    0 if !out.is_empty() => out[(rate as usize) % out.len()],
                    // Far in the past: late for most watermarks.
                    1 => Ev {
                        pair,
                        time: clock - 120 * SEC + jitter * SEC,
                        rate: rate as f64,
                    },
                    _ => Ev {
                        pair,
                        time: clock + jitter * SEC + (rate as i64 % 1000),
                        rate: rate as f64 / 7.0,
                    },
                };
                out.push(ev);
            }
            out
        },
    )
}

#[derive(Debug, Clone, PartialEq)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    first_rate: f64,
    last_rate: f64,
}

type Windows = BTreeMap<(usize, i64), Expected>;

/// The naive model: watermark recomputed from scratch, windows as explicit member lists. Returns
/// the final windows and the indices of the late events.
fn naive(spec: WindowSpec, lateness: i64, events: &[Ev]) -> (Windows, Vec<usize>) {
    let mut max_event: Option<i64> = None;
    let mut seen = HashSet::new();
    let mut members: BTreeMap<(usize, i64), Vec<(i64, f64)>> = BTreeMap::new();
    let mut late_expected = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let wm = max_event.map_or(i64::MIN, |m| m - lateness);
        let windows: Vec<i64> = (-100..=100)
            .map(|k| (e.time.div_euclid(spec.slide_us) + k) * spec.slide_us)
            .filter(|s| *s <= e.time && e.time < s + spec.size_us)
            .collect();
        let open: Vec<i64> = windows
            .iter()
            .copied()
            .filter(|s| s + spec.size_us > wm)
            .collect();
        if open.is_empty() {
            late_expected.push(i);
            continue;
        }
        if !seen.insert((e.pair, e.time)) {
            continue;
        }
        for s in open {
            members
                .entry((e.pair, s))
                .or_default()
                .push((e.time, e.rate));
        }
        max_event = Some(max_event.map_or(e.time, |m| m.max(e.time)));
    }
    let expected: BTreeMap<(usize, i64), Expected> = members
        .into_iter()
        .map(|(k, v)| {
            let first = v.iter().min_by_key(|(t, _)| *t).unwrap().1;
            let last = v.iter().max_by_key(|(t, _)| *t).unwrap().1;
            let e = Expected {
                count: v.len() as u64,
                sum: v.iter().map(|(_, r)| r).sum(),
                min: v.iter().map(|(_, r)| *r).fold(f64::INFINITY, f64::min),
                max: v.iter().map(|(_, r)| *r).fold(f64::NEG_INFINITY, f64::max),
                first_rate: first,
                last_rate: last,
            };
            (k, e)
        })
        .collect();
    (expected, late_expected)
}

fn check(spec: WindowSpec, lateness: i64, events: &[Ev]) -> Result<(), TestCaseError> {
    let pairs: Vec<Pair> = PAIRS.iter().map(|p| p.parse().unwrap()).collect();
    let (expected, late_expected) = naive(spec, lateness, events);
    for mode in [Mode::Update, Mode::Append] {
        let mut engine = PartitionEngine::new(spec, lateness);
        let mut late_got = Vec::new();
        let mut finals = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            if let Applied::Late { .. } = engine.apply(pairs[e.pair], e.time, e.rate) {
                late_got.push(i);
            }
            if i % 17 == 0 {
                for em in engine.take_emissions(mode) {
                    if em.is_final {
                        let idx = pairs.iter().position(|p| *p == em.pair).unwrap();
                        prop_assert!(
                            finals.insert((idx, em.start), em.agg).is_none(),
                            "final twice"
                        );
                    }
                }
            }
        }
        engine.advance_to(i64::MAX);
        for em in engine.take_emissions(mode) {
            prop_assert!(em.is_final);
            let idx = pairs.iter().position(|p| *p == em.pair).unwrap();
            prop_assert!(
                finals.insert((idx, em.start), em.agg).is_none(),
                "final twice"
            );
        }
        prop_assert_eq!(&late_got, &late_expected);
        prop_assert_eq!(finals.len(), expected.len());
        for (k, want) in &expected {
            let got = finals.get(k).expect("window present");
            prop_assert_eq!(got.count, want.count);
            prop_assert_eq!((got.min, got.max), (want.min, want.max));
            prop_assert_eq!(
                (got.first_rate, got.last_rate),
                (want.first_rate, want.last_rate)
            );
            prop_assert!(
                (got.sum - want.sum).abs() <= 1e-9 * want.sum.abs().max(1.0),
                "sum {} vs {}",
                got.sum,
                want.sum
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tumbling_equals_naive_batch(events in stream(), lateness in 0i64..60) {
        check(WindowSpec::tumbling(10 * SEC), lateness * SEC, &events)?;
    }

    #[test]
    fn sliding_equals_naive_batch(events in stream(), lateness in 0i64..60) {
        check(WindowSpec::sliding(20 * SEC, 5 * SEC), lateness * SEC, &events)?;
    }
}
