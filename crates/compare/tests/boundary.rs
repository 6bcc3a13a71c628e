//! Never stuck at the database boundary, with the real binaries, broker and MariaDB:
//! - bad messages among good ones (a 2,000-byte key on a body that is not JSON, two rates of
//!   1.7e308 in one window): raw-consumer and stream-aggregator drain and exit 0, the good
//!   updates are exact in `raw_coin_data` and `stream_agg`, the bad ones kept whole;
//! - rows the database refuses (a CHECK constraint): exactly those messages become dead letters
//!   (reason `rejected`), everything else is written; after the fix, `--replay-dead-letters`
//!   applies each once (a second replay applies nothing);
//! - every 4th COMMIT reply lost (6 times, through the fault proxy) while 20,000 updates arrive
//!   at 1,000/s: both drain and exit 0, counts exact;
//! - the database unreachable: readiness 503 naming the failing write after a minute, the
//!   failures counted in `/metrics`, and SIGTERM exits 1 within the shutdown timeout naming the
//!   offsets not written;
//! - a seeded fuzz of bad messages (empty, binary, up to 900 KB, invalid UTF-8, huge and
//!   non-finite numbers, far-future times, nested JSON) among good updates: every consumer
//!   drains, every good update is exact, every bad one is kept whole by each consumer
//!   (`COINSTREAM_FUZZ_SEED` repeats a run; the seed is printed).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::{Pair, RateUpdate};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::{
    proxy::FaultProxy,
    service_command,
    services::{
        log_dir, log_to, service_binary, spawn_running, tail, terminate, wait_for, wait_for_log,
        Running,
    },
    TestDb, TestKafka,
};

const PAIRS: [&str; 5] = ["BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "XRP/USD"];
const WINDOW_US: i64 = 10_000_000;

/// One test's database, topics and logs.
struct Setup {
    db: TestDb,
    kafka: TestKafka,
    raw: String,
    agg: String,
    logs: PathBuf,
}

impl Setup {
    async fn new(test: &str) -> Self {
        let (db, kafka) = (TestDb::new().await, TestKafka::new());
        let raw = kafka.create_topic("raw", 3).await;
        let agg = kafka.create_topic("agg", 3).await;
        Setup {
            db,
            kafka,
            raw,
            agg,
            logs: log_dir(test),
        }
    }

    /// Service `name` on this test's topics and groups (aggregator: 10 s windows, watermark
    /// `watermark`, 3 s idle timeout, 100 ms flushes), its stderr in `<log>.log`.
    fn command(&self, name: &str, log: &str, watermark: &str, extra: &[&str]) -> Command {
        let bin = service_binary(name);
        let mut c = service_command(
            bin.to_str().unwrap(),
            &self.db,
            &self.kafka.bootstrap_servers,
        );
        c.env("RAW_TOPIC", &self.raw)
            .env("AGG_TOPIC", &self.agg)
            .env("AGGREGATOR_GROUP", self.kafka.group("agg"))
            .env("RAW_CONSUMER_GROUP", self.kafka.group("raw"))
            .env("UPDATE_COUNTER_GROUP", self.kafka.group("cnt"))
            .env("KAFKA_SESSION_TIMEOUT", "6s")
            .stdout(log_to(&self.logs, &format!("{log}.out")))
            .stderr(log_to(&self.logs, log));
        if name == "stream-aggregator" {
            c.args([
                "--window",
                "10s",
                "--watermark",
                watermark,
                "--idle-timeout",
                "3s",
            ])
            .args(["--flush-interval", "100ms"]);
        }
        c.args(extra);
        c
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Waits for `child` to exit (at most `limit`), panicking with its log otherwise.
    async fn exit(&self, child: &mut Running, log: &str, limit: Duration) -> ExitStatus {
        match wait_for(child, limit).await {
            Some(s) => s,
            None => {
                let _ = child.kill();
                panic!(
                    "{log} still running after {limit:?}:\n{}",
                    tail(&self.log(log), 40)
                );
            }
        }
    }

    /// Runs the consumers given (name, log) with `--exit-idle` until they exit 0.
    async fn drain(&self, services: &[(&str, &str)], watermark: &str, db_url: Option<&[String]>) {
        let mut children = Vec::new();
        for (i, (name, log)) in services.iter().enumerate() {
            let mut c = self.command(
                name,
                log,
                watermark,
                &["--exit-idle", "4s", "--max-wait", "150s"],
            );
            if let Some(urls) = db_url {
                c.env("DATABASE_URL", &urls[i]);
            }
            children.push((spawn_running(&mut c), *log));
        }
        for (mut child, log) in children {
            let status = self.exit(&mut child, log, Duration::from_secs(180)).await;
            assert!(
                status.success(),
                "{log} exited {status:?}:\n{}",
                tail(&self.log(log), 40)
            );
        }
    }
}

/// `n` good updates from `start`, 5 pairs, 7 ms apart, in time order (no late ones).
fn good(n: usize, start: DateTime<Utc>, seed: u64) -> Vec<RateUpdate> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let pair: Pair = PAIRS[i % PAIRS.len()].parse().unwrap();
            let t = start + chrono::Duration::microseconds(i as i64 * 7_001);
            RateUpdate::new(t, pair, rng.random_range(100.0..200.0), Some(Utc::now())).unwrap()
        })
        .collect()
}

