//! Property test: for random sets of window specs and random streams (several pairs,
//! out-of-order arrival within and beyond the watermark, duplicates), the sliced engine's final
//! windows of every spec equal a naive computation that keeps each window's members explicitly,
//! and the late updates (per spec, with the windows they missed) are exactly those the definition
//! says; with an allowed lateness, closed windows take the updates within it and are emitted
//! final again, each time with the next revision, their last emission equal to the naive one.

use std::collections::{BTreeMap, HashSet};

use common::Pair;
use proptest::prelude::*;
use stream_aggregator::engine::{Applied, Mode, PartitionEngine, Specs, WindowSpec};

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

/// Final windows by (spec, pair, start).
type Windows = BTreeMap<(WindowSpec, usize, i64), Expected>;
/// Per late update (index): the specs that missed windows, how many, and whether it was
/// applied anywhere.
type Late = Vec<(usize, Vec<(WindowSpec, u32)>, bool)>;

/// Starts of the windows of `spec` covering `t`, by brute force.
fn covering(spec: &WindowSpec, t: i64) -> Vec<i64> {
    (-200..=200)
        .map(|k| (t.div_euclid(spec.slide_us) + k) * spec.slide_us)
        .filter(|s| *s <= t && t < s + spec.size_us)
        .collect()
}

/// The naive model: one watermark recomputed from scratch, windows as explicit member lists; a
/// window takes updates until the watermark passes its end + `allowed`.
fn naive(specs: &[WindowSpec], lateness: i64, allowed: i64, events: &[Ev]) -> (Windows, Late) {
    let mut max_event: Option<i64> = None;
    let mut seen = HashSet::new();
    let mut members: BTreeMap<(WindowSpec, usize, i64), Vec<(i64, f64)>> = BTreeMap::new();
    let mut late = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let wm = max_event.map_or(i64::MIN, |m| m - lateness - allowed);
        let mut open = Vec::new();
        let mut missed = Vec::new();
        for spec in specs {
            let windows = covering(spec, e.time);
            let closed = windows.iter().filter(|s| *s + spec.size_us <= wm).count() as u32;
            if closed > 0 {
                missed.push((*spec, closed));
            }
            open.extend(
                windows
                    .into_iter()
                    .filter(|s| s + spec.size_us > wm)
                    .map(|s| (*spec, s)),
            );
        }
        if open.is_empty() {
            late.push((i, missed, false));
            continue;
        }
        if !seen.insert((e.pair, e.time)) {
            continue;
        }
        if !missed.is_empty() {
            late.push((i, missed, true));
        }
        for (spec, s) in open {
            members
                .entry((spec, e.pair, s))
                .or_default()
                .push((e.time, e.rate));
        }
        max_event = Some(max_event.map_or(e.time, |m| m.max(e.time)));
    }
    let expected = members
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
    (expected, late)
}

/// Runs the engine over `events` (emitting every `every` updates, and once more after
/// everything closed): its final windows and late updates.
fn run(
    specs: &[WindowSpec],
    (lateness, allowed): (i64, i64),
    events: &[Ev],
    mode: Mode,
    every: usize,
) -> Result<(Windows, Late), TestCaseError> {
    let pairs: Vec<Pair> = PAIRS.iter().map(|p| p.parse().unwrap()).collect();
    let mut engine =
        PartitionEngine::new(Specs::new(specs.to_vec()), lateness).with_allowed_lateness(allowed);
    let mut late = Vec::new();
    let mut finals = BTreeMap::new();
    let mut revisions: BTreeMap<(WindowSpec, usize, i64), u32> = BTreeMap::new();
    let mut take = |engine: &mut PartitionEngine, finals: &mut Windows| {
        for em in engine.take_emissions(mode) {
            if !em.is_final {
                continue;
            }
            let idx = pairs.iter().position(|p| *p == em.pair).unwrap();
            let got = Expected {
                count: em.agg.count,
                sum: em.agg.total(),
                min: em.agg.min,
                max: em.agg.max,
                first_rate: em.agg.first_rate,
                last_rate: em.agg.last_rate,
            };
            let key = (em.spec, idx, em.start);
            let again = finals.insert(key, got).is_some();
            let want = match revisions.get(&key) {
                None if again => return Err(TestCaseError::fail("final twice")),
                // A window that closed empty is first emitted by a late firing (revision 1).
                None if allowed > 0 => em.revision.min(1),
                None => 0,
                Some(r) => r + 1,
            };
            if again && allowed == 0 {
                return Err(TestCaseError::fail("final again without allowed lateness"));
            }
            if em.revision != want {
                return Err(TestCaseError::fail(format!(
                    "revision {} of {key:?}, expected {want}",
                    em.revision
                )));
            }
            revisions.insert(key, em.revision);
        }
        Ok(())
    };
    for (i, e) in events.iter().enumerate() {
        if let Applied::Late {
            missed, applied, ..
        } = engine.apply(pairs[e.pair], e.time, e.rate)
        {
            let missed = missed.iter().map(|m| (m.spec, m.closed)).collect();
            late.push((i, missed, applied));
        }
        if i % every == 0 {
            take(&mut engine, &mut finals)?;
        }
    }
    engine.advance_to(i64::MAX);
    take(&mut engine, &mut finals)?;
    prop_assert_eq!(engine.slices_held(), 0);
    Ok((finals, late))
}

fn check(
    specs: &[WindowSpec],
    (lateness, allowed): (i64, i64),
    events: &[Ev],
) -> Result<(), TestCaseError> {
    let (expected, late_expected) = naive(specs, lateness, allowed, events);
    for (mode, every) in [(Mode::Update, 17), (Mode::Append, 5), (Mode::Append, 1000)] {
        let (finals, late) = run(specs, (lateness, allowed), events, mode, every)?;
        prop_assert_eq!(&late, &late_expected);
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

/// No allowed lateness half the time (today's behaviour), else up to 90 s.
fn allowed() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), (1i64..90).prop_map(|s| s * SEC)]
}

/// One to three specs: sizes 2..60 s, slides dividing them.
fn specs() -> impl Strategy<Value = Vec<WindowSpec>> {
    const SIZES: [i64; 6] = [2, 5, 10, 20, 30, 60];
    prop::collection::vec((0usize..6, 1i64..7), 1..4).prop_map(|v| {
        let mut out: Vec<WindowSpec> = v
            .into_iter()
            .map(|(i, d)| {
                let size = SIZES[i];
                let slide = (1..=d)
                    .rev()
                    .find(|k| size % k == 0)
                    .map_or(size, |k| size / k);
                WindowSpec::sliding(size * SEC, slide * SEC)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tumbling_equals_naive_batch(events in stream(), lateness in 0i64..60, allowed in allowed()) {
        check(&[WindowSpec::tumbling(10 * SEC)], (lateness * SEC, allowed), &events)?;
    }

    #[test]
    fn sliding_equals_naive_batch(events in stream(), lateness in 0i64..60, allowed in allowed()) {
        check(&[WindowSpec::sliding(20 * SEC, 5 * SEC)], (lateness * SEC, allowed), &events)?;
    }

    #[test]
    fn many_specs_equal_naive_batch(specs in specs(), events in stream(), lateness in 0i64..60, allowed in allowed()) {
        check(&specs, (lateness * SEC, allowed), &events)?;
    }
}
