//! Migrations on a real MySQL-compatible server: they apply, are idempotent, survive concurrent
//! start-ups, and give the keys the original lacked.

use sqlx::Row;
use testkit::TestDb;

async fn tables(db: &TestDb) -> Vec<String> {
    sqlx::query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

#[tokio::test]
async fn migrations_create_every_table() {
    let db = TestDb::new().await;
    let t = tables(&db).await;
    for expected in [
        "raw_coin_data",
        "stream_agg",
        "coin_update_count",
        "kafka_offsets",
        "dead_letters",
        "service_stats",
    ] {
        assert!(
            t.iter().any(|n| n == expected),
            "{expected} missing from {t:?}"
        );
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_concurrently() {
    let db = TestDb::empty().await;
    let runs = (0..4).map(|_| {
        let pool = db.pool.clone();
        let name = db.name.clone();
        tokio::spawn(async move { common::db::migrate(&pool, &name).await })
    });
    for r in futures_join(runs).await {
        r.expect("migrate task").expect("concurrent migration");
    }
    common::db::migrate(&db.pool, &db.name)
        .await
        .expect("re-run");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, common::db::MIGRATOR.iter().count());
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await);
    }
    out
}

#[tokio::test]
async fn raw_table_keeps_microseconds_and_rejects_duplicates() {
    let db = TestDb::new().await;
    let insert = "INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`) VALUES ('BTC','USD',1.5,'2024-08-05 13:35:34.374133')";
    sqlx::query(insert).execute(&db.pool).await.unwrap();
    let dup = sqlx::query(insert).execute(&db.pool).await.unwrap_err();
    assert!(dup.to_string().contains("Duplicate"), "{dup}");
    let t: chrono::NaiveDateTime = sqlx::query_scalar("SELECT `time` FROM raw_coin_data")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(t.and_utc().timestamp_subsec_micros(), 374_133);
}

#[tokio::test]
async fn window_tables_have_one_row_per_pair_and_window() {
    let db = TestDb::new().await;
    let upsert = "INSERT INTO coin_update_count (consumer_group, window_us, slide_us, start_time, end_time, \
                  asset_id_base, asset_id_quote, update_count) \
                  VALUES ('g', 300000000, 300000000, '2024-01-01 00:00:00', '2024-01-01 00:05:00', 'BTC', 'USD', ?) \
                  ON DUPLICATE KEY UPDATE update_count = VALUES(update_count)";
    for n in [3_i64, 7] {
        sqlx::query(upsert).bind(n).execute(&db.pool).await.unwrap();
    }
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT update_count FROM coin_update_count")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![(7,)]);
}

#[tokio::test]
async fn sessions_run_in_utc() {
    let db = TestDb::new().await;
    let tz: String = sqlx::query_scalar("SELECT @@session.time_zone")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tz, "+00:00");
}

/// Rows written before results were keyed by group and spec migrate as the spec their group
/// recorded (the most recent group when several recorded that length); what no recorded spec
/// explains becomes group '' with the tumbling spec of its length.
#[tokio::test]
async fn rows_from_before_groups_and_specs_migrate_as_their_groups_spec() {
    let db = TestDb::empty().await;
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            common::db::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261206000002)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&db.pool).await.unwrap();
    for sql in [
        "INSERT INTO stream_agg_spec (consumer_group, window_us, slide_us, watermark_us, mode, updated_at) VALUES \
         ('old', 300000000, 300000000, 600000000, 'update', '2026-01-01 00:00:00'), \
         ('new', 300000000, 60000000, 600000000, 'update', '2026-02-01 00:00:00'), \
         ('minute', 60000000, 60000000, 0, 'append', '2026-01-01 00:00:00')",
        "INSERT INTO stream_agg (start_time, end_time, asset_id_base, asset_id_quote, update_count, avg_rate, min_rate, \
         max_rate, sum_rate, first_rate, last_rate, last_event_time) VALUES \
         ('2026-01-01 00:00:00', '2026-01-01 00:05:00', 'BTC', 'USD', 2, 1, 1, 1, 2, 1, 1, '2026-01-01 00:01:00'), \
         ('2026-01-01 00:00:00', '2026-01-01 00:01:00', 'BTC', 'USD', 1, 1, 1, 1, 1, 1, 1, '2026-01-01 00:00:10'), \
         ('2026-01-01 00:00:00', '2026-01-01 00:00:10', 'BTC', 'USD', 1, 1, 1, 1, 1, 1, 1, '2026-01-01 00:00:01')",
        "INSERT INTO coin_update_count (start_time, end_time, asset_id_base, asset_id_quote, update_count) VALUES \
         ('2026-01-01 00:00:00', '2026-01-01 00:01:00', 'BTC', 'USD', 1)",
        "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, asset_id_base, asset_id_quote, \
         rate, `time`, watermark, windows_missed, applied) VALUES \
         ('minute', 't', 0, 5, 'BTC', 'USD', 1, '2026-01-01 00:00:00', '2026-01-01 00:02:00', 1, FALSE)",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    common::db::migrate(&db.pool, &db.name).await.unwrap();
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT consumer_group, window_us, slide_us, update_count FROM stream_agg ORDER BY window_us",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (String::new(), 10_000_000, 10_000_000, 1),
            ("minute".into(), 60_000_000, 60_000_000, 1),
            ("new".into(), 300_000_000, 60_000_000, 2),
        ]
    );
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT consumer_group, window_us FROM coin_update_count")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(counts, vec![("minute".into(), 60_000_000)]);
    let late: Vec<(i64, i64)> = sqlx::query_as("SELECT window_us, slide_us FROM late_events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(late, vec![(60_000_000, 60_000_000)]);
    let specs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stream_agg_specs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(specs, 3);
    // Two groups with one window now each have their own row.
    for group in ["a", "b"] {
        sqlx::query(
            "INSERT INTO stream_agg (consumer_group, window_us, slide_us, start_time, end_time, asset_id_base, \
             asset_id_quote, update_count, avg_rate, min_rate, max_rate, sum_rate, first_rate, last_rate, last_event_time) \
             VALUES (?, 60000000, 60000000, '2026-01-01 00:00:00', '2026-01-01 00:01:00', 'BTC', 'USD', 1, 1, 1, 1, 1, 1, 1, \
             '2026-01-01 00:00:10')",
        )
        .bind(group)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stream_agg WHERE window_us = 60000000")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 3);
}
