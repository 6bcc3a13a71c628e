//! `compare serve` in a real browser: Debian's Chromium, driven through ChromeDriver (WebDriver,
//! by fantoccini), over a pipeline running on the real broker and MariaDB.
//!
//! The page loads without a console error (Chromium's own console log, read through ChromeDriver,
//! and the page's error catcher) and draws a chart per pair; windows the running
//! aggregator writes appear on the page within 2 s; a window made to differ from batch is marked;
//! the pair selector shows one chart; a malformed message's dead letters are listed on the
//! pipeline panel (count not replayed, service, reason, error), and one replayed leaves the
//! count; the database going away is said on the page, which recovers by itself when it returns; so is the server going away, and the page reconnects to its
//! restart. The static HTML report draws the same charts. The test saves a screenshot
//! (`target/dashboard.png`; `COINSTREAM_DASHBOARD_PNG=path` saves it there too, which is how
//! `docs/dashboard.png` is made).

mod browser;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use browser::Browser;
use serde_json::{json, Value};
use testkit::proxy::FaultProxy;
use testkit::{
    prometheus::free_port,
    service_command,
    services::{log_dir, log_to, pipeline_command, terminate, wait_for},
    TestDb, TestKafka,
};

/// How soon a window row must reach the page.
const PAGE_DEADLINE: Duration = Duration::from_secs(2);

struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn chart_selector(pair: &str) -> String {
    format!("svg.pair-chart[data-pair=\"{pair}\"]")
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_follows_a_running_pipeline() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let topics = (
        kafka.create_topic("raw", 2).await,
        kafka.create_topic("agg", 2).await,
    );
    let logs = log_dir("dashboard");
    let spawn = |name: &str, extra: &[&str]| {
        pipeline_command(name, &db, &kafka, (&topics.0, &topics.1))
            .stderr(log_to(&logs, name))
            .args(extra)
            .spawn()
            .unwrap()
    };
    let mut services = Services(vec![
        spawn("raw-consumer", &[]),
        spawn("stream-aggregator", &["--flush-interval", "200ms"]),
        spawn(
            "producer",
            &[
                "--source",
                "simulate",
                "--seed",
                "11",
                "--rate",
                "60",
                "--pair-count",
                "3",
            ],
        ),
    ]);
    let proxy = FaultProxy::for_test_server().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = service_command(env!("CARGO_BIN_EXE_compare"), &db, &kafka.bootstrap_servers);
    serve
        // The dashboard needs nothing but SELECT: it runs on an account that may do nothing else.
        .env("DATABASE_URL", proxy.url_via(&db.reader_database_url()))
        .env("RAW_CONSUMER_GROUP", kafka.group("raw"))
        .args(["serve", "--group", &kafka.group("agg")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log_to(&logs, "compare-serve"));
    services.0.push(serve.spawn().unwrap());
    check_reader_cannot_write(&db).await;
    wait_healthy(&base).await;
    check_healthcheck_flag(&db, port);
    check_api_rejects_bad_input(&base).await;

    let browser = Browser::start(&logs).await;
    browser.client.goto(&base).await.unwrap();
    assert!(
        browser
            .until(
                "return document.querySelectorAll('svg.pair-chart g.window').length > 0 \
                 && document.querySelectorAll('svg.pair-chart').length === 3;",
                Duration::from_secs(60),
            )
            .await,
        "a chart per pair with windows within 60 s (logs: {})",
        logs.display()
    );
    let pairs = pairs(&db).await;
    assert_eq!(pairs.len(), 3, "{pairs:?}");
    check_page_structure(&browser, &pairs).await;
    check_report_api(&base).await;

    let delays = new_windows_reach_the_page(&browser, &db, &pairs[0]).await;
    println!("row written → on the page: {delays:?}");
    check_a_difference_is_marked(&browser, &db, &pairs[1]).await;
    check_pair_selector(&browser, &pairs[2]).await;
    check_dead_letters(&browser, &db, &kafka, &topics.0, &base).await;
    // Up to here nothing went wrong on purpose: the console holds no error at all.
    assert_eq!(
        browser.console_errors().await,
        Vec::<Value>::new(),
        "Chromium's console"
    );
    screenshot(&browser).await;
    check_database_down_and_back(&browser, &proxy).await;
    // The server restarted: the page says it lost the connection, reconnects by itself and
    // follows the new server.
    let old = services.0.pop().unwrap();
    serve.stderr(log_to(&logs, "compare-serve-restarted"));
    check_server_restart(&browser, old, &mut serve, &mut services).await;
    assert_eq!(browser.errors().await, json!([]), "console errors");

    for c in &services.0 {
        terminate(c);
    }
    for c in &mut services.0 {
        wait_for(c, Duration::from_secs(30)).await;
    }
    check_static_report(&browser, &db, &kafka, &logs).await;
    browser.close().await;
}

/// The account `compare serve` runs on here reads the tables and may not change them: it reads
/// a row written by the test, and its attempt to delete it is refused (the row stays).
async fn check_reader_cannot_write(db: &TestDb) {
    use sqlx::{ConnectOptions, Connection};
    let id = sqlx::query(
        "INSERT INTO comparison_runs (run_at, consumer_group, window_us, slide_us, windows_compared, \
         mismatches, missing, extra, open_windows, passed, batch_seconds, report) \
         VALUES (UTC_TIMESTAMP(6), 'reader-check', 1, 1, 7, 0, 0, 0, 0, TRUE, 0, '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap()
    .last_insert_id();
    let options: sqlx::mysql::MySqlConnectOptions = db.reader_database_url().parse().unwrap();
    let mut reader = options
        .connect()
        .await
        .expect("the read-only account connects");
    let read: Option<(String, i64)> =
        sqlx::query_as("SELECT consumer_group, windows_compared FROM comparison_runs WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut reader)
            .await
            .expect("the read-only account reads");
    assert_eq!(
        read,
        Some(("reader-check".to_owned(), 7)),
        "the reader sees the row"
    );
    let write = sqlx::query("DELETE FROM comparison_runs WHERE id = ?")
        .bind(id)
        .execute(&mut reader)
        .await;
    let denied = write
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code());
    assert_eq!(
        denied.as_deref(),
        Some("42000"),
        "a write as the reader is refused: {write:?}"
    );
    let _ = reader.close().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM comparison_runs WHERE id = ?")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the row the reader tried to delete is still there");
    sqlx::query("DELETE FROM comparison_runs WHERE id = ?")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Dead letters not replayed, by the database.
async fn dead_letters_not_replayed(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits until the page's count of dead letters not replayed is the database's (at least
/// `least`); returns it.
async fn page_counts_dead_letters(browser: &Browser, db: &TestDb, least: i64) -> i64 {
    let started = Instant::now();
    loop {
        let want = dead_letters_not_replayed(db).await;
        let shown = browser
            .eval("return document.getElementById('dead-letters-count').textContent;")
            .await;
        if want >= least && shown == json!(want.to_string()) {
            return want;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page shows {shown} dead letters, the database has {want} (at least {least})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message that is not a rate update: the consumers keep it as a dead letter, and the pipeline
/// panel lists it (service, reason, the error) with the count not replayed; one replayed leaves
/// the count. `/api/pipeline` says the same.
async fn check_dead_letters(
    browser: &Browser,
    db: &TestDb,
    kafka: &TestKafka,
    topic: &str,
    base: &str,
) {
    kafka
        .produce(
            topic,
            &[("BTC/USD".to_owned(), b"{\"time\": not json".to_vec())],
        )
        .await;
    // The raw consumer's and the aggregator's (both read the topic).
    let listed = "const rows = [...document.querySelectorAll('#dead-letters tbody tr')]; \
                  const r = rows.find(r => r.dataset.service === 'raw-consumer'); \
                  return !!r && rows.some(r => r.dataset.service === 'stream-aggregator') \
                  && r.dataset.reason === 'malformed' && r.children[1].textContent === 'malformed' \
                  && r.children[2].textContent.length > 0 \
                  && !document.getElementById('dead-letters').classList.contains('hidden');";
    assert!(
        browser.until(listed, Duration::from_secs(20)).await,
        "both consumers' dead letters are listed, with their reason and error"
    );
    let before = page_counts_dead_letters(browser, db, 2).await;
    let api: Value = reqwest::get(format!("{base}/api/pipeline"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &api["dead_letters"];
    assert!(d["not_replayed"].as_i64() >= Some(before), "{d}");
    assert!(
        d["newest"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l["service"] == "raw-consumer" && l["reason"] == "malformed")),
        "{d}"
    );
    // A replay applied the raw consumer's: it is no longer counted or listed.
    sqlx::query(
        "UPDATE dead_letters SET replayed_at = UTC_TIMESTAMP(6) WHERE service = 'raw-consumer'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let after = page_counts_dead_letters(browser, db, 0).await;
    assert!(
        after < before,
        "{after} not replayed after the replay, {before} before"
    );
    assert!(
        browser
            .until(
                "return !document.querySelector('#dead-letters tr[data-service=\"raw-consumer\"]');",
                Duration::from_secs(5),
            )
            .await,
        "the replayed dead letter is no longer listed"
    );
}

async fn wait_healthy(base: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("compare serve did not answer /healthz within 30 s");
}

/// `compare serve --healthcheck` (compose's healthcheck): 0 against the running dashboard, 1
/// where nothing listens.
fn check_healthcheck_flag(db: &TestDb, port: u16) {
    let status = |port: u16| {
        service_command(env!("CARGO_BIN_EXE_compare"), db, "127.0.0.1:1")
            .args([
                "serve",
                "--healthcheck",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(status(port).success());
    assert_eq!(status(free_port()).code(), Some(1));
}

/// Bad input: 400 with a JSON error naming what is wrong; it never reaches SQL.
async fn check_api_rejects_bad_input(base: &str) {
    for (query, says) in [
        ("pair=BTC%27%3B%20DROP%20TABLE%20stream_agg", "pair"),
        ("pair=BTCUSD", "pair"),
        ("", "pair is required"),
        ("pair=BTC/USD&since=yesterday", "since"),
        ("pair=BTC/USD&until=2024-13-45T00:00:00Z", "until"),
        ("pair=BTC/USD&limit=0", "limit"),
    ] {
        let r = reqwest::get(format!("{base}/api/windows?{query}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{query}: {body}");
    }
}

async fn pairs(db: &TestDb) -> Vec<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT asset_id_base, asset_id_quote FROM stream_agg ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(b, q)| format!("{b}/{q}")).collect()
}

/// `/api/report`: the JSON report of the live state, shaped as `compare --format json`'s.
async fn check_report_api(base: &str) {
    let r = reqwest::get(format!("{base}/api/report")).await.unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    let sections = report["sections"].as_array().cloned().unwrap_or_default();
    assert_eq!(sections.len(), 1, "the aggregator's one spec: {report}");
    assert_eq!(sections[0]["label"], "10s");
    let report = &sections[0];
    assert!(
        report["accuracy"]["windows_compared"].as_u64() > Some(0),
        "{}",
        report["accuracy"]
    );
    assert_eq!(
        report["windows"].as_object().map(serde_json::Map::len),
        Some(3),
        "windows of the three pairs"
    );
    assert!(report["services"].as_array().is_some_and(|s| !s.is_empty()));
}

/// Axes with labels, a legend, the pipeline panel with the running services, the window spec.
async fn check_page_structure(browser: &Browser, pairs: &[String]) {
    for pair in pairs {
        let sel = chart_selector(pair);
        let found = browser
            .eval(&format!(
                "const s = document.querySelector('{sel}'); return s && [\
                 s.querySelectorAll('.x-axis text').length, s.querySelectorAll('.y-axis text').length, \
                 s.querySelectorAll('.legend text').length];"
            ))
            .await;
        let counts: Vec<u64> = serde_json::from_value(found.clone()).unwrap_or_default();
        assert!(
            counts.len() == 3 && counts.iter().all(|n| *n >= 2),
            "{pair}: axis labels and legend {found}"
        );
    }
    assert!(
        browser
            .until(
                "const s = [...document.querySelectorAll('#pipeline tbody tr')].map(r => r.dataset.service); \
                 return ['producer', 'raw-consumer', 'stream-aggregator'].every(x => s.includes(x));",
                Duration::from_secs(20),
            )
            .await,
        "the pipeline panel lists the running services"
    );
    let spec = browser
        .eval("return document.getElementById('spec').textContent;")
        .await;
    assert!(
        spec.as_str().is_some_and(|s| s.contains("10 s")),
        "window spec shown: {spec}"
    );
}

/// Newest window start of `pair` in `stream_agg`.
async fn newest_window(db: &TestDb, pair: &str) -> Option<chrono::NaiveDateTime> {
    let (base, quote) = pair.split_once('/').unwrap();
    sqlx::query_scalar(
        "SELECT MAX(start_time) FROM stream_agg WHERE asset_id_base = ? AND asset_id_quote = ?",
    )
    .bind(base)
    .bind(quote)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn window_selector(pair: &str, start: chrono::NaiveDateTime) -> String {
    format!(
        "{} g.window[data-start=\"{}\"]",
        chart_selector(pair),
        start.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
}

/// Three windows the aggregator opens while the page is watching: each is on the page within 2 s
/// of being seen in MySQL. Returns the delays.
async fn new_windows_reach_the_page(browser: &Browser, db: &TestDb, pair: &str) -> Vec<Duration> {
    let mut known = newest_window(db, pair).await;
    let mut delays = Vec::new();
    let started = Instant::now();
    while delays.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the aggregator opened too few windows: {delays:?}"
        );
        let newest = newest_window(db, pair).await;
        if newest <= known {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        known = newest;
        let seen = Instant::now();
        let sel = window_selector(pair, newest.unwrap());
        let on_page = browser
            .until(
                &format!("return document.querySelector('{sel}') !== null;"),
                PAGE_DEADLINE,
            )
            .await;
        let delay = seen.elapsed();
        assert!(
            on_page,
            "window {sel} not on the page within {PAGE_DEADLINE:?}"
        );
        delays.push(delay);
    }
    delays
}

/// A final window changed behind the pipeline's back: the page marks it as differing.
async fn check_a_difference_is_marked(browser: &Browser, db: &TestDb, pair: &str) {
    let (base, quote) = pair.split_once('/').unwrap();
    let start: chrono::NaiveDateTime = sqlx::query_scalar(
        "SELECT MIN(start_time) FROM stream_agg WHERE asset_id_base = ? AND asset_id_quote = ? AND is_final",
    )
    .bind(base)
    .bind(quote)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let sel = window_selector(pair, start);
    assert_eq!(
        browser
            .eval(&format!(
                "const g = document.querySelector('{sel}'); return g && g.dataset.status;"
            ))
            .await,
        json!("match"),
        "{sel} agrees with batch before the change"
    );
    sqlx::query(
        "UPDATE stream_agg SET max_rate = max_rate * 2, updated_at = UTC_TIMESTAMP(6) \
         WHERE asset_id_base = ? AND asset_id_quote = ? AND start_time = ?",
    )
    .bind(base)
    .bind(quote)
    .bind(start)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        browser
            .until(
                &format!(
                    "const g = document.querySelector('{sel}'); \
                     return !!g && g.dataset.status === 'differs' && !!g.querySelector('.diff-mark');"
                ),
                PAGE_DEADLINE,
            )
            .await,
        "the changed window is marked as differing within {PAGE_DEADLINE:?}"
    );
    let summary = browser
        .eval("return document.getElementById('summary').textContent;")
        .await;
    assert!(
        summary.as_str().is_some_and(|s| s.contains("differ 1")),
        "summary counts it: {summary}"
    );
}

async fn check_pair_selector(browser: &Browser, pair: &str) {
    browser
        .eval(&format!(
            "const s = document.getElementById('pair'); s.value = '{pair}'; \
             s.dispatchEvent(new Event('change')); return true;"
        ))
        .await;
    let visible = "return [...document.querySelectorAll('section.chart')]\
                   .filter(s => !s.classList.contains('hidden')).map(s => s.dataset.pair);";
    assert_eq!(browser.eval(visible).await, json!([pair]));
    browser
        .eval(
            "const s = document.getElementById('pair'); s.value = ''; \
             s.dispatchEvent(new Event('change')); return true;",
        )
        .await;
    assert_eq!(
        browser.eval(visible).await.as_array().map(Vec::len),
        Some(3)
    );
}

async fn screenshot(browser: &Browser) {
    let png = browser.client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // The target directory (this test runs as target/<profile>/deps/dashboard-*), wherever it is.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().join("dashboard.png");
    std::fs::write(&target, &png).unwrap();
    if let Ok(path) = std::env::var("COINSTREAM_DASHBOARD_PNG") {
        std::fs::write(path, &png).unwrap();
    }
}

/// The database stops answering: the page says so within 10 s; it comes back: the banner goes
/// and new windows flow again.
async fn check_database_down_and_back(browser: &Browser, proxy: &FaultProxy) {
    proxy.unreachable(true);
    let banner = "const b = document.getElementById('banner'); \
                  return !b.classList.contains('hidden') && b.textContent.includes('database does not answer');";
    assert!(
        browser.until(banner, Duration::from_secs(15)).await,
        "the page says the database is down"
    );
    proxy.unreachable(false);
    assert!(
        browser
            .until(
                "return document.getElementById('banner').classList.contains('hidden');",
                Duration::from_secs(20),
            )
            .await,
        "the page recovers when the database is back"
    );
}

async fn check_server_restart(
    browser: &Browser,
    mut old: Child,
    serve: &mut Command,
    services: &mut Services,
) {
    let _ = old.kill();
    let _ = old.wait();
    assert!(
        browser
            .until(
                "return document.getElementById('banner').textContent.includes('Connection to compare serve lost');",
                Duration::from_secs(10),
            )
            .await,
        "the page says the server is gone"
    );
    services.0.push(serve.spawn().unwrap());
    assert!(
        browser
            .until(
                "return document.getElementById('banner').classList.contains('hidden') \
                 && document.querySelectorAll('svg.pair-chart').length === 3;",
                Duration::from_secs(30),
            )
            .await,
        "the page reconnects to the restarted server"
    );
}

/// The static HTML report draws the same charts, with no error.
async fn check_static_report(browser: &Browser, db: &TestDb, kafka: &TestKafka, logs: &Path) {
    let path = logs.join("report.html");
    let out = service_command(env!("CARGO_BIN_EXE_compare"), db, &kafka.bootstrap_servers)
        .args(["--group", &kafka.group("agg"), "--format", "html"])
        .args(["--output", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        path.exists(),
        "report written: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the dashboard's induced failures (database down, server restarted) logged.
    let induced = browser.console_errors().await;
    println!("console errors while failures were induced: {induced:?}");
    browser
        .client
        .goto(&format!("file://{}", path.display()))
        .await
        .unwrap();
    assert!(
        browser
            .until(
                "return document.querySelectorAll('svg.pair-chart').length === 3 \
                 && document.querySelectorAll('svg.pair-chart .x-axis text').length > 0 \
                 && document.querySelectorAll('svg.latency-histogram rect.bar').length > 0 \
                 && document.querySelectorAll('svg.pair-chart g.window.status-differs .diff-mark').length === 1;",
                Duration::from_secs(10),
            )
            .await,
        "the report's charts, with the changed window marked"
    );
    assert_eq!(browser.errors().await, json!([]), "report console errors");
    assert_eq!(
        browser.console_errors().await,
        Vec::<Value>::new(),
        "Chromium's console on the report"
    );
}
