//! End to end on the real broker and MariaDB: simulated updates with jitter, duplicates and late
//! events through all five services, one of each killed with SIGKILL mid-run and restarted;
//! `compare --fail-on-mismatch` passes and its JSON says so; a corrupted `stream_agg` row makes it
//! fail and names the window; the HTML report is well-formed and holds the charts.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use common::testing::{
    service_command,
    services::{log_dir, log_to, pipeline_command},
    TestDb, TestKafka,
};

struct Pipeline<'a> {
    db: &'a TestDb,
    kafka: &'a TestKafka,
    raw: String,
    agg: String,
    logs: PathBuf,
}

impl Pipeline<'_> {
    fn cmd(&self, name: &str) -> Command {
        let mut c = pipeline_command(name, self.db, self.kafka, (&self.raw, &self.agg));
        c.stderr(log_to(&self.logs, name));
        match name {
            "stream-aggregator" => {
                c.args(["--flush-interval", "100ms"]);
            }
            "producer" => {
                c.args([
                    "--source",
                    "simulate",
                    "--seed",
                    "3",
                    "--count",
                    "20000",
                    "--rate",
                    "4000",
                    "--pair-count",
                    "4",
                    "--event-interval",
                    "2ms",
                    "--event-start",
                    "2024-08-05T12:00:00Z",
                    "--jitter",
                    "300ms",
                    "--late-fraction",
                    "0.01",
                    "--late-by",
                    "60s",
                    "--duplicate-fraction",
                    "0.02",
                ]);
            }
            _ => {}
        }
        c
    }

    fn spawn(&self, name: &str, extra: &[&str]) -> Child {
        self.cmd(name).args(extra).spawn().unwrap()
    }

    fn compare(&self, extra: &[&str]) -> std::process::Output {
        let mut c = service_command(
            env!("CARGO_BIN_EXE_compare"),
            self.db,
            &self.kafka.bootstrap_servers,
        );
        c.args(["--group", &self.kafka.group("agg")])
            .args(extra)
            .output()
            .unwrap()
    }
}

fn kill_after(mut child: Child, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn five_services_with_kills_then_compare() {
    let db = TestDb::new().await;
    let kafka = TestKafka::new();
    let p = Pipeline {
        db: &db,
        kafka: &kafka,
        raw: kafka.create_topic("raw", 3).await,
        agg: kafka.create_topic("agg", 3).await,
        logs: log_dir("e2e"),
    };
    run_with_kills(&p).await;
    check_tables_and_report(&p).await;
    check_html_report(&p, &p.logs);
    check_a_corrupted_row_is_named(&p).await;
}

/// Every service runs; one of each is SIGKILLed mid-run and restarted; all drain and exit 0.
async fn run_with_kills(p: &Pipeline<'_>) {
    // Consumers first (they wait for data); then the producer, killed once mid-run and restarted
    // (the same seed and event clock: the restart republishes, the pipeline deduplicates).
    let raw = p.spawn("raw-consumer", &[]);
    let agg = p.spawn("stream-aggregator", &[]);
    let cnt = p.spawn("update-counter", &[]);
    kill_after(p.spawn("producer", &[]), 2500);
    let producer = p.spawn("producer", &[]);
    // One of each consumer killed mid-run and restarted once its session has expired (a broker
    // only hands a dead member's partitions on after that).
    kill_after(raw, 500);
    kill_after(agg, 200);
    kill_after(cnt, 200);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let idle = ["--exit-idle", "10s"];
    let mut rest = [
        p.spawn("raw-consumer", &idle),
        p.spawn("stream-aggregator", &idle),
        p.spawn("update-counter", &idle),
    ];
    let status = tokio::task::spawn_blocking(move || {
        let mut producer = producer;
        producer.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "producer");
    for c in rest.iter_mut() {
        assert!(c.wait().unwrap().success());
    }
}

/// Every distinct update stored once, late events recorded, and compare passes (JSON, stored).
async fn check_tables_and_report(p: &Pipeline<'_>) {
    let db = p.db;
    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM late_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let raw_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM raw_coin_data")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(late > 50, "late events reached the aggregator: {late}");
    assert_eq!(raw_rows, 20_000, "every distinct update stored once");

    let out = p.compare(&["--format", "json", "--fail-on-mismatch"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["accuracy"]["passed"], true, "{json}");
    assert!(
        json["accuracy"]["matched"].as_u64().unwrap() >= 16,
        "{}",
        json["accuracy"]
    );
    assert_eq!(json["update_count_mismatches"], 0);
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM comparison_runs WHERE passed")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);
}

/// The HTML report: well-formed, with both charts.
fn check_html_report(p: &Pipeline<'_>, dir: &Path) {
    let html_path = dir.join("report.html");
    let out = p.compare(&["--format", "html", "--output", html_path.to_str().unwrap()]);
    assert!(out.status.success());
    let html = std::fs::read_to_string(&html_path).unwrap();
    let _ = std::fs::remove_file(&html_path);
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&html, options)
        .expect("the HTML report is well-formed");
    let svgs: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("svg"))
        .collect();
    assert!(svgs
        .iter()
        .any(|n| n.attribute("class") == Some("latency-histogram")));
    assert!(
        svgs.iter()
            .filter(|n| n.attribute("class") == Some("averages"))
            .count()
            >= 4,
        "one chart per pair"
    );
    assert!(
        doc.descendants().any(|n| n.has_tag_name("rect")),
        "histogram bars"
    );
    assert!(
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count()
            >= 8,
        "stream and batch lines"
    );
}

/// A corrupted row fails the check and is named.
async fn check_a_corrupted_row_is_named(p: &Pipeline<'_>) {
    let db = p.db;
    let (base, quote, start): (String, String, chrono::NaiveDateTime) = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time FROM stream_agg WHERE is_final ORDER BY start_time LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE stream_agg SET max_rate = max_rate + 1 WHERE asset_id_base = ? AND asset_id_quote = ? AND start_time = ?")
        .bind(&base)
        .bind(&quote)
        .bind(start)
        .execute(&db.pool)
        .await
        .unwrap();
    let out = p.compare(&["--format", "json", "--fail-on-mismatch"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["accuracy"]["passed"], false);
    assert_eq!(json["accuracy"]["mismatches"], 1);
    let worst = &json["accuracy"]["worst"][0];
    assert_eq!(
        (worst["base"].as_str(), worst["quote"].as_str()),
        (Some(base.as_str()), Some(quote.as_str()))
    );
    assert_eq!(
        worst["start_us"].as_i64(),
        Some(start.and_utc().timestamp_micros())
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{base}/{quote}")) && err.contains("max"),
        "{err}"
    );
}
