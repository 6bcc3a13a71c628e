//! The engine's unit tests: one spec as before slicing, several specs, and states from before.

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
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(5 * MIN)), 10 * MIN);
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
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(5 * MIN)), 10 * MIN);
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
        Applied::Late {
            watermark: 6 * MIN,
            missed: vec![Missed {
                spec: WindowSpec::tumbling(5 * MIN),
                closed: 1,
                of: 1
            }],
            applied: false
        }
    );
    // Exactly at the watermark: window [5, 10) is open (end 10 > 6).
    assert_eq!(e.apply(p, 6 * MIN, 9.0), Applied::Accepted);
    // A window ending exactly at the watermark is closed.
    e.advance_to(10 * MIN);
    assert!(matches!(e.apply(p, 9 * MIN, 1.0), Applied::Late { .. }));
}

#[test]
fn sliding_partly_late_applies_to_open_windows_only() {
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::sliding(10 * MIN, 5 * MIN)), 0);
    let p = pair("SOL/USD");
    e.apply(p, 11 * MIN, 1.0); // watermark 11
                               // 7 min is in [0,10) (closed) and [5,15) (open).
    assert_eq!(
        e.apply(p, 7 * MIN, 2.0),
        Applied::Late {
            watermark: 11 * MIN,
            missed: vec![Missed {
                spec: WindowSpec::sliding(10 * MIN, 5 * MIN),
                closed: 1,
                of: 2
            }],
            applied: true
        }
    );
    let em = e.take_emissions(Mode::Append);
    assert!(em.iter().all(|x| x.is_final));
}

#[test]
fn idle_advance_closes_the_last_windows() {
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(MIN)), 10 * MIN);
    e.apply(pair("BTC/USD"), 30 * MIN + 5, 1.0);
    assert!(e.take_emissions(Mode::Append).is_empty());
    e.advance_to(31 * MIN);
    let em = e.take_emissions(Mode::Append);
    assert_eq!(em.len(), 1);
    assert!(em[0].is_final);
    assert_eq!(e.slices_held(), 0);
}

#[test]
fn append_mode_emits_each_window_once() {
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(MIN)), 0);
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
    let mut a = PartitionEngine::new(Specs::one(spec), 2 * MIN);
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
                PartitionEngine::restore(Specs::one(spec), 2 * MIN, &snap, seen_log.clone())
                    .unwrap();
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

#[test]
fn one_update_feeds_every_spec_and_lateness_is_per_spec() {
    let specs = Specs::new(vec![
        WindowSpec::tumbling(MIN),
        WindowSpec::tumbling(5 * MIN),
        WindowSpec::sliding(10 * MIN, MIN),
    ]);
    assert_eq!(specs.slice_us(), MIN);
    let mut e = PartitionEngine::new(specs, 0);
    let p = pair("BTC/USD");
    for (t, r) in [(30, 1.0), (90, 2.0), (150, 4.0)] {
        assert_eq!(e.apply(p, t * 1_000_000, r), Applied::Accepted);
    }
    // Watermark 150 s: [0,1m) and [1m,2m) of `1m` closed, and the `10m/1m` windows ending then.
    let em = e.take_emissions(Mode::Append);
    let got: Vec<_> = em
        .iter()
        .map(|x| (x.spec.label(), x.start / MIN, x.agg.count))
        .collect();
    let expect: Vec<(String, i64, u64)> = vec![
        ("1m".into(), 0, 1),
        ("1m".into(), 1, 1),
        ("10m/1m".into(), -9, 1),
        ("10m/1m".into(), -8, 2),
    ];
    assert_eq!(got, expect);
    // 50 s is late for `1m` (its window closed), on time for `5m` and for `10m/1m` windows
    // ending after 150 s.
    match e.apply(p, 50_000_000, 8.0) {
        Applied::Late {
            missed, applied, ..
        } => {
            assert!(applied);
            assert_eq!(missed.len(), 2, "{missed:?}");
            assert_eq!(
                (missed[0].spec.label(), missed[0].closed, missed[0].of),
                ("1m".into(), 1, 1)
            );
            // 10m/1m windows covering 50 s end at 1m..10m: the one ending at 1m and 2m closed.
            assert_eq!(
                (missed[1].spec.label(), missed[1].closed, missed[1].of),
                ("10m/1m".into(), 2, 10)
            );
        }
        other => panic!("{other:?}"),
    }
    e.advance_to(100 * MIN);
    let em = e.take_emissions(Mode::Append);
    let five: Vec<_> = em.iter().filter(|x| x.spec.size_us == 5 * MIN).collect();
    assert_eq!(five.len(), 1);
    assert_eq!((five[0].agg.count, five[0].agg.total()), (4, 15.0));
    let sliding: Vec<_> = em.iter().filter(|x| x.spec.size_us == 10 * MIN).collect();
    // Windows ending 3m..12m hold something; the late update counts in those ending 3m..10m
    // (the ones open when it arrived), not in those ending 1m and 2m (emitted before, without it).
    let ends: Vec<i64> = sliding.iter().map(|x| x.end / MIN).collect();
    assert_eq!(ends, (3..=12).collect::<Vec<_>>());
    for w in &sliding {
        let expect = [30, 90, 150, 50]
            .iter()
            .filter(|t| (w.start..w.end).contains(&(*t * 1_000_000)))
            .count();
        assert_eq!(
            w.agg.count as usize,
            expect,
            "window ending {}",
            w.end / MIN
        );
    }
    assert_eq!(e.slices_held(), 0, "everything closed is dropped");
}

