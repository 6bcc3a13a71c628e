//! raw-consumer on the real broker and MariaDB: exactly the distinct updates end up in the table
//! through duplicates, replays, SIGKILLs, killed database connections, poison messages, and two
//! instances sharing a group.

mod support;

use std::{process::Stdio, time::Duration};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use support::{assert_exact, consumer, finish, messages, spawn, table, updates};
use testkit::{TestDb, TestKafka};

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_replays_collapse_to_the_distinct_updates() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let all = updates(20_000, 1);
    let mut msgs = messages(&all);
    // Duplicates: every 10th message again, right behind itself.
    let dups: Vec<_> = msgs.iter().step_by(10).cloned().collect();
    msgs.extend(dups);
    kafka.produce(&topic, &msgs).await;
    finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("raw"),
        &["--exit-idle", "4s"],
    ));
    assert_exact(&db, &all).await;

    // A replay by the producer side (the same 5,000 updates published again), and a replay by
    // the consumer side (a new group reading the whole topic from the start).
    kafka.produce(&topic, &messages(&all[..5_000])).await;
    finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("raw"),
        &["--exit-idle", "4s"],
    ));
    finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("replay"),
        &["--exit-idle", "4s"],
    ));
    assert_exact(&db, &all).await;

    let stored: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM kafka_offsets WHERE consumer_group = ? ORDER BY kafka_partition",
    )
    .bind(kafka.group("raw"))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let total: i64 = stored.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total as usize,
        20_000 + 2_000 + 5_000,
        "offsets cover every message"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let all = updates(30_000, 2);
    kafka.produce(&topic, &messages(&all)).await;
    let group = kafka.group("raw");
    let mut rng = SmallRng::seed_from_u64(99);
    let mut rows_seen = Vec::new();
    for _ in 0..4 {
        let mut child = spawn(&mut consumer(
            &db,
            &kafka,
            &topic,
            &group,
            &["--batch-size", "300", "--batch-timeout", "20ms"],
        ));
        // Wait until it is writing, then kill it at a random moment.
        let before = table(&db).await.0;
        for _ in 0..200 {
            if table(&db).await.0 > before || child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        rows_seen.push(table(&db).await.0);
    }
    assert!(rows_seen.windows(2).all(|w| w[0] <= w[1]), "{rows_seen:?}");
    assert!(
        rows_seen[0] > 0 && rows_seen[0] < 30_000,
        "killed mid-ingestion: {rows_seen:?}"
    );
    finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &group,
        &["--exit-idle", "4s"],
    ));
    assert_exact(&db, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_go_to_dead_letters_with_offsets() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 1).await;
    let good = updates(100, 3);
    let mut msgs = Vec::new();
    let poison: [&[u8]; 4] = [
        b"not json at all",
        br#"{"time":"2024-01-01T00:00:00Z","asset_id_base":"BTC","asset_id_quote":"USD"}"#,
        br#"{"time":"2024-01-01T00:00:00Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":"high"}"#,
        b"\xff\xfe binary",
    ];
    let mut poison_offsets = Vec::new();
    for (i, u) in good.iter().enumerate() {
        if i % 25 == 5 {
            poison_offsets.push(msgs.len() as i64);
            msgs.push(("BTC/USD".to_owned(), poison[i / 25].to_vec()));
        }
        msgs.push((u.key(), u.to_json().into_bytes()));
    }
    kafka.produce(&topic, &msgs).await;
    let out = finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("raw"),
        &["--exit-idle", "4s"],
    ));
    assert_exact(&db, &good).await;
    let dead: Vec<(String, i32, i64, Vec<u8>, String)> = sqlx::query_as(
        "SELECT service, kafka_partition, kafka_offset, payload, error FROM dead_letters ORDER BY kafka_offset",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(dead.iter().map(|d| d.2).collect::<Vec<_>>(), poison_offsets);
    for (d, p) in dead.iter().zip(poison) {
        assert_eq!((d.0.as_str(), d.1, d.3.as_slice()), ("raw-consumer", 0, p));
    }
    assert!(dead[1].4.contains("rate"), "{}", dead[1].4);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("offset=5")
            && log.contains("message kept in dead_letters")
            && log.contains("reason=\"malformed\""),
        "{log}"
    );

    // Another group reading the topic from the start keeps its own letters (each group replays
    // its own).
    finish(&mut consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("again"),
        &["--exit-idle", "4s"],
    ));
    let per_group: Vec<(String, i64)> = sqlx::query_as(
        "SELECT consumer_group, COUNT(*) FROM dead_letters GROUP BY consumer_group ORDER BY consumer_group",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut want = vec![(kafka.group("again"), 4), (kafka.group("raw"), 4)];
    want.sort();
    assert_eq!(per_group, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_database_connections_lose_nothing() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let all = updates(30_000, 4);
    kafka.produce(&topic, &messages(&all)).await;
    let mut child = consumer(
        &db,
        &kafka,
        &topic,
        &kafka.group("raw"),
        &[
            "--batch-size",
            "300",
            "--batch-timeout",
            "20ms",
            "--exit-idle",
            "5s",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut kills = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        kills += db.kill_sessions().await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(kills > 3, "connections were killed: {kills}");
    assert!(
        log.contains("retrying"),
        "the service saw the failures and retried:\n{log}"
    );
    assert_exact(&db, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_partitions_and_the_result_is_exact() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let all = updates(30_000, 5);
    kafka.produce(&topic, &messages(&all)).await;
    let group = kafka.group("raw");
    let args = ["--batch-size", "500", "--exit-idle", "8s"];
    let a = consumer(&db, &kafka, &topic, &group, &args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let b = consumer(&db, &kafka, &topic, &group, &args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_exact(&db, &all).await;
    // Both instances held partitions at some point.
    for out in [&a, &b] {
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("partitions assigned partitions=[0")
                || log.contains("partitions assigned partitions=[1")
                || log.contains("partitions assigned partitions=[2"),
            "{log}"
        );
    }
}
