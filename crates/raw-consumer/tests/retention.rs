//! `--retention`: the raw consumer prunes, in the background and in batches, the raw updates older
//! than the retention and its own statistics and dead letters, and nothing else: today's rows, and
//! other services' and groups' rows, stay. A message sent meanwhile is stored as usual.

use std::time::{Duration, Instant};

use testkit::{
    service_command,
    services::{log_dir, log_to, terminate},
    TestDb, TestKafka,
};

/// More old rows than one DELETE takes (`common::retention::BATCH`): pruned in several batches.
const OLD: i64 = 2_500;
const TODAY: i64 = 300;

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn seed(db: &TestDb, group: &str) {
    // Raw updates 40 days old (several batches) and from today, one pair each second.
    for (age_days, n, base) in [(40, OLD, "OLD"), (0, TODAY, "NEW")] {
        for chunk in (1..=n).collect::<Vec<_>>().chunks(1000) {
            let values = chunk
                .iter()
                .map(|s| {
                    format!("('{base}', 'USD', 1.5, UTC_TIMESTAMP(6) - INTERVAL {age_days} DAY - INTERVAL {s} SECOND)")
                })
                .collect::<Vec<_>>()
                .join(",");
            sqlx::query(&format!(
                "INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`) VALUES {values}"
            ))
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    for (service, g, age_days) in [
        ("raw-consumer", group, 40),
        ("raw-consumer", group, 0),
        ("raw-consumer", "another-group", 40),
        ("stream-aggregator", group, 40),
    ] {
        sqlx::query(
            "INSERT INTO service_stats (service, instance, consumer_group, recorded_at, started_at) \
             VALUES (?, 'test', ?, UTC_TIMESTAMP(6) - INTERVAL ? DAY, UTC_TIMESTAMP(6) - INTERVAL ? DAY)",
        )
        .bind(service)
        .bind(g)
        .bind(age_days)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for (offset, g, age_days) in [(1, group, 40), (2, group, 0), (3, "another-group", 40)] {
        sqlx::query(
            "INSERT INTO dead_letters (service, consumer_group, topic, kafka_partition, kafka_offset, error, recorded_at) \
             VALUES ('raw-consumer', ?, 't', 0, ?, 'seeded', UTC_TIMESTAMP(6) - INTERVAL ? DAY)",
        )
        .bind(g)
        .bind(offset)
        .bind(age_days)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_old_rows_and_keeps_todays() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("raw", 1).await;
    let group = kafka.group("raw");
    seed(&db, &group).await;
    let logs = log_dir("retention");
    let mut service = service_command(
        env!("CARGO_BIN_EXE_raw-consumer"),
        &db,
        &kafka.bootstrap_servers,
    )
    .args(["--topic", &topic, "--group", &group])
    .args(["--retention", "30d", "--retention-interval", "1s"])
    .stderr(log_to(&logs, "raw-consumer"))
    .spawn()
    .unwrap();

    let started = Instant::now();
    while count(
        &db,
        "SELECT COUNT(*) FROM raw_coin_data WHERE asset_id_base = 'OLD'",
    )
    .await
        > 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "old raw rows still there after 60 s (log: {})",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A pass prunes every table in turn: wait for the statistics and dead letters too.
    let old_own = "SELECT (SELECT COUNT(*) FROM service_stats WHERE service = 'raw-consumer' \
                   AND consumer_group = ? AND recorded_at < UTC_TIMESTAMP(6) - INTERVAL 30 DAY) \
                   + (SELECT COUNT(*) FROM dead_letters WHERE consumer_group = ? AND kafka_offset = 1)";
    while sqlx::query_scalar::<_, i64>(old_own)
        .bind(&group)
        .bind(&group)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        > 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "own statistics and dead letters not pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(&service);
    let _ = service.wait();

    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM raw_coin_data WHERE asset_id_base = 'NEW'"
        )
        .await,
        TODAY,
        "today's raw rows are kept"
    );
    let kept: Vec<(String, String)> = sqlx::query_as(
        "SELECT service, consumer_group FROM service_stats \
         WHERE recorded_at < UTC_TIMESTAMP(6) - INTERVAL 30 DAY ORDER BY service, consumer_group",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        vec![
            ("raw-consumer".to_owned(), "another-group".to_owned()),
            ("stream-aggregator".to_owned(), group.clone()),
        ],
        "other groups' and services' statistics are kept"
    );
    let letters: Vec<i64> =
        sqlx::query_scalar("SELECT kafka_offset FROM dead_letters ORDER BY kafka_offset")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        letters,
        vec![2, 3],
        "today's and other groups' dead letters are kept"
    );
    let log = std::fs::read_to_string(logs.join("raw-consumer.log")).unwrap();
    assert!(
        log.contains("retention: pruned") && log.contains(&OLD.to_string()),
        "the pruning is logged with its row count: {log}"
    );
}
