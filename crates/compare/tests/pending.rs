//! compare under a live pipeline, on real MariaDB, the tables written as the consumers write
//! them (rows and offsets in one transaction each):
//! - the raw consumer behind the aggregator on one partition and ahead of it on the other:
//!   the windows not settled are pending, the rest match, `--fail-on-mismatch` exits 0; a settled
//!   window that differs still fails; with the wrong raw-consumer group the verdict is strict (and
//!   fails); once both caught up everything matches;
//! - rows committed between compare's reads of the two sides do not make them disagree (one
//!   snapshot): compare is held between its reads by a table lock while both consumers commit.

mod lagging;

use std::time::{Duration, Instant};

use compare::SourceArgs;
use lagging::{GROUP, RAW_GROUP, SEC, T0, WATERMARK};
use serde_json::Value;
use sqlx::{ConnectOptions, Executor};
use testkit::{service_command, TestDb};

/// `compare --format json --fail-on-mismatch` with these groups: exit code, the report's one
/// section (the group's one spec) and stderr.
fn compare(db: &TestDb, raw_group: &str) -> (Option<i32>, Value, String) {
    let out = service_command(env!("CARGO_BIN_EXE_compare"), db, "127.0.0.1:1")
        .args(["--group", GROUP, "--raw-group", raw_group])
        .args(["--format", "json", "--fail-on-mismatch"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let sections = json["sections"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        sections.len(),
        1,
        "one section, the group's one spec: {json}"
    );
    assert_eq!(sections[0]["label"], "10s", "{json}");
    (out.status.code(), sections[0].clone(), stderr)
}

fn counts(a: &Value) -> [u64; 5] {
    ["matched", "pending", "mismatches", "missing", "extra"].map(|k| a[k].as_u64().unwrap())
}

/// The status of one window in the report.
fn status(report: &Value, pair: &str, start_us: i64) -> String {
    report["windows"][pair]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start_us"] == start_us)
        .map_or_else(|| "absent".into(), |w| w["status"].as_str().unwrap().into())
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_not_settled_are_pending_and_the_rest_match() {
    let db = TestDb::new().await;
    lagging::lagging(&db).await;

    let (code, report, stderr) = compare(&db, RAW_GROUP);
    let a = &report["accuracy"];
    // BTC: [0, 60) s settled and equal; [60, 70) differs (5 of its 10 updates stored), [70, 100)
    // are only in the stream: the raw consumer is behind on partition 0 (its bound is its
    // latest row, T0 + 64 s, less the 5 s watermark). ETH: [10, 20) holds the late message the
    // aggregator has not read yet; the 9 others match.
    assert_eq!(counts(a), [15, 5, 0, 0, 0], "{a}");
    assert_eq!(
        code,
        Some(0),
        "--fail-on-mismatch ignores pending: {stderr}"
    );
    assert_eq!(a["passed"], true);
    for s in [0, 10, 20, 30, 40, 50] {
        assert_eq!(status(&report, "BTC/USD", T0 + s * SEC), "match", "BTC {s}");
    }
    for s in [60, 70, 80, 90] {
        assert_eq!(
            status(&report, "BTC/USD", T0 + s * SEC),
            "pending",
            "BTC {s}"
        );
    }
    assert_eq!(status(&report, "ETH/USD", T0 + 10 * SEC), "pending");
    let settlement = &report["settlement"];
    assert_eq!(settlement["derived"], true, "{settlement}");
    let p0 = &settlement["partitions"][0];
    assert_eq!(
        (
            p0["raw_next_offset"].as_i64(),
            p0["aggregator_next_offset"].as_i64()
        ),
        (Some(65), Some(100))
    );
    assert_eq!(
        p0["settled_until_us"].as_i64(),
        Some(T0 + 64 * SEC - WATERMARK)
    );
    assert_eq!(report["update_count_mismatches"], 0, "{report}");

    // A settled window that differs is still a failure.
    let corrupt = |by: f64| {
        sqlx::query(
            "UPDATE stream_agg SET max_rate = max_rate + ? WHERE asset_id_base = 'BTC' AND start_time = ?",
        )
        .bind(by)
        .bind(lagging::time(T0 + 10 * SEC))
        .execute(&db.pool)
    };
    corrupt(1.0).await.unwrap();
    let (code, report, stderr) = compare(&db, RAW_GROUP);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(counts(&report["accuracy"]), [14, 5, 1, 0, 0]);
    assert_eq!(report["accuracy"]["worst"][0]["start_us"], T0 + 10 * SEC);
    corrupt(-1.0).await.unwrap();

    // The wrong raw-consumer group: nothing is known to be unsettled, the verdict is strict.
    let (code, report, _) = compare(&db, "not-the-raw-consumer");
    assert_eq!(code, Some(1));
    assert_eq!(counts(&report["accuracy"]), [15, 0, 2, 0, 3]);
    let note = report["settlement"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("RAW_CONSUMER_GROUP"), "{note}");

    // Both consumers catch up: every window is settled and matches.
    lagging::catch_up(&db).await;
    let (code, report, stderr) = compare(&db, RAW_GROUP);
    assert_eq!(
        counts(&report["accuracy"]),
        [20, 0, 0, 0, 0],
        "{}",
        report["accuracy"]
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["update_count_checked"], 18, "{report}");
    assert_eq!(report["update_count_mismatches"], 0);
    let text = service_command(env!("CARGO_BIN_EXE_compare"), &db, "127.0.0.1:1")
        .args(["--group", GROUP, "--raw-group", RAW_GROUP])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("pending windows"), "{text}");
}

/// compare is held between its read of the batch side and its read of the stream (a lock on
/// `stream_agg`) while the raw consumer and the aggregator commit a new window and a changed
/// one: it reports the state as of its snapshot, both sides equal; the next run sees both
/// commits, equal again. Read at different moments, the sides would disagree (the new window
/// extra, the changed one differing).
#[tokio::test(flavor = "multi_thread")]
async fn rows_committed_between_the_reads_do_not_make_the_sides_disagree() {
    let db = TestDb::new().await;
    lagging::spec(&db).await;
    lagging::stream(&db, &lagging::all(), &[(0, 100), (1, 100)]).await;
    lagging::raw(&db, &lagging::all(), &[(0, 100), (1, 100)]).await;

    let mut locker = db.connect_options().connect().await.unwrap();
    locker
        .execute("LOCK TABLES stream_agg WRITE")
        .await
        .unwrap();
    let pool = db.pool.clone();
    let run = tokio::spawn(async move { compare::build_report(&pool, &source(), false).await });
    wait_for_metadata_lock(&db).await;

    // Meanwhile: the raw consumer stores BTC's window [100, 110) s and one more ETH update in
    // [0, 10) s; the aggregator writes both windows (its offsets: its table is locked here).
    let mut btc = lagging::events(0, 100..110);
    let extra_eth = lagging::Event {
        base: "ETH",
        partition: 1,
        offset: 100,
        time_us: T0 + SEC / 2,
        rate: 123.0,
    };
    let mut raw_new = btc.clone();
    raw_new.push(extra_eth);
    lagging::raw(&db, &raw_new, &[(0, 110), (1, 101)]).await;
    let mut eth = lagging::events(1, 0..10);
    eth.push(extra_eth);
    btc.extend(eth);
    for ((base, start), w) in lagging::windows(&btc) {
        lagging::upsert_window(&mut locker, base, start, &w, false).await;
    }
    locker.execute("UNLOCK TABLES").await.unwrap();

    let report = run.await.unwrap().unwrap().sections.remove(0);
    let a = &report.accuracy;
    assert_eq!(
        (a.matched, a.pending, a.mismatches, a.missing, a.extra),
        (20, 0, 0, 0, 0),
        "as of the snapshot: {a:?}"
    );
    assert!(
        report.windows["BTC/USD"]
            .iter()
            .all(|w| w.start_us < T0 + 100 * SEC),
        "the window committed after the snapshot is on neither side"
    );
    let report = compare::build_report(&db.pool, &source(), false)
        .await
        .unwrap()
        .sections
        .remove(0);
    let a = &report.accuracy;
    assert_eq!((a.matched, a.mismatches, a.extra), (21, 0, 0), "{a:?}");
    let eth0 = &report.windows["ETH/USD"][0];
    assert_eq!(
        (eth0.stream.unwrap().count, eth0.batch.unwrap().count),
        (11, 11)
    );
}

fn source() -> SourceArgs {
    SourceArgs {
        group: GROUP.into(),
        window: None,
        slide: None,
        pair: None,
        since: None,
        until: None,
        raw_group: RAW_GROUP.into(),
    }
}

/// Waits until a session of this database waits for the lock on `stream_agg` (compare, between
/// its reads).
async fn wait_for_metadata_lock(db: &TestDb) {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE db = ? AND state LIKE '%metadata lock%' AND info LIKE '%stream_agg%'",
        )
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "compare never waited for stream_agg"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
