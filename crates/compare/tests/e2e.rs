//! End to end on the real broker and MariaDB: simulated updates with jitter, duplicates and late
//! events through all five services, the aggregator computing three window specs at once
//! (`--windows 10s,1m,30s/10s`), one of each service killed with SIGKILL mid-run and restarted;
//! `compare --fail-on-mismatch` passes with a section per spec and its JSON says so; a corrupted
//! `stream_agg` row of one spec makes it fail and names the spec and the window; the HTML report
//! carries its data (per spec) and chart script; `--window` picks one spec (an unknown one is an
//! error naming the setting); `--pair`, `--since` and `--until` narrow the report.
//!
//! Needs the aggregator that computes several specs (`--windows`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use testkit::{
    service_command,
    services::{log_dir, log_to, pipeline_command, service_binary},
    TestDb, TestKafka,
};

/// The aggregator's window specs, as `--windows` takes them.
const SPECS: &str = "10s,1m,30s/10s";
/// The report's sections, in the group's order (size, then slide).
const LABELS: [&str; 3] = ["10s", "30s/10s", "1m"];

/// The report's section of `label`.
fn section<'a>(json: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    json["sections"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["label"] == label))
        .unwrap_or_else(|| panic!("no section {label}: {json}"))
}

struct Pipeline<'a> {
    db: &'a TestDb,
    kafka: &'a TestKafka,
    raw: String,
    agg: String,
    logs: PathBuf,
}