#[test]
fn sliding_windows_cost_one_slice_per_update() {
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::sliding(10 * MIN, 1_000_000)), MIN);
    let p = pair("ETH/USD");
    for t in 0..600 {
        e.apply(p, t * 1_000_000, 1.0);
    }
    assert_eq!(
        e.slices_held(),
        600,
        "one slice per second, not 600 windows per update"
    );
    let em = e.take_emissions(Mode::Update);
    // Every window holding an update since the last emission, each with its count.
    assert_eq!(em.len(), 1199);
    let full = em.iter().find(|x| x.start == 0).unwrap();
    assert_eq!(full.agg.count, 600);
    assert!(e.take_emissions(Mode::Update).is_empty(), "nothing changed");
}

#[test]
fn a_state_from_before_slicing_goes_on() {
    // The one spec's open windows as the engine before slicing stored them.
    let spec = WindowSpec::sliding(10 * MIN, 5 * MIN);
    let mut old = Agg::new(6 * MIN, 2.0);
    old.add(7 * MIN, 4.0);
    let snap: Snapshot = serde_json::from_str(&format!(
        r#"{{"max_event":{},"watermark":{},"windows":[["BTC/USD",0,{}],["BTC/USD",{},{}]]}}"#,
        7 * MIN,
        7 * MIN,
        serde_json::to_string(&old).unwrap(),
        5 * MIN,
        serde_json::to_string(&old).unwrap(),
    ))
    .unwrap();
    let mut e = PartitionEngine::restore(Specs::one(spec), 0, &snap, Vec::new()).unwrap();
    e.apply(pair("BTC/USD"), 8 * MIN, 10.0);
    e.advance_to(30 * MIN);
    let em = e.take_emissions(Mode::Append);
    let got: Vec<_> = em
        .iter()
        .map(|x| (x.start / MIN, x.agg.count, x.agg.total()))
        .collect();
    assert_eq!(got, vec![(0, 3, 16.0), (5, 3, 16.0)]);
    assert_eq!(e.slices_held(), 0);
}

#[test]
fn allowed_lateness_refires_closed_windows_with_revisions() {
    let p = pair("BTC/USD");
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(MIN)), 0)
        .with_allowed_lateness(2 * MIN);
    e.apply(p, 10_000_000, 1.0);
    e.apply(p, 70_000_000, 2.0); // closes [0, 1m)
    let em = e.take_emissions(Mode::Append);
    assert_eq!(
        em.iter()
            .map(|x| (x.start, x.agg.count, x.revision))
            .collect::<Vec<_>>(),
        vec![(0, 1, 0)]
    );
    // Late for the watermark, within the allowed lateness: applied, final again.
    assert_eq!(e.apply(p, 20_000_000, 3.0), Applied::Accepted);
    e.apply(p, 30_000_000, 4.0);
    let em = e.take_emissions(Mode::Append);
    assert_eq!(
        em.iter()
            .map(|x| (x.start, x.agg.count, x.agg.total(), x.is_final, x.revision))
            .collect::<Vec<_>>(),
        vec![(0, 3, 8.0, true, 1)]
    );
    e.apply(p, 40_000_000, 1.0);
    let em = e.take_emissions(Mode::Update);
    assert_eq!(
        em.iter().map(|x| (x.start, x.revision)).collect::<Vec<_>>(),
        vec![(0, 2)]
    );
    // The revisions survive a restart: the next one is 3.
    let snap = e.snapshot();
    let mut back =
        PartitionEngine::restore(Specs::one(WindowSpec::tumbling(MIN)), 0, &snap, Vec::new())
            .unwrap()
            .with_allowed_lateness(2 * MIN);
    assert_eq!(back.apply(p, 50_000_000, 1.0), Applied::Accepted);
    let em = back.take_emissions(Mode::Append);
    assert_eq!(
        em.iter()
            .map(|x| (x.start, x.agg.count, x.revision))
            .collect::<Vec<_>>(),
        vec![(0, 5, 3)]
    );
    // The watermark passes the end + 2 minutes: late as before, the window's state dropped.
    e.apply(p, 4 * MIN, 1.0);
    let _ = e.take_emissions(Mode::Append);
    match e.apply(p, 50_000_000, 1.0) {
        Applied::Late { applied, .. } => assert!(!applied),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.slices_held(), 1, "only the open window's slice is kept");
}

#[test]
fn a_larger_allowed_lateness_never_admits_into_pruned_state() {
    let p = pair("BTC/USD");
    let mut e = PartitionEngine::new(Specs::one(WindowSpec::tumbling(MIN)), 0);
    e.apply(p, 10_000_000, 1.0);
    e.apply(p, 3 * MIN, 2.0); // closes [0, 1m) and drops its slice
    let _ = e.take_emissions(Mode::Append);
    let snap = e.snapshot();
    // Restarted with 10 minutes allowed: the window's state is gone, so its update is late, not
    // a "revision" holding only itself.
    let mut e =
        PartitionEngine::restore(Specs::one(WindowSpec::tumbling(MIN)), 0, &snap, Vec::new())
            .unwrap()
            .with_allowed_lateness(10 * MIN);
    match e.apply(p, 20_000_000, 5.0) {
        Applied::Late { applied, .. } => assert!(!applied),
        other => panic!("{other:?}"),
    }
    // A window closed after the restart is admitted within the 10 minutes.
    e.apply(p, 5 * MIN, 1.0);
    let _ = e.take_emissions(Mode::Append);
    assert_eq!(e.apply(p, 3 * MIN + 1, 7.0), Applied::Accepted);
    let em = e.take_emissions(Mode::Append);
    assert_eq!(
        em.iter()
            .map(|x| (x.start, x.agg.count, x.revision))
            .collect::<Vec<_>>(),
        vec![(3 * MIN, 2, 1)]
    );
}