type Record = (Option<Vec<u8>>, Vec<u8>);

fn record(u: &RateUpdate) -> Record {
    (Some(u.key().into_bytes()), u.to_json().into_bytes())
}

async fn produce(kafka: &TestKafka, topic: &str, records: &[Record]) {
    let refs: Vec<(Option<&[u8]>, &[u8])> = records
        .iter()
        .map(|(k, p)| (k.as_deref(), p.as_slice()))
        .collect();
    kafka.produce_records(topic, None, &refs).await;
}

/// (base, quote, µs, rate bits) of every raw row.
async fn raw_rows(db: &TestDb) -> BTreeSet<(String, String, i64, u64)> {
    let rows: Vec<(String, String, chrono::NaiveDateTime, f64)> =
        sqlx::query_as("SELECT asset_id_base, asset_id_quote, `time`, rate FROM raw_coin_data")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let n = rows.len();
    let set: BTreeSet<_> = rows
        .into_iter()
        .map(|(b, q, t, r)| (b, q, t.and_utc().timestamp_micros(), r.to_bits()))
        .collect();
    assert_eq!(set.len(), n, "no raw row twice");
    set
}

fn raw_expected(updates: &[RateUpdate]) -> BTreeSet<(String, String, i64, u64)> {
    updates
        .iter()
        .map(|u| {
            (
                u.pair.base.to_string(),
                u.pair.quote.to_string(),
                u.time.timestamp_micros(),
                u.rate.to_bits(),
            )
        })
        .collect()
}

/// (base, quote, window start µs) -> (count, sum, min, max).
type Windows = BTreeMap<(String, String, i64), (i64, f64, f64, f64)>;

fn windows_expected(updates: &[RateUpdate]) -> Windows {
    let mut w = Windows::new();
    for u in updates {
        let t = u.time.timestamp_micros();
        let key = (
            u.pair.base.to_string(),
            u.pair.quote.to_string(),
            t - t.rem_euclid(WINDOW_US),
        );
        let e = w.entry(key).or_insert((0, 0.0, f64::MAX, f64::MIN));
        e.0 += 1;
        e.1 += u.rate;
        e.2 = e.2.min(u.rate);
        e.3 = e.3.max(u.rate);
    }
    w
}

async fn windows(db: &TestDb) -> Windows {
    let rows: Vec<(String, String, chrono::NaiveDateTime, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count, sum_rate, min_rate, max_rate FROM stream_agg",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(b, q, s, c, sum, min, max)| {
            ((b, q, s.and_utc().timestamp_micros()), (c, sum, min, max))
        })
        .collect()
}

fn assert_windows(got: &Windows, want: &Windows) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same windows"
    );
    for (k, (c, sum, min, max)) in want {
        let g = got[k];
        assert_eq!(g.0, *c, "count of {k:?}");
        assert!(
            (g.1 - sum).abs() <= 1e-9 * sum.abs(),
            "sum of {k:?}: {} vs {sum}",
            g.1
        );
        assert_eq!((g.2, g.3), (*min, *max), "min and max of {k:?}");
    }
}