impl Pipeline<'_> {
    fn cmd(&self, name: &str) -> Command {
        if name == "stream-aggregator" {
            return self.aggregator();
        }
        let mut c = pipeline_command(name, self.db, self.kafka, (&self.raw, &self.agg));
        c.stderr(log_to(&self.logs, name));
        if name == "producer" {
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
        c
    }

    /// The aggregator as `pipeline_command` starts it, with the three specs at once instead of
    /// its one `--window`.
    fn aggregator(&self) -> Command {
        let bin = service_binary("stream-aggregator");
        let mut c = service_command(
            bin.to_str().unwrap(),
            self.db,
            &self.kafka.bootstrap_servers,
        );
        c.env("RAW_TOPIC", &self.raw)
            .env("AGG_TOPIC", &self.agg)
            .env("AGGREGATOR_GROUP", self.kafka.group("agg"))
            .env("KAFKA_SESSION_TIMEOUT", "6s")
            .args([
                "--windows",
                SPECS,
                "--watermark",
                "5s",
                "--idle-timeout",
                "3s",
            ])
            .args(["--flush-interval", "100ms"])
            .stdout(std::process::Stdio::null())
            .stderr(log_to(&self.logs, "stream-aggregator"));
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
            .env("RAW_CONSUMER_GROUP", self.kafka.group("raw"))
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
    assert_eq!(json["passed"], true, "{json}");
    let labels: Vec<&str> = json["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, LABELS, "a section per spec, in order");
    for label in LABELS {
        check_section(section(&json, label), label);
    }
    assert!(
        section(&json, "10s")["accuracy"]["matched"]
            .as_u64()
            .unwrap()
            >= 16,
        "{}",
        section(&json, "10s")["accuracy"]
    );
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM comparison_runs WHERE passed")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 3, "a row per spec");
    check_filters(p, section(&json, "10s"));
    check_wrong_group(p);
}

/// One spec's section: it passed, the update counts agree, both consumers drained (nothing
/// pending), each spec's own windows.
fn check_section(s: &serde_json::Value, label: &str) {
    let a = &s["accuracy"];
    assert_eq!(a["passed"], true, "{label}: {a}");
    assert!(a["matched"].as_u64() > Some(0), "{label}: {a}");
    assert_eq!(s["update_count_mismatches"], 0, "{label}");
    assert!(s["update_count_checked"].as_u64() > Some(0), "{label}: {s}");
    assert_eq!(a["pending"], 0, "{label}: {a}");
    let size = s["spec"]["size_us"].as_i64().unwrap();
    for (pair, list) in s["windows"].as_object().unwrap() {
        for w in list.as_array().unwrap() {
            let (start, end) = (
                w["start_us"].as_i64().unwrap(),
                w["end_us"].as_i64().unwrap(),
            );
            assert_eq!(end - start, size, "{label} {pair}: {w}");
        }
    }
    // Drained: both consumers at the same offsets on every partition, nothing pending.
    let settlement = &s["settlement"];
    assert_eq!(settlement["derived"], true, "{label}: {settlement}");
    let partitions = settlement["partitions"].as_array().unwrap();
    // (Offsets are stored for the partitions that received messages.)
    assert!(!partitions.is_empty(), "{settlement}");
    assert!(
        partitions
            .iter()
            .all(|p| p["raw_next_offset"] == p["aggregator_next_offset"]),
        "{settlement}"
    );
}

/// A `--group` that is not the aggregator's (a typo), or a `--window` that is none of its specs,
/// stops with a configuration error naming the setting; a scope with no window of either side
/// compares nothing, and the report says so and fails.
fn check_wrong_group(p: &Pipeline<'_>) {
    let group = p.kafka.group("agg");
    let typo = format!("{group}-typo");
    let run = |extra: &[&str]| {
        let out = service_command(
            env!("CARGO_BIN_EXE_compare"),
            p.db,
            &p.kafka.bootstrap_servers,
        )
        .env("RAW_CONSUMER_GROUP", p.kafka.group("raw"))
        .args(extra)
        .output()
        .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, _, stderr) = run(&["--group", &typo]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("AGGREGATOR_GROUP") && stderr.contains("no window spec recorded"),
        "{stderr}"
    );
    // 7 s windows: the group has none.
    let (code, _, stderr) = run(&["--group", &group, "--window", "7s"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("WINDOW") && stderr.contains("10s, 30s/10s, 1m"),
        "names the setting and lists the group's specs: {stderr}"
    );
    // --window picks one.
    let (code, stdout, stderr) = run(&["--group", &group, "--window", "30s", "--slide", "10s"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("30s/10s") && !stdout.contains("1m: 60 s windows"),
        "{stdout}"
    );
    // No pair of that name: nothing compared.
    let (code, stdout, stderr) = run(&[
        "--group",
        &group,
        "--pair",
        "NONE/USD",
        "--fail-on-mismatch",
    ]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAIL"),
        "the report says it failed:\n{stdout}"
    );
    assert!(stderr.contains("nothing was compared"), "{stderr}");
}

/// `--pair`, `--since` and `--until` narrow the report to the windows asked for.
fn check_filters(p: &Pipeline<'_>, full: &serde_json::Value) {
    let all = full["windows"].as_object().expect("windows by pair");
    let pair = all.keys().next().unwrap().clone();
    let starts: Vec<i64> = all[&pair]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["start_us"].as_i64().unwrap())
        .collect();
    let (since, until) = (starts[1], starts[starts.len() - 2]);
    let iso = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339()
    };
    let out = p.compare(&[
        "--format",
        "json",
        "--fail-on-mismatch",
        "--window",
        "10s",
        "--pair",
        &pair,
        "--since",
        &iso(since),
        "--until",
        &iso(until),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["sections"].as_array().map(Vec::len),
        Some(1),
        "--window 10s only"
    );
    let json = section(&json, "10s");
    let windows = json["windows"].as_object().unwrap();
    assert_eq!(windows.keys().collect::<Vec<_>>(), vec![&pair]);
    let got: Vec<i64> = windows[&pair]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["start_us"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = starts
        .iter()
        .copied()
        .filter(|s| (since..until).contains(s))
        .collect();
    assert_eq!(got, want, "windows of {pair} in [since, until)");
    assert_eq!(
        json["accuracy"]["windows_compared"].as_u64(),
        Some(want.len() as u64)
    );
}

/// The HTML report: self-contained (chart script inlined, no external resource) with its data:
/// every pair's windows, stream beside batch, and the latency histogram. (The browser test checks
/// that the charts render.)
fn check_html_report(p: &Pipeline<'_>, dir: &Path) {
    let html_path = dir.join("report.html");
    let out = p.compare(&["--format", "html", "--output", html_path.to_str().unwrap()]);
    assert!(out.status.success());
    let html = std::fs::read_to_string(&html_path).unwrap();
    let _ = std::fs::remove_file(&html_path);
    assert!(html.contains("CoinCharts"), "the chart script is inlined");
    assert!(!html.contains("src=\"http"), "no external script");
    let open = "<script type=\"application/json\" id=\"report-data\">";
    let from = html.find(open).expect("report data") + open.len();
    let to = from + html[from..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[from..to]).unwrap();
    let sections = data["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 3, "a section per spec");
    for s in sections {
        let label = s["label"].as_str().unwrap();
        assert!(
            html.contains(&format!("<section class=\"spec\" data-window=\"{label}\">")),
            "{label}"
        );
        let windows = s["windows"].as_object().expect("windows by pair");
        assert!(
            windows.len() >= 4,
            "{label}: one chart per pair: {:?}",
            windows.keys()
        );
        for (pair, list) in windows {
            let list = list.as_array().unwrap();
            assert!(!list.is_empty(), "{label} {pair} has windows");
            assert!(
                list.iter().any(|w| w["status"] == "match"
                    && w["stream"].is_object()
                    && w["batch"].is_object()
                    && w["first_rate"].is_number()
                    && w["last_rate"].is_number()),
                "{label} {pair}: a window where stream and batch agree, with its candle"
            );
        }
    }
    assert!(data["latency_histogram"]
        .as_array()
        .is_some_and(|h| !h.is_empty()));
}

/// A corrupted row fails the check and is named.
async fn check_a_corrupted_row_is_named(p: &Pipeline<'_>) {
    let db = p.db;
    let group = p.kafka.group("agg");
    let (base, quote, start): (String, String, chrono::NaiveDateTime) = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_time FROM stream_agg \
         WHERE consumer_group = ? AND window_us = 30000000 AND slide_us = 10000000 AND is_final \
         ORDER BY start_time LIMIT 1",
    )
    .bind(&group)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE stream_agg SET max_rate = max_rate + 1 WHERE consumer_group = ? AND window_us = 30000000 \
         AND slide_us = 10000000 AND asset_id_base = ? AND asset_id_quote = ? AND start_time = ?",
    )
    .bind(&group)
    .bind(&base)
    .bind(&quote)
    .bind(start)
    .execute(&db.pool)
    .await
    .unwrap();
    let out = p.compare(&["--format", "json", "--fail-on-mismatch"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], false);
    // Only that spec's section: the others' windows of the same pair and start are theirs.
    for label in ["10s", "1m"] {
        assert_eq!(section(&json, label)["accuracy"]["passed"], true, "{label}");
    }
    let json = section(&json, "30s/10s");
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
        err.contains(&format!("{base}/{quote}")) && err.contains("max") && err.contains("30s/10s"),
        "{err}"
    );
}
