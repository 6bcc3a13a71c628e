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
    let upsert = "INSERT INTO coin_update_count (start_time, end_time, asset_id_base, asset_id_quote, update_count) \
                  VALUES ('2024-01-01 00:00:00', '2024-01-01 00:05:00', 'BTC', 'USD', ?) \
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
