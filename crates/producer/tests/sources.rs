//! The producer binary end to end on the real broker and MariaDB: simulate and replay publish the
//! exact number of messages, keyed, parseable, in per-pair order; a producer killed with SIGKILL
//! leaves no partial message and carries on after a restart; a bad key exits non-zero.

use std::{
    collections::HashMap,
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::RateUpdate;
use testkit::{TestDb, TestKafka, TopicRecord};

fn producer(db: &TestDb, kafka: &TestKafka, topic: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(["--topic", topic, "--stats-interval", "1s"])
        .args(args)
        .env("DATABASE_URL", db.database_url())
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env_remove("COINAPI_KEY")
        .env_remove("PRODUCER_SOURCE")
        .env("RUST_LOG", "info");
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run producer");
    assert!(
        out.status.success(),
        "producer failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Parses every record, checking the key matches the pair.
fn parse_all(records: &[TopicRecord]) -> Vec<(i32, RateUpdate)> {
    records
        .iter()
        .map(|r| {
            let u =
                RateUpdate::from_json(r.payload.as_deref().expect("payload")).unwrap_or_else(|e| {
                    panic!("unparsable message at {}:{}: {e}", r.partition, r.offset)
                });
            assert_eq!(
                r.key.as_deref(),
                Some(u.key().as_bytes()),
                "keyed BASE/QUOTE"
            );
            (r.partition, u)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_publishes_exactly_count_in_per_pair_order() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.topic_name("raw");
    let out = run(producer(
        &db,
        &kafka,
        &topic,
        &[
            "--rate",
            "0",
            "--count",
            "5000",
            "--pair-count",
            "7",
            "--seed",
            "42",
        ],
    ));
    let records = kafka.read_all(&topic).await;
    assert_eq!(records.len(), 5000);
    let parsed = parse_all(&records);
    // One pair on one partition, and in event-time order there (no jitter requested).
    let mut partition_of = HashMap::new();
    let mut last = HashMap::new();
    for (p, u) in &parsed {
        assert_eq!(
            *partition_of.entry(u.pair).or_insert(*p),
            *p,
            "{} on two partitions",
            u.pair
        );
        if let Some(prev) = last.insert(u.pair, u.time) {
            assert!(u.time > prev, "{} out of order", u.pair);
        }
    }
    assert_eq!(last.len(), 7);
    // Its statistics are stored for compare.
    let delivered: i64 = sqlx::query_scalar(
        "SELECT events_out FROM service_stats WHERE service = 'producer' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(delivered, 5000);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .next()
            .unwrap_or("")
            .contains("COINAPI_KEY is not set"),
        "first line: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_with_jitter_and_late_events_still_publishes_every_event() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.topic_name("raw");
    run(producer(
        &db,
        &kafka,
        &topic,
        &[
            "--source",
            "simulate",
            "--rate",
            "0",
            "--count",
            "3000",
            "--pairs",
            "BTC/USD,ETH/USD",
            "--jitter",
            "20ms",
            "--late-fraction",
            "0.05",
            "--late-by",
            "15m",
            "--seed",
            "1",
        ],
    ));
    let parsed = parse_all(&kafka.read_all(&topic).await);
    assert_eq!(parsed.len(), 3000);
    let distinct: std::collections::HashSet<_> =
        parsed.iter().map(|(_, u)| (u.pair, u.time)).collect();
    assert_eq!(distinct.len(), 3000, "event times unique per pair");
    let mut max_seen = HashMap::new();
    let mut behind = 0;
    for (_, u) in &parsed {
        let m = max_seen.entry(u.pair).or_insert(u.time);
        if u.time < *m {
            behind += 1;
        }
        *m = (*m).max(u.time);
    }
    assert!(
        behind >= 100,
        "late and jittered events arrive behind newer ones: {behind}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_publishes_good_lines_and_reports_bad_ones() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.topic_name("raw");
    let mut lines = Vec::new();
    for i in 0..200 {
        lines.push(format!(
            r#"{{"time":"2024-08-05T13:{:02}:{:02}.1234567Z","asset_id_base":"BTC","asset_id_quote":"{}","rate":{}}}"#,
            i / 60, i % 60, if i % 2 == 0 { "USD" } else { "EUR" }, 60000 + i
        ));
        if i == 10 {
            lines.push("this is not json".into());
        }
        if i == 50 {
            lines.push(String::new());
            lines.push(r#"{"time":"2024-08-05T13:00:00Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":-1}"#.into());
        }
    }
    lines.push(r#"{"asset_id_base":"ETH","rates":[{"time":"2024-08-05T14:00:00.0000000Z","asset_id_quote":"USD","rate":3000.5}]}"#.into());
    let path = std::env::temp_dir().join(format!("replay-{}.jsonl", testkit::unique_suffix()));
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = run(producer(
        &db,
        &kafka,
        &topic,
        &["--source", "replay", "--file", path.to_str().unwrap()],
    ));
    let _ = std::fs::remove_file(&path);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("line=12") && log.contains("line=54"),
        "bad lines named by number:\n{log}"
    );
    assert!(log.contains("bad_lines=2"), "{log}");
    let parsed = parse_all(&kafka.read_all(&topic).await);
    assert_eq!(parsed.len(), 201);
    let mut last = HashMap::new();
    for (_, u) in &parsed {
        if let Some(prev) = last.insert(u.pair, u.time) {
            assert!(u.time > prev, "per-pair order kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_reads_stdin() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.topic_name("raw");
    let mut cmd = producer(&db, &kafka, &topic, &["--source", "replay", "--file", "-"]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..25 {
            writeln!(stdin, r#"{{"time":"2024-01-01T00:00:{i:02}Z","asset_id_base":"SOL","asset_id_quote":"USD","rate":1{i}.5}}"#).unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(parse_all(&kafka.read_all(&topic).await).len(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_leaves_no_partial_message_and_restart_carries_on() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.topic_name("raw");
    kafka.create_topic("raw", 3).await;
    let mut child = producer(
        &db,
        &kafka,
        &topic,
        &[
            "--source",
            "simulate",
            "--rate",
            "3000",
            "--pair-count",
            "5",
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = parse_all(&kafka.read_all(&topic).await);
    assert!(
        before.len() > 500,
        "it was publishing before the kill: {}",
        before.len()
    );

    run(producer(
        &db,
        &kafka,
        &topic,
        &[
            "--source",
            "simulate",
            "--rate",
            "0",
            "--count",
            "1000",
            "--pair-count",
            "5",
        ],
    ));
    let after = parse_all(&kafka.read_all(&topic).await);
    assert_eq!(
        after.len(),
        before.len() + 1000,
        "every message whole, the restart's all delivered"
    );
}

#[test]
fn invalid_key_exits_non_zero_without_printing_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (db, kafka, server) = rt.block_on(async {
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(
                wiremock::ResponseTemplate::new(401)
                    .set_body_json(serde_json::json!({"error": "Invalid API key"})),
            )
            .mount(&server)
            .await;
        (TestDb::new().await, TestKafka::new(), server)
    });
    let topic = kafka.topic_name("raw");
    let mut cmd = producer(&db, &kafka, &topic, &["--interval", "100ms"]);
    cmd.env("COINAPI_KEY", "SECRET-KEY-DO-NOT-PRINT")
        .env("COINAPI_BASE_URL", server.uri());
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("rejected the API key"), "{log}");
    assert!(!log.contains("SECRET-KEY-DO-NOT-PRINT"), "{log}");
    drop(server);
}

#[test]
fn coinapi_without_key_is_a_config_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(["--source", "coinapi"])
        .env_remove("COINAPI_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COINAPI_KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_without_a_database_and_keeps_statistics_in_the_log() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("raw", 3).await;
    let closed = testkit::prometheus::free_port().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(["--topic", &topic, "--source", "simulate", "--count", "300"])
        .args([
            "--rate",
            "100",
            "--pair-count",
            "3",
            "--stats-interval",
            "1s",
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env_remove("DATABASE_URL")
        .env("MYSQL_HOST", "127.0.0.1")
        .env("MYSQL_PORT", &closed)
        .env("MYSQL_CONNECT_TIMEOUT", "1s")
        .env_remove("COINAPI_KEY")
        .env("RUST_LOG", "info");
    let out = run(cmd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("no MySQL"), "{log}");
    assert!(
        log.contains("producer statistics") && log.contains("delivered=300"),
        "{log}"
    );
    assert_eq!(kafka.read_all(&topic).await.len(), 300);
}
