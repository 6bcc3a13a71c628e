//! stream-aggregator on the real broker and MariaDB: 50,000 updates with jitter, duplicates and
//! late events; SIGKILL and restart several times mid-run; the final `stream_agg` equals both the
//! batch recomputation from the same events and an uninterrupted run, row for row. Two instances
//! in one group give the same result too. SIGKILLed while holding its partitions and restarted at
//! once, it drains within 60 s. One group computing several specs (`--windows`) beside another
//! group on the same database: every group's and spec's rows equal the batch recomputation of
//! that spec, with the late updates of that spec excluded from exactly the windows they missed.
//! The duplicate log is cut as the watermark passes it, by a restarted instance too (what a killed
//! one left), and it is empty once the windows have closed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Command, Stdio},
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::{window::WindowSpec, Pair, RateUpdate};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use testkit::{
    consumer_command,
    services::{kill_when_ready_and_restart, log_dir, tail},
    TestDb, TestKafka,
};

const PAIRS: [&str; 5] = ["BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "XRP/USD"];
const WINDOW_S: i64 = 10;

/// 50,000 updates: 10 ms apart per pair, published with up to 300 ms of jitter, 2% duplicates
/// and 1% late by a minute (the watermark allows 5 s).
fn stream() -> Vec<RateUpdate> {
    let mut rng = SmallRng::seed_from_u64(11);
    let start = DateTime::from_timestamp(1_722_864_000, 0).unwrap();
    let mut events: Vec<(i64, RateUpdate)> = Vec::new();
    for i in 0..48_500i64 {
        let pair: Pair = PAIRS[(i % 5) as usize].parse().unwrap();
        let t = start
            + chrono::Duration::milliseconds((i / 5) * 10)
            + chrono::Duration::microseconds(i % 5);
        let u = RateUpdate::new(t, pair, rng.random_range(100.0..200.0), Some(Utc::now())).unwrap();
        let mut order = t.timestamp_micros() + rng.random_range(0..300_000);
        if rng.random_bool(0.01) {
            let late = RateUpdate {
                time: u.time - chrono::Duration::seconds(60),
                ..u
            };
            events.push((order, late));
            continue;
        }
        events.push((order, u));
        if rng.random_bool(0.02) {
            order += rng.random_range(0..1_000_000);
            events.push((order, u));
        }
    }
    events.sort_by_key(|(o, _)| *o);
    events.into_iter().map(|(_, u)| u).take(50_000).collect()
}

fn messages(events: &[RateUpdate]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .map(|u| (u.key(), u.to_json().into_bytes()))
        .collect()
}

fn aggregator(db: &TestDb, kafka: &TestKafka, topic: &str, group: &str, args: &[&str]) -> Command {
    let mut cmd = aggregator_of(db, kafka, topic, group, &["--window", "10s"]);
    cmd.args(args);
    cmd
}

/// The aggregator of `group` computing the windows of `windows` (its window arguments).
fn aggregator_of(
    db: &TestDb,
    kafka: &TestKafka,
    topic: &str,
    group: &str,
    windows: &[&str],
) -> Command {
    let bin = env!("CARGO_BIN_EXE_stream-aggregator");
    let mut cmd = consumer_command(bin, db, kafka, topic, group);
    cmd.args(["--output-topic", &format!("{topic}-out")])
        .args(windows)
        .args(["--watermark", "5s", "--idle-timeout", "3s"])
        .args(["--flush-interval", "100ms"]);
    cmd
}

fn finish(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "stream-aggregator failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type Row = (i64, f64, f64, f64, f64, f64, bool);
type Table = BTreeMap<(String, String, i64), Row>;
/// count, sum, min, max, first, last per (base, quote, window start).
type Batch = BTreeMap<(String, String, i64), (i64, f64, f64, f64, f64, f64)>;
type DbRow = (
    String,
    String,
    chrono::NaiveDateTime,
    i64,
    f64,
    f64,
    f64,
    f64,
    f64,
    bool,
);

async fn table(db: &TestDb) -> Table {
    table_of(db, "%", WindowSpec::tumbling(WINDOW_S * 1_000_000)).await
}

/// The rows of the groups matching `group` (a LIKE pattern) and of `spec`.
async fn table_of(db: &TestDb, group: &str, spec: WindowSpec) -> Table {
    let rows: Vec<DbRow> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count, sum_rate, min_rate, max_rate, first_rate, last_rate, is_final \
         FROM stream_agg WHERE consumer_group LIKE ? AND window_us = ? AND slide_us = ?",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(b, q, s, c, sum, min, max, f, l, fin)| {
            (
                (b, q, s.and_utc().timestamp()),
                (c, sum, min, max, f, l, fin),
            )
        })
        .collect()
}

