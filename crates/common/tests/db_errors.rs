//! Database errors classified against the real server: what the data causes is `Rejected` (the
//! writers split the batch to find it), what the server or connection causes is `Transient`
//! (retried with backoff). Through the fault proxy: a lost COMMIT reply and a cut connection are
//! transient errors.

use std::time::Duration;

use common::retry::{classify, Failure};
use sqlx::{mysql::MySqlPoolOptions, Connection, Executor, MySqlConnection};
use testkit::{proxy::FaultProxy, test_mysql_url, TestDb};

async fn error_of(conn: &mut MySqlConnection, sql: &str) -> sqlx::Error {
    conn.execute(sql)
        .await
        .expect_err(&format!("{sql} should fail"))
}

#[tokio::test(flavor = "multi_thread")]
async fn data_errors_are_rejected_and_server_errors_transient() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap().detach();
    conn.execute(
        "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(4) NOT NULL, n TINYINT, d DATETIME(6), \
         r DOUBLE, CONSTRAINT small CHECK (r < 100))",
    )
    .await
    .unwrap();
    conn.execute("INSERT INTO t (id, name) VALUES (1, 'a')")
        .await
        .unwrap();
    for (sql, what) in [
        (
            "INSERT INTO t (id, name) VALUES (2, 'toolong')",
            "data too long",
        ),
        (
            "INSERT INTO t (id, name, n) VALUES (3, 'a', 1000)",
            "out of range",
        ),
        (
            "INSERT INTO t (id, name) VALUES (4, NULL)",
            "null in NOT NULL",
        ),
        (
            "INSERT INTO t (id, name, d) VALUES (5, 'a', 'yesterday')",
            "incorrect datetime",
        ),
        (
            "INSERT INTO t (id, name, r) VALUES (6, 'a', 150)",
            "check constraint",
        ),
        ("INSERT INTO t (id, name) VALUES (1, 'b')", "duplicate key"),
        (
            "INSERT INTO t (id, name, n) VALUES (7, 'a', 'x')",
            "incorrect integer value",
        ),
    ] {
        let e = error_of(&mut conn, sql).await;
        assert_eq!(classify(&e), Failure::Rejected, "{what}: {e}");
    }
    for (sql, what) in [
        ("SELECT * FROM no_such_table", "unknown table"),
        ("INSERT INTO t (id, nope) VALUES (9, 1)", "unknown column"),
        ("SELEC 1", "syntax"),
    ] {
        let e = error_of(&mut conn, sql).await;
        assert_eq!(classify(&e), Failure::Transient, "{what}: {e}");
    }
    // A lock wait timeout: another connection holds the row.
    let mut other = db.pool.acquire().await.unwrap().detach();
    other.execute("BEGIN").await.unwrap();
    other
        .execute("UPDATE t SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    let e = error_of(&mut conn, "UPDATE t SET n = 2 WHERE id = 1").await;
    assert_eq!(classify(&e), Failure::Transient, "lock wait timeout: {e}");
    other.execute("ROLLBACK").await.unwrap();
    let _ = other.close().await;
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadlock_is_transient() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    sqlx::query("CREATE TABLE d (id INT PRIMARY KEY, n INT)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO d VALUES (1, 0), (2, 0)")
        .execute(pool)
        .await
        .unwrap();
    let mut a = pool.acquire().await.unwrap().detach();
    let mut b = pool.acquire().await.unwrap().detach();
    a.execute("BEGIN").await.unwrap();
    b.execute("BEGIN").await.unwrap();
    a.execute("UPDATE d SET n = 1 WHERE id = 1").await.unwrap();
    b.execute("UPDATE d SET n = 1 WHERE id = 2").await.unwrap();
    let first = tokio::spawn(async move {
        let r = a
            .execute("UPDATE d SET n = 2 WHERE id = 2")
            .await
            .map(|_| ());
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = b
        .execute("UPDATE d SET n = 2 WHERE id = 1")
        .await
        .map(|_| ());
    let (_a, first) = first.await.unwrap();
    let e = first
        .err()
        .or(second.err())
        .expect("one of the two is the deadlock victim");
    assert_eq!(classify(&e), Failure::Transient, "deadlock: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_commit_reply_is_transient_and_the_commit_happened() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE c (id INT PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    let server = test_mysql_url();
    let host = server.rsplit_once('@').map_or("127.0.0.1:3306", |(_, h)| h);
    let user = server
        .trim_start_matches("mysql://")
        .rsplit_once('@')
        .map_or("coinstream_test:coinstream_test", |(u, _)| u)
        .to_owned();
    let proxy = FaultProxy::start(host).await;
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&proxy.database_url(&user, &db.name))
        .await
        .unwrap();
    proxy.drop_commit_replies(1, 1);
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO c VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = tx.commit().await.expect_err("the reply was swallowed");
    assert_eq!(classify(&e), Failure::Transient, "{e}");
    assert_eq!(proxy.commit_replies_dropped(), 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM c")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        n, 1,
        "the server committed although the client never heard so"
    );
    // A statement cut mid-transaction is rolled back.
    proxy.cut_after_statement("INSERT INTO c VALUES (2)", 1);
    let mut tx = pool.begin().await.unwrap();
    let e = sqlx::raw_sql("INSERT INTO c VALUES (2)")
        .execute(&mut *tx)
        .await
        .expect_err("the connection was cut");
    assert_eq!(classify(&e), Failure::Transient, "{e}");
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM c")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the cut transaction was rolled back");
    // Unreachable: connections fail; reachable again: they work.
    proxy.unreachable(true);
    let e = sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect_err("unreachable");
    assert_eq!(classify(&e), Failure::Transient, "{e}");
    proxy.unreachable(false);
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .expect("reachable again");
}
