//! Liveness of the consumer runtime on the real broker and MariaDB (the runtime is shared, the
//! raw consumer stands for all three consumers here; each also has its restart drill): an
//! instance SIGKILLed and restarted at once drains; a member that holds partitions and stops
//! answering is routed around by the watchdog; `--max-wait` exits 3 naming the partitions behind;
//! MySQL offsets ahead of the log exit 4, or are reset to the start on request.
//!
//! Static membership (`--group-instance-id`) is not tested here: the test broker (Tansu 0.6.0)
//! revokes a static member's assignment at its first heartbeat, every time (measured; README).

mod support;

use std::{process::Stdio, time::Duration};

use support::{assert_exact, consumer, messages, table, updates};
use testkit::{
    services::{
        holds_partitions, kill, kill_when_ready_and_restart, log_dir, log_to, signal, tail,
        wait_for, wait_for_log_matching,
    },
    TestDb, TestKafka,
};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_immediate_restart_drains_within_60_s() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let all = updates(100_000, 21);
    kafka.produce(&topic, &messages(&all)).await;
    let group = kafka.group("raw");
    let logs = log_dir("raw-consumer-restart");
    let drill =
        kill_when_ready_and_restart(|extra| consumer(&db, &kafka, &topic, &group, extra), &logs)
            .await;
    assert!(
        drill.status.success() && drill.took < Duration::from_secs(60),
        "restarted raw-consumer: {:?} after {:?}\n{}",
        drill.status,
        drill.took,
        tail(&drill.log, 40)
    );
    assert_exact(&db, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_stops_with_partitions_is_routed_around() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 3).await;
    let group = kafka.group("raw");
    let logs = log_dir("raw-consumer-stopped-member");
    let all = updates(6_000, 24);
    kafka
        .produce_spread(&topic, 3, &messages(&all[..3_000]))
        .await;
    // B holds partitions, then freezes (no heartbeats, no fetches) without leaving the group.
    let mut b = consumer(&db, &kafka, &topic, &group, &[])
        .stdout(Stdio::null())
        .stderr(log_to(&logs, "b"))
        .spawn()
        .unwrap();
    // A long idle period: A must not call the topic drained while B still reads it.
    let mut a = consumer(
        &db,
        &kafka,
        &topic,
        &group,
        &["--exit-idle", "15s", "--max-wait", "120s"],
    )
    .stdout(Stdio::null())
    .stderr(log_to(&logs, "a"))
    .spawn()
    .unwrap();
    let both_hold = async {
        for name in ["a.log", "b.log"] {
            let path = logs.join(name);
            if !wait_for_log_matching(&path, holds_partitions, Duration::from_secs(60)).await {
                return false;
            }
        }
        true
    };
    assert!(
        both_hold.await,
        "both members hold partitions:\n{}",
        tail(&logs.join("a.log"), 20)
    );
    signal(&b, "STOP");
    kafka
        .produce_spread(&topic, 3, &messages(&all[3_000..]))
        .await;
    let status = wait_for(&mut a, Duration::from_secs(150)).await;
    kill(&mut b);
    let log = tail(&logs.join("a.log"), 60);
    assert!(
        status.is_some_and(|s| s.success()),
        "A drained and exited 0 ({status:?}):\n{log}"
    );
    assert!(
        log.contains("partitions ready partitions=[0, 1, 2]"),
        "A took over the stopped member's partitions:\n{log}"
    );
    // On the test broker the coordinator never hands a stopped member's partitions on by
    // itself: A's watchdog saw them stall, said so (topic, group, lag) and rejoined.
    let whole = std::fs::read_to_string(logs.join("a.log")).unwrap();
    let warned = whole.lines().any(|l| {
        l.contains("WARN")
            && l.contains("rejoining the consumer group")
            && l.contains(&format!("topic={topic}"))
            && l.contains(&format!("group={group}"))
            && l.contains("lag=")
    });
    assert!(warned, "A's watchdog warned and rejoined:\n{log}");
    assert_exact(&db, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_wait_exits_3_naming_the_partitions_behind() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 2).await;
    kafka.produce(&topic, &messages(&updates(1_000, 25))).await;
    // Nothing can be written while the test holds the table: the topic cannot be drained.
    use sqlx::{ConnectOptions, Executor};
    let mut lock = db.connect_options().connect().await.unwrap();
    lock.execute("LOCK TABLES raw_coin_data WRITE")
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let mut cmd = consumer(
            &db,
            &kafka,
            &topic,
            &kafka.group("raw"),
            &["--exit-idle", "1s", "--max-wait", "8s"],
        );
        move || cmd.output().unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("exited within 60 s")
        .unwrap();
    lock.execute("UNLOCK TABLES").await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("was not drained within MAX_WAIT")
            && log.contains("partition 0")
            && log.contains("partition 1"),
        "{log}"
    );
    assert_eq!(table(&db).await.0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_ahead_of_the_log_stop_with_4_or_reset_to_start() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let topic = kafka.create_topic("raw", 1).await;
    let all = updates(50, 26);
    kafka.produce(&topic, &messages(&all)).await;
    let group = kafka.group("raw");
    // MySQL remembers offset 500 of a log that now ends at 50 (the topic was recreated).
    sqlx::query("INSERT INTO kafka_offsets (consumer_group, topic, kafka_partition, next_offset) VALUES (?, ?, 0, 500)")
        .bind(&group)
        .bind(&topic)
        .execute(&db.pool)
        .await
        .unwrap();
    let out = consumer(&db, &kafka, &topic, &group, &["--exit-idle", "2s"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(
        log.contains("ERROR")
            && log.contains("partition 0")
            && log.contains("offset 500")
            && log.contains("high watermark 50")
            && log.contains("--on-offset-ahead reset-to-start"),
        "{log}"
    );
    assert_eq!(table(&db).await.0, 0, "nothing skipped, nothing written");

    let out = consumer(
        &db,
        &kafka,
        &topic,
        &group,
        &["--exit-idle", "2s", "--on-offset-ahead", "reset-to-start"],
    )
    .output()
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("WARN") && log.contains("resetting it to the log start"),
        "{log}"
    );
    assert_exact(&db, &all).await;
    let next: i64 =
        sqlx::query_scalar("SELECT next_offset FROM kafka_offsets WHERE consumer_group = ?")
            .bind(&group)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(next, 50);
}
