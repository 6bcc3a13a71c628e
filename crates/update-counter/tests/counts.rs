//! update-counter on the real broker and MariaDB: one row per (pair, window) holding the largest
//! count seen, whatever the order of emissions, through replays, poison messages and a SIGKILL;
//! SIGKILLed while holding its partitions and restarted at once, it drains within 60 s.

use std::{collections::BTreeMap, process::Command, time::Duration};

use chrono::{DateTime, Utc};
use common::{
    window::{WindowBounds, WindowResult},
    AssetId,
};
use rand::{rngs::SmallRng, seq::SliceRandom, SeedableRng};
use testkit::{
    consumer_command,
    services::{kill_when_ready_and_restart, log_dir, tail},
    TestDb, TestKafka,
};

fn emission(pair: (&str, &str), window: i64, count: u64, is_final: bool) -> WindowResult {
    let start = DateTime::from_timestamp(1_722_864_000 + window * 300, 0).unwrap();
    WindowResult {
        window: WindowBounds {
            start,
            end: start + chrono::Duration::minutes(5),
        },
        base: AssetId::parse_field(pair.0, "base").unwrap(),
        quote: AssetId::parse_field(pair.1, "quote").unwrap(),
        update_count: count,
        avg_rate: 1.0,
        min_rate: 1.0,
        max_rate: 1.0,
        sum_rate: count as f64,
        first_rate: 1.0,
        last_rate: 1.0,
        last_event_time: Some(start),
        is_final,
        group: "agg".into(),
        spec: common::window::WindowSpec::tumbling(300_000_000),
        revision: 0,
    }
}

fn counter(db: &TestDb, kafka: &TestKafka, topic: &str, group: &str, args: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_update-counter");
    let mut cmd = consumer_command(bin, db, kafka, topic, group);
    cmd.args(args);
    cmd
}

fn finish(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "update-counter failed:\n{log}");
    log
}

type Rows = BTreeMap<(String, String, DateTime<Utc>), (i64, bool)>;

/// Equality with a short message: the first few differing windows, not both tables.
fn assert_same(got: &Rows, want: &Rows) {
    let diff: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, got.get(k)))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        diff.is_empty() && extra.is_empty(),
        "{} vs {} rows; (window, want, got): {diff:?}; unexpected: {extra:?}",
        got.len(),
        want.len()
    );
}

/// Rows of group `group` and spec `window_us`.
async fn rows_of(db: &TestDb, group: &str, window_us: i64) -> Rows {
    let rows: Vec<(String, String, chrono::NaiveDateTime, i64, bool)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count, is_final FROM coin_update_count \
         WHERE consumer_group = ? AND window_us = ?",
    )
    .bind(group)
    .bind(window_us)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(b, q, s, c, f)| ((b, q, s.and_utc()), (c, f)))
        .collect()
}

