//! `compare serve` on real MariaDB, over tables written as the consumers write them:
//! - more event streams than `--max-clients` get 503 with a JSON reason; a client that stops
//!   taking its events is cut (its slot freed, its socket closed) while a reading one goes on;
//! - `/healthz` (and the API) answer at once while the poller's query waits on a table lock;
//! - `stream_agg` changes are found by the database's clock: a row stamped ahead of it hides no
//!   later change, and one stamped 8 s behind (a writer's clock, within the margin) is seen;
//! - the verdict counts the windows the pipeline has not settled as pending, until both
//!   consumers caught up.

mod lagging;
mod serving;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lagging::{GROUP, RAW_GROUP, SEC, T0, WINDOW};
use serde_json::Value;
use serving::Serve;
use sqlx::{ConnectOptions, Executor};
use testkit::{services::tail, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The lagging pipeline's groups, then `extra`.
fn group_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--group", GROUP, "--raw-group", RAW_GROUP];
    args.extend_from_slice(extra);
    args
}

/// `count` final windows of 10 s for each of `bases`, from T0 (no raw rows: extra, but shown).
async fn windows(db: &TestDb, bases: &[&str], count: i64) {
    for base in bases {
        for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|k| {
                    let t = |us: i64| lagging::time(us).format("%Y-%m-%d %H:%M:%S%.6f").to_string();
                    let s = T0 + k * WINDOW;
                    format!(
                        "('{GROUP}', {WINDOW}, {WINDOW}, '{}', '{}', '{base}', 'USD', 3, 2.0, 1.0, 3.0, 6.0, 1.0, 3.0, '{}', TRUE, UTC_TIMESTAMP(6))",
                        t(s),
                        t(s + WINDOW),
                        t(s + WINDOW - 1)
                    )
                })
                .collect();
            sqlx::query(&format!(
                "INSERT INTO stream_agg (consumer_group, window_us, slide_us, start_time, end_time, \
                 asset_id_base, asset_id_quote, update_count, avg_rate, min_rate, max_rate, sum_rate, \
                 first_rate, last_rate, last_event_time, is_final, updated_at) \
                 VALUES {}",
                values.join(",")
            ))
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
}

