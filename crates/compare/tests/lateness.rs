//! Allowed lateness end to end on the real broker and MariaDB: 5% of the simulated updates are
//! 20 s late for a 5 s watermark; with `--allowed-lateness 1m` the aggregator admits every one of
//! them (nothing in `late_events`), its final windows count every update stored, the update
//! counter agrees, and `compare --fail-on-mismatch` passes.

use testkit::{
    service_command,
    services::{log_dir, log_to, pipeline_command, wait_for},
    TestDb, TestKafka,
};

#[tokio::test(flavor = "multi_thread")]
async fn late_updates_within_the_allowed_lateness_reach_their_windows() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let (raw, agg) = (
        kafka.create_topic("raw", 3).await,
        kafka.create_topic("agg", 3).await,
    );
    let logs = log_dir("lateness");
    let spawn = |name: &str, extra: &[&str]| {
        pipeline_command(name, &db, &kafka, (&raw, &agg))
            .stderr(log_to(&logs, name))
            .args(extra)
            .spawn()
            .unwrap()
    };
    let idle = ["--exit-idle", "10s"];
    let mut consumers = [
        spawn("raw-consumer", &idle),
        spawn(
            "stream-aggregator",
            &["--allowed-lateness", "1m", "--exit-idle", "10s"],
        ),
        spawn("update-counter", &idle),
    ];
    let producer = spawn(
        "producer",
        &[
            "--source",
            "simulate",
            "--seed",
            "5",
            "--count",
            "12000",
            "--rate",
            "3000",
            "--pair-count",
            "3",
            "--event-interval",
            "2ms",
            "--event-start",
            "2024-08-05T12:00:00Z",
            "--late-fraction",
            "0.05",
            "--late-by",
            "20s",
        ],
    );
    let mut producer = producer;
    let status = wait_for(&mut producer, std::time::Duration::from_secs(120)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "producer (logs: {})",
        logs.display()
    );
    for c in consumers.iter_mut() {
        assert!(c.wait().unwrap().success(), "logs: {}", logs.display());
    }

    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM late_events").await,
        0,
        "every late update admitted"
    );
    let raw_rows = count("SELECT COUNT(*) FROM raw_coin_data").await;
    assert_eq!(raw_rows, 12_000);
    let in_windows =
        count("SELECT CAST(SUM(update_count) AS SIGNED) FROM stream_agg WHERE is_final").await;
    assert_eq!(in_windows, raw_rows, "the final windows count every update");
    let counted = count("SELECT CAST(SUM(update_count) AS SIGNED) FROM coin_update_count").await;
    assert_eq!(counted, raw_rows, "the update counter agrees");
    let revised = count("SELECT COUNT(*) FROM stream_agg WHERE revision > 0").await;
    println!("windows emitted again within the allowed lateness: {revised}");

    let out = service_command(env!("CARGO_BIN_EXE_compare"), &db, &kafka.bootstrap_servers)
        .args(["--group", &kafka.group("agg"), "--fail-on-mismatch"])
        .env("RAW_CONSUMER_GROUP", kafka.group("raw"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compare: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASS"));
}