fn assert_tables_equal(got: &Table, want: &Table, what: &str) {
    let diff: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, got.get(k)))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        diff.is_empty() && extra.is_empty(),
        "{what}: {} vs {} rows; differing {diff:?}; unexpected {extra:?}",
        got.len(),
        want.len()
    );
}

/// Batch recomputation from the topic: per partition in offset order, first occurrence of a
/// (pair, time) wins, updates recorded late are excluded.
async fn batch(kafka: &TestKafka, topic: &str, db: &TestDb) -> Batch {
    let spec = WindowSpec::tumbling(WINDOW_S * 1_000_000);
    batch_of(kafka, topic, db, "%", &[spec], spec).await
}

/// Batch recomputation of `spec`, one of the `specs` of the groups matching `group`: an update
/// late for every spec is not applied anywhere (and does not count as seen); one late for
/// `spec` is excluded from the earliest `windows_missed` of its windows (those that had closed).
async fn batch_of(
    kafka: &TestKafka,
    topic: &str,
    db: &TestDb,
    group: &str,
    specs: &[WindowSpec],
    spec: WindowSpec,
) -> Batch {
    let rows: Vec<(i32, i64, i64, i64, i32, bool)> = sqlx::query_as(
        "SELECT kafka_partition, kafka_offset, window_us, slide_us, windows_missed, applied FROM late_events \
         WHERE consumer_group LIKE ?",
    )
    .bind(group)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // Per update: the specs it missed windows of, with how many, and whether it went anywhere.
    let mut late: HashMap<(i32, i64), (usize, bool, Option<i32>)> = HashMap::new();
    for (p, o, w, sl, missed, applied) in rows {
        let e = late.entry((p, o)).or_insert((0, false, None));
        e.0 += usize::from(!applied);
        e.1 |= applied;
        if (w, sl) == (spec.size_us, spec.slide_us) {
            e.2 = Some(missed);
        }
    }
    let mut seen = HashSet::new();
    let mut windows: BTreeMap<(String, String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for r in kafka.read_all(topic).await {
        let u = RateUpdate::from_json(r.payload.as_deref().unwrap()).unwrap();
        let l = late.get(&(r.partition, r.offset));
        let nowhere = l.is_some_and(|(full, applied, _)| !applied && *full == specs.len());
        if nowhere || !seen.insert((u.pair, u.time)) {
            continue;
        }
        let missed = l.and_then(|l| l.2).unwrap_or(0) as usize;
        let t = u.time.timestamp_micros();
        let mut starts: Vec<i64> = spec.starts(t).collect();
        starts.sort_unstable();
        for start in starts.into_iter().skip(missed) {
            windows
                .entry((
                    u.pair.base.to_string(),
                    u.pair.quote.to_string(),
                    start / 1_000_000,
                ))
                .or_default()
                .push((t, u.rate));
        }
    }
    windows
        .into_iter()
        .map(|(k, v)| {
            let first = v.iter().min_by_key(|x| x.0).unwrap().1;
            let last = v.iter().max_by_key(|x| x.0).unwrap().1;
            let sum: f64 = v.iter().map(|x| x.1).sum();
            let min = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
            let max = v.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
            (k, (v.len() as i64, sum, min, max, first, last))
        })
        .collect()
}

fn assert_matches_batch(got: &Table, want: &Batch) {
    assert_eq!(got.len(), want.len(), "windows");
    for (k, w) in want {
        let g = got.get(k).unwrap_or_else(|| panic!("window {k:?} missing"));
        assert!(g.6, "window {k:?} final");
        assert_eq!(
            (g.0, g.2, g.3, g.4, g.5),
            (w.0, w.2, w.3, w.4, w.5),
            "window {k:?}"
        );
        assert!(
            (g.1 - w.1).abs() <= 1e-9 * w.1.abs(),
            "sum of {k:?}: {} vs {}",
            g.1,
            w.1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_and_restarted_equals_uninterrupted_and_batch() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("raw", 3).await;
    let events = stream();
    kafka.produce(&topic, &messages(&events)).await;

    // Uninterrupted run.
    let clean = TestDb::new().await;
    finish(aggregator(
        &clean,
        &kafka,
        &topic,
        &kafka.group("clean"),
        &["--exit-idle", "8s"],
    ));
    let reference = table(&clean).await;
    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM late_events")
        .fetch_one(&clean.pool)
        .await
        .unwrap();
    assert!(late >= 300, "late events recorded: {late}");
    assert_matches_batch(&reference, &batch(&kafka, &topic, &clean).await);
    // An uninterrupted run publishes each emission once (the outbox is not published again).
    let published = kafka.read_all(&format!("{topic}-out")).await;
    let distinct: HashSet<&Option<Vec<u8>>> = published.iter().map(|r| &r.payload).collect();
    assert!(!published.is_empty());
    assert_eq!(
        distinct.len(),
        published.len(),
        "an emission was published twice"
    );

    // Killed at random moments, restarted each time.
    let killed = TestDb::new().await;
    let group = kafka.group("killed");
    let mut rng = SmallRng::seed_from_u64(5);
    let progress = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT CAST(SUM(next_offset) AS SIGNED) FROM kafka_offsets",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
            .unwrap_or(0)
        }
    };
    let mut killed_mid_run = 0;
    for _ in 0..3 {
        // Short flushes so that a kill lands between many small commits.
        let mut child = aggregator(
            &killed,
            &kafka,
            &topic,
            &group,
            &["--flush-interval", "5ms"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let before = progress(&killed).await;
        for _ in 0..500 {
            if progress(&killed).await > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        if progress(&killed).await < events.len() as i64 {
            killed_mid_run += 1;
        }
    }
    assert!(killed_mid_run >= 1, "at least one kill landed mid-run");
    finish(aggregator(
        &killed,
        &kafka,
        &topic,
        &group,
        &["--exit-idle", "8s"],
    ));
    assert_tables_equal(
        &table(&killed).await,
        &reference,
        "after kills vs uninterrupted",
    );
    // The duplicate log was cut as the watermark passed its entries (once idle, past them all),
    // also by instances that found it as a killed one left it.
    for (db, what) in [(&clean, "uninterrupted"), (&killed, "after kills")] {
        let (entries, flushes): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM aggregator_seen), (SELECT CAST(SUM(seen_seq) AS SIGNED) FROM aggregator_state)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            flushes >= 3,
            "{what}: {flushes} duplicate-log entries written"
        );
        assert_eq!(
            entries, 0,
            "{what}: duplicate-log entries left behind the watermark"
        );
    }

    // Two instances sharing the group.
    let shared = TestDb::new().await;
    let group = kafka.group("shared");
    let a = aggregator(&shared, &kafka, &topic, &group, &["--exit-idle", "10s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = aggregator(&shared, &kafka, &topic, &group, &["--exit-idle", "10s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_tables_equal(&table(&shared).await, &reference, "two instances vs one");
    for out in [&a, &b] {
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("partitions assigned partitions=[0")
                || log.contains("partitions assigned partitions=[1")
                || log.contains("partitions assigned partitions=[2"),
            "each instance held partitions:\n{log}"
        );
    }

    // The results were published too.
    let out: HashMap<String, usize> = kafka
        .read_all(&format!("{topic}-out"))
        .await
        .into_iter()
        .fold(HashMap::new(), |mut m, r| {
            *m.entry(String::from_utf8(r.key.unwrap()).unwrap())
                .or_default() += 1;
            m
        });
    assert_eq!(
        out.len(),
        PAIRS.len(),
        "every pair's windows published: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_immediate_restart_drains_within_60_s() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    kafka.produce(&topic, &messages(&stream())).await;
    let group = kafka.group("agg");
    let logs = log_dir("stream-aggregator-restart");
    let drill = kill_when_ready_and_restart(
        |extra| aggregator(&db, &kafka, &topic, &group, extra),
        &logs,
    )
    .await;
    assert!(
        drill.status.success() && drill.took < Duration::from_secs(60),
        "restarted stream-aggregator: {:?} after {:?}\n{}",
        drill.status,
        drill.took,
        tail(&drill.log, 40)
    );
    assert_matches_batch(&table(&db).await, &batch(&kafka, &topic, &db).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_specs_and_groups_keep_their_own_rows() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    kafka.produce(&topic, &messages(&stream())).await;
    let (a, b) = (kafka.group("many"), kafka.group("one"));
    let s = 1_000_000;
    let specs_a = [
        WindowSpec::tumbling(10 * s),
        WindowSpec::sliding(30 * s, 10 * s),
        WindowSpec::tumbling(60 * s),
    ];
    let specs_b = [WindowSpec::tumbling(20 * s)];
    // Group B computes a spec of its own and (on purpose) one of A's, 10 s.
    let runs = [
        (&a, vec!["--windows", "10s,1m,30s/10s"]),
        (&b, vec!["--windows", "20s,10s"]),
    ];
    for (group, windows) in &runs {
        let mut cmd = aggregator_of(&db, &kafka, &topic, group, windows);
        cmd.args(["--exit-idle", "8s"]);
        finish(cmd);
    }
    let specs_b = [specs_b[0], specs_a[0]];
    for (group, specs) in [(&a, &specs_a[..]), (&b, &specs_b[..])] {
        for spec in specs {
            let got = table_of(&db, group, *spec).await;
            let want = batch_of(&kafka, &topic, &db, group, specs, *spec).await;
            assert!(!want.is_empty());
            assert_matches_batch(&got, &want);
        }
    }
    // The same spec in both groups: equal rows, kept apart.
    assert_tables_equal(
        &table_of(&db, &a, specs_a[0]).await,
        &table_of(&db, &b, specs_a[0]).await,
        "10 s in both groups",
    );
    let recorded: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT consumer_group, window_us, slide_us FROM stream_agg_specs ORDER BY consumer_group, window_us, slide_us",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded.len(), 5, "{recorded:?}");
    // Lateness is per spec: some update was late for 10 s but not for 1 m.
    let per_spec: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT window_us, COUNT(*) FROM late_events WHERE consumer_group = ? GROUP BY window_us ORDER BY window_us",
    )
    .bind(&a)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let count = |w: i64| {
        per_spec
            .iter()
            .find(|(x, _)| *x == w)
            .map_or(0, |(_, c)| *c)
    };
    assert!(count(10 * s) > count(60 * s), "{per_spec:?}");
    // A different set of specs for an existing group is refused, naming the windows.
    let mut cmd = aggregator_of(&db, &kafka, &topic, &a, &["--windows", "10s,1m"]);
    cmd.args(["--exit-idle", "3s"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("10s,30s/10s,1m"),
        "{err}"
    );
}

/// 20,000 updates, 10 ms apart per pair, 5% of them published 20 s after their event time (late
/// for a 5 s watermark by 15 s), the rest in order.
fn stream_with_late_updates() -> Vec<RateUpdate> {
    let mut rng = SmallRng::seed_from_u64(22);
    let start = DateTime::from_timestamp(1_722_864_000, 0).unwrap();
    let mut events: Vec<(i64, RateUpdate)> = Vec::new();
    for i in 0..20_000i64 {
        let pair: Pair = PAIRS[(i % 5) as usize].parse().unwrap();
        let t = start
            + chrono::Duration::milliseconds((i / 5) * 10)
            + chrono::Duration::microseconds(i % 5);
        let u = RateUpdate::new(t, pair, rng.random_range(100.0..200.0), Some(Utc::now())).unwrap();
        let delay = if rng.random_bool(0.05) { 20_000_000 } else { 0 };
        events.push((t.timestamp_micros() + delay, u));
    }
    events.sort_by_key(|(o, _)| *o);
    events.into_iter().map(|(_, u)| u).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_lateness_admits_late_updates_and_emits_windows_again() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let group = kafka.group("lateness");
    // In two parts, the aggregator drained and stopped after the first: windows it emitted final
    // then take the late updates of the second part (and their revisions survive the restart).
    let all = messages(&stream_with_late_updates());
    // No idle advance of the watermark while the parts arrive (the event times are of 2024: the
    // wall clock would close every window before the second part); a last run with it closes the
    // windows at the end.
    for (part, idle) in [
        (&all[..12_000], "1h"),
        (&all[12_000..], "1h"),
        (&all[..0], "1s"),
    ] {
        kafka.produce(&topic, part).await;
        let bin = env!("CARGO_BIN_EXE_stream-aggregator");
        let mut cmd = consumer_command(bin, &db, &kafka, &topic, &group);
        cmd.args(["--output-topic", &format!("{topic}-out"), "--window", "10s"])
            .args([
                "--watermark",
                "5s",
                "--idle-timeout",
                idle,
                "--allowed-lateness",
                "1m",
            ])
            .args(["--exit-idle", "8s"]);
        finish(cmd);
    }

    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM late_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        late, 0,
        "every update late by 15 s is within the minute allowed"
    );
    let spec = WindowSpec::tumbling(WINDOW_S * 1_000_000);
    let got = table_of(&db, &group, spec).await;
    let want = batch_of(&kafka, &topic, &db, &group, &[spec], spec).await;
    let counted: i64 = want.values().map(|w| w.0).sum();
    assert_eq!(counted, 20_000, "the batch counts every update");
    assert_matches_batch(&got, &want);
    // Windows that took late updates were emitted final again, their revision counted.
    let revised: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM stream_agg WHERE consumer_group = ? AND revision > 0",
    )
    .bind(&group)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(revised > 0, "some windows were emitted again");
    // The topic has each revision of those windows (the update counter keeps the last).
    let mut revisions: BTreeMap<(String, String, i64), u32> = BTreeMap::new();
    for r in kafka.read_all(&format!("{topic}-out")).await {
        let w = common::window::WindowResult::from_json(r.payload.as_deref().unwrap()).unwrap();
        let key = (
            w.base.to_string(),
            w.quote.to_string(),
            w.window.start.timestamp(),
        );
        let e = revisions.entry(key).or_default();
        *e = (*e).max(w.revision);
    }
    let rows: Vec<(String, String, chrono::NaiveDateTime, i64, i32)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count, revision FROM stream_agg WHERE consumer_group = ?",
    )
    .bind(&group)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (b, q, s, _, revision) in rows.into_iter().filter(|r| r.4 > 0) {
        let key = (b, q, s.and_utc().timestamp());
        assert_eq!(revisions.get(&key), Some(&(revision as u32)), "{key:?}");
    }
}

/// One second of event time of every pair, `n` seconds after `start`: 10 updates a pair.
fn second_of(start: DateTime<Utc>, n: i64) -> Vec<RateUpdate> {
    let mut out = Vec::new();
    for k in 0..10i64 {
        for (i, pair) in PAIRS.iter().enumerate() {
            let t = start
                + chrono::Duration::seconds(n)
                + chrono::Duration::milliseconds(k * 100)
                + chrono::Duration::microseconds(i as i64);
            let rate = 100.0 + (n * 10 + k) as f64;
            out.push(RateUpdate::new(t, pair.parse().unwrap(), rate, Some(Utc::now())).unwrap());
        }
    }
    out
}

/// Entries in the duplicate log, and the next offset stored for the topic's partition.
async fn seen_log(db: &TestDb) -> (Vec<i64>, i64) {
    let entries: Vec<i64> = sqlx::query_scalar("SELECT max_time_us FROM aggregator_seen")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let next: Option<i64> = sqlx::query_scalar("SELECT MAX(next_offset) FROM kafka_offsets")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (entries, next.unwrap_or(0))
}

/// Publishes seconds `from..to` one at a time (a flush each), then waits until they are written;
/// returns the duplicate log's entries.
async fn publish_seconds(
    kafka: &TestKafka,
    topic: &str,
    db: &TestDb,
    start: DateTime<Utc>,
    seconds: std::ops::Range<i64>,
) -> Vec<i64> {
    let end = seconds.end;
    for n in seconds {
        kafka.produce(topic, &messages(&second_of(start, n))).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let want = end * 50;
    for _ in 0..600 {
        let (entries, next) = seen_log(db).await;
        if next >= want {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the aggregator did not write offset {want} within 30 s");
}

/// Waits until the partition was claimed `n` times (an instance restored it and will apply what
/// is published next).
async fn claimed(db: &TestDb, n: i64) {
    for _ in 0..600 {
        let epoch: Option<i64> = sqlx::query_scalar("SELECT MAX(epoch) FROM aggregator_owner")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if epoch.unwrap_or(0) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the partition was not claimed {n} times within 30 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_duplicate_log_is_cut_behind_the_watermark_across_a_kill() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 1).await;
    let group = kafka.group("seen");
    let start = DateTime::from_timestamp(1_722_864_000, 0).unwrap();
    // The windows close with event time only (no idle advance in this test's time): times older
    // than the watermark (5 s) and a window (10 s) behind the newest are no longer needed.
    let spawn = || {
        let bin = env!("CARGO_BIN_EXE_stream-aggregator");
        consumer_command(bin, &db, &kafka, &topic, &group)
            .args(["--output-topic", &format!("{topic}-out"), "--window", "10s"])
            .args([
                "--watermark",
                "5s",
                "--idle-timeout",
                "10m",
                "--flush-interval",
                "50ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // What may be left: the watermark, the window and about one step (1 s) of marks, plus 1 s.
    let kept_from = |newest: i64| (start.timestamp() + newest - 5 - 10 - 2) * 1_000_000;
    let mut child = spawn();
    claimed(&db, 1).await;
    let entries = publish_seconds(&kafka, &topic, &db, start, 0..40).await;
    // One entry a flush, about one a second of event time: at most the 17 newest seconds left.
    assert!(
        !entries.is_empty() && entries.len() <= 20,
        "duplicate-log entries after 40 s of event time: {}",
        entries.len()
    );
    assert!(entries.iter().all(|t| *t >= kept_from(39)), "{entries:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // A restarted instance cuts what the killed one left as the watermark passes it, before any
    // entry of its own is that old (the marks are rebuilt from the table at the restore).
    let mut child = spawn();
    claimed(&db, 2).await;
    let entries = publish_seconds(&kafka, &topic, &db, start, 40..50).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !entries.is_empty() && entries.len() <= 20,
        "duplicate-log entries after 50 s of event time: {}",
        entries.len()
    );
    assert!(entries.iter().all(|t| *t >= kept_from(49)), "{entries:?}");
    let seq: i64 = sqlx::query_scalar("SELECT seen_seq FROM aggregator_state")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(seq >= 30, "about one entry a flush: {seq} written");
}