/// An event stream whose client reads everything, counting the bytes (once it is served).
async fn reading_client(url: String) -> Arc<AtomicU64> {
    let mut r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = r.chunk().await {
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    bytes
}

/// An event stream whose client reads the response's head, then nothing more (a small receive
/// buffer, so that it fills soon).
async fn stalled_client(port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before its head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_beyond_the_cap_get_503_and_a_stalled_client_is_cut() {
    let db = TestDb::new().await;
    lagging::spec(&db).await;
    windows(&db, &["AAA", "BBB", "CCC"], 1000).await;
    let serve = Serve::start(&db, "serve-clients", &group_args(&["--max-clients", "2"])).await;

    let reader = reading_client(serve.url("/events")).await;
    let mut stalled = stalled_client(serve.port).await;
    // Both slots taken: a third stream is refused, with the reason.
    let r = reqwest::get(serve.url("/events")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let e = body["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("too many clients") && e.contains("COMPARE_MAX_CLIENTS"),
        "{body}"
    );

    // Windows change all the time: events of hundreds of kB flow to both clients.
    let pool = db.pool.clone();
    let load = tokio::spawn(async move {
        loop {
            sqlx::query(
                "UPDATE stream_agg SET update_count = update_count + 1, sum_rate = sum_rate + 2, \
                 updated_at = UTC_TIMESTAMP(6)",
            )
            .execute(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The stalled client is cut: its slot is free again.
    let started = Instant::now();
    loop {
        let r = reqwest::get(serve.url("/events")).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stalled client was never cut:\n{}",
            tail(&serve.log, 20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cut_at = Instant::now();
    assert!(
        std::fs::read_to_string(&serve.log)
            .unwrap_or_default()
            .contains("does not take its events: cut"),
        "{}",
        tail(&serve.log, 20)
    );
    // Its connection is closed: what it holds is read to the end.
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the stalled client's connection is still open"
    );
    // The reading client goes on.
    let before = reader.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        reader.load(Ordering::SeqCst) > before,
        "the reading client stopped receiving ({before} bytes, cut {:?} ago)",
        cut_at.elapsed()
    );
    load.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_at_once_while_a_query_is_held_up() {
    let db = TestDb::new().await;
    lagging::spec(&db).await;
    windows(&db, &["AAA"], 10).await;
    let serve = Serve::start(&db, "serve-healthz", &group_args(&[])).await;
    // Healthy first (a read of the tables succeeded just now), so the 5 s below stay within the
    // 10 s /healthz allows without a read, even on a loaded machine.
    let ready = Instant::now();
    while reqwest::get(serve.url("/healthz"))
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(ready.elapsed() < Duration::from_secs(30), "never healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The poller reads service_stats every second: it waits on this lock.
    let mut locker = db.connect_options().connect().await.unwrap();
    locker
        .execute("LOCK TABLES service_stats WRITE")
        .await
        .unwrap();
    let started = Instant::now();
    let mut held_seen = false;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    while started.elapsed() < Duration::from_secs(5) {
        for path in ["/healthz", "/api/meta", "/api/pipeline"] {
            let t = Instant::now();
            let r = client.get(serve.url(path)).send().await;
            let took = t.elapsed();
            let status = r.as_ref().map(|r| r.status().as_u16()).ok();
            assert_eq!(status, Some(200), "{path} while a query is held: {r:?}");
            assert!(took < Duration::from_millis(500), "{path} took {took:?}");
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE db = ? AND state LIKE '%metadata lock%' AND info LIKE '%service_stats%'",
        )
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        held_seen |= waiting > 0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(held_seen, "the poller's query never waited on the lock");
    locker.execute("UNLOCK TABLES").await.unwrap();
}

/// The stream windows of BTC/USD on the page, by start.
async fn btc_starts(serve: &Serve) -> Vec<i64> {
    let w = serve.json("/api/windows?pair=BTC/USD").await.unwrap();
    w["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["stream"].is_object())
        .map(|w| w["start_us"].as_i64().unwrap())
        .collect()
}

/// A BTC/USD window starting at `T0 + s` seconds, stamped `stamp` (SQL).
async fn stamped(db: &TestDb, s: i64, stamp: &str) {
    let w = lagging::Window {
        count: 1,
        sum: 1.0,
        min: 1.0,
        max: 1.0,
        first: 1.0,
        last: 1.0,
        last_time: T0 + s * SEC,
    };
    let mut c = db.pool.acquire().await.unwrap();
    lagging::upsert_window(&mut c, "BTC", T0 + s * SEC, &w, false).await;
    sqlx::query(&format!(
        "UPDATE stream_agg SET updated_at = {stamp} WHERE asset_id_base = 'BTC' AND start_time = ?"
    ))
    .bind(lagging::time(T0 + s * SEC))
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn until_shown(serve: &Serve, s: i64, limit: Duration) {
    let started = Instant::now();
    while !btc_starts(serve).await.contains(&(T0 + s * SEC)) {
        assert!(
            started.elapsed() < limit,
            "window {s} s not shown within {limit:?}: {:?}",
            btc_starts(serve).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_found_by_the_database_clock() {
    let db = TestDb::new().await;
    lagging::spec(&db).await;
    stamped(&db, 0, "UTC_TIMESTAMP(6)").await;
    let serve = Serve::start(&db, "serve-clock", &group_args(&[])).await;
    assert_eq!(btc_starts(&serve).await, vec![T0]);

    // A writer whose clock runs 60 s ahead.
    stamped(&db, 10, "UTC_TIMESTAMP(6) + INTERVAL 60 SECOND").await;
    until_shown(&serve, 10, Duration::from_secs(2)).await;
    // Later changes stamped by the database's clock are not hidden behind it.
    stamped(&db, 20, "UTC_TIMESTAMP(6)").await;
    until_shown(&serve, 20, Duration::from_secs(2)).await;
    // A writer 8 s behind (within the 10 s margin).
    stamped(&db, 30, "UTC_TIMESTAMP(6) - INTERVAL 8 SECOND").await;
    until_shown(&serve, 30, Duration::from_secs(2)).await;

    // The pipeline panel's time is the database's.
    let db_now: i64 = sqlx::query_scalar(
        "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) AS SIGNED)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let now = serve.json("/api/pipeline").await.unwrap()["now_us"].as_i64();
    assert!(
        now.is_some_and(|n| (n - db_now).abs() < 2_000_000),
        "{now:?} vs {db_now}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verdict_counts_windows_not_settled_as_pending() {
    let db = TestDb::new().await;
    lagging::lagging(&db).await;
    let serve = Serve::start(&db, "serve-pending", &group_args(&[])).await;
    let a = serve
        .accuracy_until("pending while the raw consumer is behind", |a| {
            a["pending"] == 5
        })
        .await;
    assert_eq!(
        (&a["matched"], &a["mismatches"], &a["extra"], &a["passed"]),
        (&15.into(), &0.into(), &0.into(), &true.into()),
        "{a}"
    );
    let w = serve.json("/api/windows?pair=BTC/USD").await.unwrap();
    let w70 = w["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start_us"] == T0 + 70 * SEC)
        .cloned()
        .unwrap_or_default();
    assert_eq!(w70["status"], "pending", "{w70}");
    assert!(
        w70["what"]
            .as_str()
            .is_some_and(|s| s.contains("raw consumer is behind")),
        "{w70}"
    );

    lagging::catch_up(&db).await;
    let a = serve
        .accuracy_until("all settled and matching once caught up", |a| {
            a["matched"] == 20
        })
        .await;
    assert_eq!(
        (&a["pending"], &a["passed"]),
        (&0.into(), &true.into()),
        "{a}"
    );
}