/// A dead letter as the tests read it: key, payload, reason.
type Letter = (Option<Vec<u8>>, Vec<u8>, String);
/// service, key, payload, reason.
type LetterRow = (String, Option<Vec<u8>>, Option<Vec<u8>>, String);

/// service -> every dead letter.
async fn dead_letters(db: &TestDb) -> BTreeMap<String, Vec<Letter>> {
    let rows: Vec<LetterRow> = sqlx::query_as(
        "SELECT service, message_key, payload, reason FROM dead_letters ORDER BY service, kafka_partition, kafka_offset",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (s, k, p, r) in rows {
        out.entry(s)
            .or_default()
            .push((k, p.unwrap_or_default(), r));
    }
    out
}

/// Every bad record is kept whole, once, by each of `services`.
async fn assert_kept_whole(db: &TestDb, bad: &[Record], services: &[&str]) {
    let letters = dead_letters(db).await;
    let want: BTreeSet<(Vec<u8>, Vec<u8>)> = bad
        .iter()
        .map(|(k, p)| (k.clone().unwrap_or_default(), p.clone()))
        .collect();
    for s in services {
        let got: Vec<(Vec<u8>, Vec<u8>)> = letters
            .get(*s)
            .map(|l| {
                l.iter()
                    .map(|(k, p, _)| (k.clone().unwrap_or_default(), p.clone()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(got.len(), bad.len(), "{s}: one letter per bad message");
        let got: BTreeSet<_> = got.into_iter().collect();
        assert!(
            got == want,
            "{s}: the letters hold the messages byte for byte"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_among_good_ones_drain_and_are_kept_whole() {
    let t = Setup::new("boundary-bad").await;
    let start = DateTime::from_timestamp(1_722_864_000, 0).unwrap();
    let ok = good(1_000, start, 1);
    let mut records: Vec<Record> = ok.iter().map(record).collect();
    let long_key = vec![b'k'; 2_000];
    let huge = |ms: i64| {
        let u = format!(
            r#"{{"time":"{}","asset_id_base":"BTC","asset_id_quote":"USD","rate":1.7e308}}"#,
            (start + chrono::Duration::milliseconds(ms)).format("%Y-%m-%dT%H:%M:%S%.6fZ")
        );
        (Some(b"BTC/USD".to_vec()), u.into_bytes())
    };
    let bad: Vec<Record> = vec![
        (Some(long_key.clone()), b"this is not JSON".to_vec()),
        huge(1_001),
        huge(1_002),
    ];
    records.insert(300, bad[0].clone());
    records.insert(500, bad[1].clone());
    records.insert(501, bad[2].clone());
    produce(&t.kafka, &t.raw, &records).await;
    t.drain(
        &[("raw-consumer", "raw"), ("stream-aggregator", "agg")],
        "5s",
        None,
    )
    .await;
    assert_eq!(
        raw_rows(&t.db).await,
        raw_expected(&ok),
        "raw_coin_data: the 1,000, exactly"
    );
    assert_windows(&windows(&t.db).await, &windows_expected(&ok));
    assert_kept_whole(&t.db, &bad, &["raw-consumer", "stream-aggregator"]).await;
    let letters = dead_letters(&t.db).await;
    for (service, l) in &letters {
        let reasons: BTreeSet<&str> = l.iter().map(|(_, _, r)| r.as_str()).collect();
        assert_eq!(
            reasons,
            BTreeSet::from(["invalid", "malformed"]),
            "{service}"
        );
        assert!(
            l.iter()
                .any(|(k, _, _)| k.as_deref() == Some(long_key.as_slice())),
            "{service}: the long key whole"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_rows_become_dead_letters_and_a_replay_applies_them_once() {
    let t = Setup::new("boundary-refused").await;
    for sql in [
        "ALTER TABLE raw_coin_data ADD CONSTRAINT test_raw_small CHECK (rate < 1000)",
        "ALTER TABLE stream_agg ADD CONSTRAINT test_agg_small CHECK (max_rate < 1000)",
    ] {
        sqlx::query(sql).execute(&t.db.pool).await.unwrap();
    }
    // Recent event times and a 1 h watermark: the windows stay open, so the replay applies to them.
    let start = Utc::now() - chrono::Duration::seconds(60);
    let mut all = good(1_000, start, 2);
    for i in [137, 600, 601] {
        all[i].rate = 5_000.0;
    }
    produce(
        &t.kafka,
        &t.raw,
        &all.iter().map(record).collect::<Vec<_>>(),
    )
    .await;
    t.drain(
        &[("raw-consumer", "raw"), ("stream-aggregator", "agg")],
        "1h",
        None,
    )
    .await;
    let accepted: Vec<RateUpdate> = all.iter().filter(|u| u.rate < 1000.0).copied().collect();
    let refused: Vec<Record> = all
        .iter()
        .filter(|u| u.rate >= 1000.0)
        .map(record)
        .collect();
    assert_eq!(
        raw_rows(&t.db).await,
        raw_expected(&accepted),
        "everything but the refused rows"
    );
    assert_windows(&windows(&t.db).await, &windows_expected(&accepted));
    assert_kept_whole(&t.db, &refused, &["raw-consumer", "stream-aggregator"]).await;
    for (service, l) in dead_letters(&t.db).await {
        assert!(
            l.iter().all(|(_, _, r)| r == "rejected"),
            "{service}: {l:?}"
        );
    }
    let agg_log = std::fs::read_to_string(t.log("agg")).unwrap();
    assert!(
        agg_log.contains("reading it again in smaller flushes"),
        "the aggregator narrowed the refused flush down"
    );

    // The fix, then the replay: each letter applied once; a second replay applies nothing.
    for sql in [
        "ALTER TABLE raw_coin_data DROP CONSTRAINT test_raw_small",
        "ALTER TABLE stream_agg DROP CONSTRAINT test_agg_small",
    ] {
        sqlx::query(sql).execute(&t.db.pool).await.unwrap();
    }
    for (name, log) in [
        ("raw-consumer", "raw-replay"),
        ("stream-aggregator", "agg-replay"),
    ] {
        let run = |args: &[&str]| {
            let status = t.command(name, log, "1h", args).status().unwrap();
            assert!(
                status.success(),
                "{name} {args:?}: {}",
                tail(&t.log(log), 20)
            );
        };
        run(&["--list-dead-letters"]);
        let listed = std::fs::read_to_string(t.logs.join(format!("{log}.out.log"))).unwrap();
        assert!(
            listed.contains("3 dead letters of"),
            "{name} lists its letters: {listed}"
        );
        run(&["--replay-dead-letters"]);
        run(&["--replay-dead-letters"]);
        let out = std::fs::read_to_string(t.logs.join(format!("{log}.out.log"))).unwrap();
        assert!(
            out.contains("3 applied (0 of them late"),
            "{name}, first replay: {out}"
        );
        assert!(out.contains("0 applied"), "{name}, second replay: {out}");
    }
    assert_eq!(
        raw_rows(&t.db).await,
        raw_expected(&all),
        "after the replay: all 1,000"
    );
    assert_windows(&windows(&t.db).await, &windows_expected(&all));
    let unreplayed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
            .fetch_one(&t.db.pool)
            .await
            .unwrap();
    assert_eq!(unreplayed, 0, "every letter marked replayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_commit_replies_lose_and_double_nothing() {
    let t = Setup::new("boundary-commits").await;
    let start = DateTime::from_timestamp(1_722_900_000, 0).unwrap();
    let all = good(20_000, start, 3);
    let records: Vec<Record> = all.iter().map(record).collect();
    let proxies = [
        FaultProxy::for_test_server().await,
        FaultProxy::for_test_server().await,
    ];
    let urls: Vec<String> = proxies.iter().map(|p| p.database_url_of(&t.db)).collect();
    // 1,000 updates a second (100 every 100 ms) for 20 s, the services started after the
    // first second.
    let producer: FutureProducer = common::kafka::producer_config(&t.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let topic = t.raw.clone();
    let producing = tokio::spawn(async move {
        let began = Instant::now();
        for (i, chunk) in records.chunks(100).enumerate() {
            let sent: Vec<_> = chunk
                .iter()
                .map(|(k, p)| {
                    let r = FutureRecord::to(&topic)
                        .key(k.as_deref().unwrap())
                        .payload(p);
                    producer.send_result(r).map_err(|(e, _)| e).unwrap()
                })
                .collect();
            for d in sent {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
            let due = began + Duration::from_millis(100 * (i as u64 + 1));
            tokio::time::sleep_until(due.into()).await;
        }
        began.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut children = Vec::new();
    for (i, (name, log)) in [("raw-consumer", "raw"), ("stream-aggregator", "agg")]
        .iter()
        .enumerate()
    {
        let mut c = t.command(
            name,
            log,
            "5s",
            &["--exit-idle", "5s", "--max-wait", "150s"],
        );
        c.env("DATABASE_URL", &urls[i]);
        children.push((spawn_running(&mut c), *log));
    }
    for (_, log) in &children {
        assert!(
            wait_for_log(&t.log(log), "partitions ready", Duration::from_secs(60)).await,
            "{log}: {}",
            tail(&t.log(log), 30)
        );
    }
    for p in &proxies {
        p.drop_commit_replies(4, 6);
    }
    let took = producing.await.unwrap();
    assert!(
        took < Duration::from_secs(30),
        "produced at about 1,000/s: {took:?}"
    );
    for (mut child, log) in children {
        let status = t.exit(&mut child, log, Duration::from_secs(180)).await;
        assert!(
            status.success(),
            "{log} exited {status:?}:\n{}",
            tail(&t.log(log), 40)
        );
    }
    for (p, name) in proxies.iter().zip(["raw-consumer", "stream-aggregator"]) {
        assert_eq!(
            p.commit_replies_dropped(),
            6,
            "{name}: 6 COMMIT replies lost ({} COMMITs seen)",
            p.commits_seen()
        );
    }
    assert_eq!(
        raw_rows(&t.db).await,
        raw_expected(&all),
        "raw_coin_data: 20,000 exactly"
    );
    assert_windows(&windows(&t.db).await, &windows_expected(&all));
    let agg = std::fs::read_to_string(t.log("agg")).unwrap();
    assert!(
        !agg.contains("another instance claimed"),
        "no instance fenced itself"
    );
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_loud_and_sigterm_exits_within_the_timeout() {
    let t = Setup::new("boundary-unreachable").await;
    let start = DateTime::from_timestamp(1_722_950_000, 0).unwrap();
    let all = good(1_000, start, 4);
    produce(
        &t.kafka,
        &t.raw,
        &all[..500].iter().map(record).collect::<Vec<_>>(),
    )
    .await;
    let proxies = [
        FaultProxy::for_test_server().await,
        FaultProxy::for_test_server().await,
    ];
    let mut children = Vec::new();
    for (i, (name, log)) in [("raw-consumer", "raw"), ("stream-aggregator", "agg")]
        .iter()
        .enumerate()
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = t.command(name, log, "5s", &["--shutdown-timeout", "5s"]);
        c.env("DATABASE_URL", proxies[i].database_url_of(&t.db))
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"));
        children.push((spawn_running(&mut c), *log, port));
    }
    for (_, log, _) in &children {
        assert!(
            wait_for_log(
                &t.log(log),
                "first write after the assignment committed",
                Duration::from_secs(60)
            )
            .await,
            "{log}: {}",
            tail(&t.log(log), 30)
        );
    }
    for p in &proxies {
        p.unreachable(true);
    }
    produce(
        &t.kafka,
        &t.raw,
        &all[500..].iter().map(record).collect::<Vec<_>>(),
    )
    .await;
    // Readiness says what is wrong once the same write has failed for a minute.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (_, log, port) in &children {
        loop {
            let ready = get(&format!("http://127.0.0.1:{port}/readyz")).await;
            if let Some((503, body)) = &ready {
                if body.contains("has been failing for") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{log}: readiness never named the failing write: {ready:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert!(
            metrics.contains("coinstream_write_failures_total{kind=\"transient\""),
            "{log}: {metrics}"
        );
    }
    for (child, _, _) in &children {
        terminate(child);
    }
    let signalled = Instant::now();
    for (mut child, log, _) in children {
        let status = t.exit(&mut child, log, Duration::from_secs(20)).await;
        let took = signalled.elapsed();
        let text = std::fs::read_to_string(t.log(log)).unwrap();
        assert_eq!(status.code(), Some(1), "{log}: {}", tail(&t.log(log), 20));
        assert!(
            took < Duration::from_secs(12),
            "{log} took {took:?} to stop"
        );
        assert!(
            text.contains("SHUTDOWN_TIMEOUT") && text.contains("partition"),
            "{log} names what was not written:\n{}",
            tail(&t.log(log), 10)
        );
    }
}

/// A bad message of one of the fuzzed kinds.
fn fuzzed(rng: &mut SmallRng, start: DateTime<Utc>) -> Record {
    let time = (start + chrono::Duration::seconds(rng.random_range(0..30)))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let body = |rate: &str, time: &str| {
        format!(r#"{{"time":"{time}","asset_id_base":"BTC","asset_id_quote":"USD","rate":{rate}}}"#)
            .into_bytes()
    };
    let key: Option<Vec<u8>> = match rng.random_range(0..4) {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some(
            (0..rng.random_range(1..3000))
                .map(|_| rng.random())
                .collect(),
        ),
        _ => Some(b"BTC/USD".to_vec()),
    };
    let payload = match rng.random_range(0..10) {
        0 => Vec::new(),
        1 => (0..rng.random_range(1..2000)).map(|_| rng.random()).collect(),
        2 => {
            let mut b = vec![b'x'; rng.random_range(100_000..900_000)];
            b[0] = b'{';
            b
        }
        3 => vec![0xff, 0xfe, b'{', 0xc3, 0x28],
        4 => body("1e400", &time),
        5 => body("1.7e308", &time),
        6 => body("-5", &time),
        7 => body("100", "9999-12-31T23:59:59Z"),
        8 => format!(r#"{{"time":"{time}","asset_id_base":{{"nested":[1,{{"deep":true}}]}},"asset_id_quote":"USD","rate":1}}"#).into_bytes(),
        _ => body("NaN", &time),
    };
    (key, payload)
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_bad_messages_among_good_ones() {
    let seed: u64 = std::env::var("COINSTREAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64);
    eprintln!("fuzz seed: {seed} (COINSTREAM_FUZZ_SEED={seed} repeats this run)");
    let t = Setup::new("boundary-fuzz").await;
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = DateTime::from_timestamp(1_723_000_000, 0).unwrap();
    let ok = good(2_000, start, seed);
    let bad: Vec<Record> = (0..60).map(|_| fuzzed(&mut rng, start)).collect();
    let mut records: Vec<Record> = ok.iter().map(record).collect();
    for b in &bad {
        let at = rng.random_range(0..=records.len());
        records.insert(at, b.clone());
    }
    produce(&t.kafka, &t.raw, &records).await;
    t.drain(
        &[
            ("raw-consumer", "raw"),
            ("stream-aggregator", "agg"),
            ("update-counter", "cnt"),
        ],
        "5s",
        None,
    )
    .await;
    assert_eq!(
        raw_rows(&t.db).await,
        raw_expected(&ok),
        "seed {seed}: raw_coin_data"
    );
    let want = windows_expected(&ok);
    assert_windows(&windows(&t.db).await, &want);
    assert_kept_whole(&t.db, &bad, &["raw-consumer", "stream-aggregator"]).await;
    let counts: Vec<(String, String, chrono::NaiveDateTime, i64)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time, update_count FROM coin_update_count",
    )
    .fetch_all(&t.db.pool)
    .await
    .unwrap();
    let counts: BTreeMap<_, _> = counts
        .into_iter()
        .map(|(b, q, s, c)| ((b, q, s.and_utc().timestamp_micros()), c))
        .collect();
    let want_counts: BTreeMap<_, _> = want.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert_eq!(counts, want_counts, "seed {seed}: coin_update_count");
}