async fn rows(db: &TestDb) -> Rows {
    rows_of(db, "agg", 300_000_000).await
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_and_replayed_emissions_keep_the_newest_count() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("agg", 3).await;
    let pairs = [("BTC", "USD"), ("ETH", "USD"), ("BTC", "EUR")];
    // Update-mode emissions: counts 1..=n per window, the last one final.
    let mut all = Vec::new();
    let mut expected = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        for w in 0..20 {
            let n = 3 + ((i as u64 * 7 + w as u64) % 9);
            for c in 1..=n {
                all.push(emission(*p, w, c, c == n));
            }
            let e = emission(*p, w, n, true);
            expected.insert(
                (p.0.to_owned(), p.1.to_owned(), e.window.start),
                (n as i64, true),
            );
        }
    }
    // The same windows computed by another group, and by another spec of the group (a 5-minute
    // window sliding every minute): their own rows, never this group's and spec's.
    let others: Vec<WindowResult> = all
        .iter()
        .flat_map(|e| {
            let mut g = e.clone();
            g.group = "other".into();
            g.update_count += 100;
            let mut s = e.clone();
            s.spec = common::window::WindowSpec::sliding(300_000_000, 60_000_000);
            s.update_count += 1000;
            [g, s]
        })
        .collect();
    all.extend(others);
    // Shuffled (older and smaller emissions after newer ones), plus every message a second time.
    let mut rng = SmallRng::seed_from_u64(7);
    all.shuffle(&mut rng);
    let mut msgs: Vec<(String, Vec<u8>)> = all
        .iter()
        .map(|e| (format!("{}/{}", e.base, e.quote), e.to_json().into_bytes()))
        .collect();
    msgs.extend(msgs.clone());
    kafka.produce(&topic, &msgs).await;
    finish(counter(
        &db,
        &kafka,
        &topic,
        &kafka.group("cnt"),
        &["--exit-idle", "4s", "--batch-size", "50"],
    ));
    assert_same(&rows(&db).await, &expected);
    let shifted = |by: i64| -> Rows {
        expected
            .iter()
            .map(|(k, (c, f))| (k.clone(), (c + by, *f)))
            .collect()
    };
    assert_same(&rows_of(&db, "other", 300_000_000).await, &shifted(100));
    let sliding: Vec<(i64,)> = sqlx::query_as(
        "SELECT update_count FROM coin_update_count WHERE consumer_group = 'agg' AND slide_us = 60000000",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(sliding.len(), expected.len());
    let want: i64 = expected.values().map(|(c, _)| c + 1000).sum();
    assert_eq!(sliding.iter().map(|(c,)| c).sum::<i64>(), want);

    // A replay from the start by a new group changes nothing.
    finish(counter(
        &db,
        &kafka,
        &topic,
        &kafka.group("replay"),
        &["--exit-idle", "4s"],
    ));
    assert_same(&rows(&db).await, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn original_spark_messages_and_poison_are_handled() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("agg", 1).await;
    let spark = br#"{"window":{"start":"2024-08-05T13:35:00.000Z","end":"2024-08-05T13:40:00.000Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":30,"avg_rate":2.0,"min_rate":1.0,"max_rate":3.0,"sum_rate":60.0}"#;
    let msgs = vec![
        ("BTC/USD".to_owned(), b"{\"window\":".to_vec()),
        ("BTC/USD".to_owned(), spark.to_vec()),
        ("BTC/USD".to_owned(), br#"{"window":{"start":"2024-08-05T13:40:00Z","end":"2024-08-05T13:35:00Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":1,"avg_rate":1,"min_rate":1,"max_rate":1,"sum_rate":1}"#.to_vec()),
    ];
    kafka.produce(&topic, &msgs).await;
    finish(counter(
        &db,
        &kafka,
        &topic,
        &kafka.group("cnt"),
        &["--exit-idle", "4s"],
    ));
    // No group or spec in the original shape: group '', tumbling of the window's length.
    let r = rows_of(&db, "", 300_000_000).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r.values().next(), Some(&(30, false)));
    let dead: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT service, kafka_offset, error FROM dead_letters ORDER BY kafka_offset",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].0.as_str(), dead[0].1, dead[1].1),
        ("update-counter", 0, 2)
    );
    assert!(dead[1].2.contains("window.end"), "{}", dead[1].2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart_gives_the_same_table() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("agg", 3).await;
    let mut msgs = Vec::new();
    let mut expected = BTreeMap::new();
    for w in 0..400 {
        for c in 1..=10u64 {
            let e = emission(("SOL", "USD"), w, c, c == 10);
            msgs.push(("SOL/USD".to_owned(), e.to_json().into_bytes()));
        }
        let e = emission(("SOL", "USD"), w, 10, true);
        expected.insert(
            ("SOL".to_owned(), "USD".to_owned(), e.window.start),
            (10, true),
        );
    }
    kafka.produce(&topic, &msgs).await;
    let group = kafka.group("cnt");
    let mut child = counter(
        &db,
        &kafka,
        &topic,
        &group,
        &["--batch-size", "100", "--batch-timeout", "10ms"],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    for _ in 0..200 {
        if !rows(&db).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    finish(counter(&db, &kafka, &topic, &group, &["--exit-idle", "4s"]));
    assert_same(&rows(&db).await, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_immediate_restart_drains_within_60_s() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("agg", 3).await;
    let pairs = [
        ("BTC", "USD"),
        ("ETH", "USD"),
        ("SOL", "USD"),
        ("BTC", "EUR"),
    ];
    let mut msgs = Vec::new();
    let mut expected = BTreeMap::new();
    for p in pairs {
        for w in 0..1_000 {
            for c in [3u64, 7, 9] {
                let e = emission(p, w, c, c == 9);
                msgs.push((format!("{}/{}", p.0, p.1), e.to_json().into_bytes()));
            }
            let e = emission(p, w, 9, true);
            expected.insert((p.0.to_owned(), p.1.to_owned(), e.window.start), (9, true));
        }
    }
    kafka.produce(&topic, &msgs).await;
    let group = kafka.group("cnt");
    let logs = log_dir("update-counter-restart");
    let drill =
        kill_when_ready_and_restart(|extra| counter(&db, &kafka, &topic, &group, extra), &logs)
            .await;
    assert!(
        drill.status.success() && drill.took < Duration::from_secs(60),
        "restarted update-counter: {:?} after {:?}\n{}",
        drill.status,
        drill.took,
        tail(&drill.log, 40)
    );
    assert_same(&rows(&db).await, &expected);
}
