//! stream-aggregator on the real broker and MariaDB: 50,000 updates with jitter, duplicates and
//! late events; SIGKILL and restart several times mid-run; the final `stream_agg` equals both the
//! batch recomputation from the same events and an uninterrupted run, row for row. Two instances
//! in one group give the same result too. SIGKILLed while holding its partitions and restarted at
//! once, it drains within 60 s.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::{Command, Stdio},
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::{Pair, RateUpdate};
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
    let bin = env!("CARGO_BIN_EXE_stream-aggregator");
    let mut cmd = consumer_command(bin, db, kafka, topic, group);
    cmd.args(["--output-topic", &format!("{topic}-out")])
        .args([
            "--window",
            "10s",
            "--watermark",
            "5s",
            "--idle-timeout",
            "3s",
        ])
        .args(["--flush-interval", "100ms"])
        .args(args);
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
    let rows: Vec<DbRow> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count, sum_rate, min_rate, max_rate, first_rate, last_rate, is_final FROM stream_agg",
    )
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
/// (pair, time) wins, events recorded late are excluded.
async fn batch(kafka: &TestKafka, topic: &str, db: &TestDb) -> Batch {
    let late: HashSet<(i32, i64)> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT kafka_partition, kafka_offset FROM late_events WHERE applied = FALSE",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut seen = HashSet::new();
    let mut windows: BTreeMap<(String, String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for r in kafka.read_all(topic).await {
        let u = RateUpdate::from_json(r.payload.as_deref().unwrap()).unwrap();
        if late.contains(&(r.partition, r.offset)) || !seen.insert((u.pair, u.time)) {
            continue;
        }
        let start = u.time.timestamp().div_euclid(WINDOW_S) * WINDOW_S;
        windows
            .entry((u.pair.base.to_string(), u.pair.quote.to_string(), start))
            .or_default()
            .push((u.time.timestamp_micros(), u.rate));
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
