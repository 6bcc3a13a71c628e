//! compare on one database shared by aggregator groups that each compute several window specs
//! (real MariaDB; the tables written as the services write them):
//! - two groups, with a spec of the same size in both: the report on one reads only its group's
//!   and spec's rows (stream windows, update counts, late events), never the other's: no window
//!   extra or differing, and each spec's late events leave only that spec's windows;
//! - a group with several specs: a section per spec, each matching (table, JSON, Markdown and
//!   HTML); `--window` picks one; an unknown `--window` is an error naming the setting and
//!   listing the group's specs; `--fail-on-mismatch` fails when one spec differs, naming it;
//! - the services' figures are the group's run's own, never another group's aggregator or a
//!   later run's services: in the one-shot report and on `compare serve`'s pipeline panel.

mod serving;
mod specs;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::window::WindowSpec;
use serde_json::Value;
use specs::{Event, Stats, SEC, T0};
use testkit::{service_command, services::tail, TestDb};

const A: &str = "agg-a";
const B: &str = "agg-b";
const RAW: &str = "raw";

fn s(n: i64) -> i64 {
    n * SEC
}

/// `compare --group <group> --raw-group raw <extra>`: exit code, stdout, stderr.
fn compare(db: &TestDb, group: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = service_command(env!("CARGO_BIN_EXE_compare"), db, "127.0.0.1:1")
        .args(["--group", group, "--raw-group", RAW])
        .args(extra)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `compare --format json --fail-on-mismatch` for `group` (and `extra`): it passes; its report.
fn passing(db: &TestDb, group: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json", "--fail-on-mismatch"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = compare(db, group, &args);
    assert_eq!(code, Some(0), "{group}: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn labels(report: &Value) -> Vec<String> {
    report["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap().to_owned())
        .collect()
}

fn section<'a>(report: &'a Value, label: &str) -> &'a Value {
    report["sections"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["label"] == label))
        .unwrap_or_else(|| panic!("no section {label}: {report}"))
}

/// Every window of the section matches, all `windows` of them, each of its spec's length; its
/// update counts agree.
fn all_match(report: &Value, label: &str, windows: usize) {
    let sec = section(report, label);
    let a = &sec["accuracy"];
    let counts: Vec<u64> = [
        "matched",
        "mismatches",
        "missing",
        "extra",
        "pending",
        "open",
    ]
    .iter()
    .map(|k| a[k].as_u64().unwrap())
    .collect();
    assert_eq!(counts, [windows as u64, 0, 0, 0, 0, 0], "{label}: {a}");
    assert_eq!(a["passed"], true, "{label}");
    assert_eq!(
        (
            sec["update_count_checked"].as_u64(),
            sec["update_count_mismatches"].as_u64()
        ),
        (Some(windows as u64), Some(0)),
        "{label}"
    );
    let size = sec["spec"]["size_us"].as_i64().unwrap();
    for list in sec["windows"].as_object().unwrap().values() {
        for w in list.as_array().unwrap() {
            assert_eq!(
                w["end_us"].as_i64().unwrap() - w["start_us"].as_i64().unwrap(),
                size
            );
            assert_eq!(w["status"], "match", "{label}: {w}");
        }
    }
}

/// The counts of one window on both sides.
fn counts(report: &Value, label: &str, pair: &str, start_us: i64) -> (i64, i64) {
    let w = section(report, label)["windows"][pair]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start_us"] == start_us)
        .cloned()
        .unwrap_or_else(|| panic!("{label} {pair} {start_us}: no window"));
    (
        w["stream"]["count"].as_i64().unwrap(),
        w["batch"]["count"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_reads_only_its_groups_and_specs_rows() {
    let db = TestDb::new().await;
    let all = specs::events(&["BTC", "ETH"], 120);
    specs::raw(&db, &all).await;
    let (s10, s20, s30) = (
        WindowSpec::tumbling(s(10)),
        WindowSpec::tumbling(s(20)),
        WindowSpec::sliding(s(30), s(10)),
    );
    // Group A: 10 s and 20 s windows of every update.
    let mut n: BTreeMap<(&str, WindowSpec), usize> = BTreeMap::new();
    for spec in [s10, s20] {
        specs::record(&db, A, spec).await;
        n.insert((A, spec), specs::stream(&db, A, spec, &all).await);
    }
    // Group B: 10 s windows too (the same rows' keys as A's but for the group), three updates
    // late for them (left out of them only); and 30 s windows every 10 s of every update.
    let late: Vec<Event> = vec![all[15], all[47], all[120 + 10]];
    let applied: Vec<Event> = all.iter().filter(|e| !late.contains(e)).copied().collect();
    specs::record(&db, B, s10).await;
    n.insert((B, s10), specs::stream(&db, B, s10, &applied).await);
    for e in &late {
        specs::late(&db, B, s10, e).await;
    }
    specs::record(&db, B, s30).await;
    n.insert((B, s30), specs::stream(&db, B, s30, &all).await);

    let a = passing(&db, A, &[]);
    assert_eq!(labels(&a), ["10s", "20s"]);
    all_match(&a, "10s", n[&(A, s10)]);
    all_match(&a, "20s", n[&(A, s20)]);
    // A's window holding B's late update counts it, on both sides.
    assert_eq!(counts(&a, "10s", "BTC/USD", T0 + s(10)), (10, 10));
    assert_eq!(counts(&a, "20s", "BTC/USD", T0), (20, 20));

    let b = passing(&db, B, &[]);
    assert_eq!(labels(&b), ["10s", "30s/10s"]);
    all_match(&b, "10s", n[&(B, s10)]);
    all_match(&b, "30s/10s", n[&(B, s30)]);
    // B's late updates are out of its 10 s windows (both sides), not its 30 s ones.
    assert_eq!(counts(&b, "10s", "BTC/USD", T0 + s(10)), (9, 9));
    assert_eq!(counts(&b, "10s", "ETH/USD", T0 + s(10)), (9, 9));
    assert_eq!(counts(&b, "30s/10s", "BTC/USD", T0), (30, 30));
    assert_eq!(counts(&b, "30s/10s", "BTC/USD", T0 - s(20)), (10, 10));

    let runs: Vec<(String, i64, i64, bool)> = sqlx::query_as(
        "SELECT consumer_group, window_us, slide_us, passed FROM comparison_runs ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        runs,
        vec![
            (A.into(), s(10), s(10), true),
            (A.into(), s(20), s(20), true),
            (B.into(), s(10), s(10), true),
            (B.into(), s(30), s(10), true),
        ],
        "a row per group and spec"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_specs_a_section_each_and_window_picks_one() {
    let db = TestDb::new().await;
    let all = specs::events(&["BTC", "ETH", "SOL"], 150);
    specs::raw(&db, &all).await;
    let specs = [
        WindowSpec::tumbling(s(10)),
        WindowSpec::sliding(s(30), s(10)),
        WindowSpec::tumbling(s(60)),
    ];
    let mut n = Vec::new();
    for spec in specs {
        specs::record(&db, A, spec).await;
        n.push(specs::stream(&db, A, spec, &all).await);
    }
    let report = passing(&db, A, &[]);
    assert_eq!(labels(&report), ["10s", "30s/10s", "1m"]);
    assert_eq!(report["passed"], true);
    for (label, n) in ["10s", "30s/10s", "1m"].iter().zip(&n) {
        all_match(&report, label, *n);
    }
    // Candles: the stream's first and last rates.
    let w = &section(&report, "1m")["windows"]["BTC/USD"][1];
    assert_eq!(
        (w["first_rate"].as_f64(), w["last_rate"].as_f64()),
        (Some(all[60].rate), Some(all[119].rate)),
        "{w}"
    );

    // --window picks one.
    let one = passing(&db, A, &["--window", "1m"]);
    assert_eq!(labels(&one), ["1m"]);
    all_match(&one, "1m", n[2]);
    let one = passing(&db, A, &["--window", "30s", "--slide", "10s"]);
    assert_eq!(labels(&one), ["30s/10s"]);
    // A spec the group does not have: an error naming the setting and listing its specs.
    for window in [&["--window", "7s"][..], &["--window", "30s"]] {
        let (code, _, stderr) = compare(&db, A, window);
        assert_eq!(code, Some(2), "{window:?}: {stderr}");
        assert!(
            stderr.contains("WINDOW") && stderr.contains("10s, 30s/10s, 1m"),
            "{window:?}: {stderr}"
        );
    }
    let (code, _, stderr) = compare(&db, "agg-none", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("AGGREGATOR_GROUP") && stderr.contains("no window spec recorded"),
        "{stderr}"
    );

    check_renderings(&db);
    check_one_spec_differs(&db).await;
}

/// The table, Markdown and HTML reports: a section per spec.
fn check_renderings(db: &TestDb) {
    let (code, table, stderr) = compare(db, A, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for title in [
        "10s: 10 s windows",
        "30s/10s: 30 s windows every 10 s",
        "1m: 60 s windows",
    ] {
        assert!(table.contains(title), "{title}:\n{table}");
    }
    assert!(
        table.contains("3 window specs (10s, 30s/10s, 1m): PASS"),
        "{table}"
    );
    let (_, md, _) = compare(db, A, &["--format", "markdown"]);
    for h in [
        "## Window 10s:",
        "## Window 30s/10s:",
        "## Window 1m:",
        "## Services",
    ] {
        assert!(md.contains(h), "{h}:\n{md}");
    }
    let (_, html, _) = compare(db, A, &["--format", "html"]);
    for label in ["10s", "30s/10s", "1m"] {
        assert!(
            html.contains(&format!("<section class=\"spec\" data-window=\"{label}\">")),
            "{label}"
        );
    }
}

/// One spec's window changed: `--fail-on-mismatch` fails, naming that spec; the other sections
/// still pass.
async fn check_one_spec_differs(db: &TestDb) {
    sqlx::query(
        "UPDATE stream_agg SET max_rate = max_rate + 1 WHERE consumer_group = ? AND window_us = ? \
         AND slide_us = ? AND asset_id_base = 'ETH' AND start_time = ?",
    )
    .bind(A)
    .bind(s(60))
    .bind(s(60))
    .bind(specs::time(T0 + s(60)))
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, stdout, stderr) = compare(db, A, &["--format", "json", "--fail-on-mismatch"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("window 1m") && stderr.contains("ETH/USD") && stderr.contains("max"),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(section(&report, "1m")["accuracy"]["mismatches"], 1);
    for label in ["10s", "30s/10s"] {
        assert_eq!(
            section(&report, label)["accuracy"]["passed"],
            true,
            "{label}"
        );
    }
}

/// A finished run of group A two hours ago and a later run of group B, on one database.
async fn two_runs(db: &TestDb) {
    let runs = [
        (A, 7200, 6600, [111, 222, 333, 444], 7.0),
        (B, 600, 0, [999, 888, 777, 666], 99.0),
    ];
    for (group, from_s, to_s, events, p50_ms) in runs {
        let services = [
            ("stream-aggregator", Some(group)),
            ("raw-consumer", Some(RAW)),
            ("producer", None),
            ("update-counter", Some("cnt")),
        ];
        for ((service, g), events_in) in services.into_iter().zip(events) {
            let instance = format!("host:{service}:{group}");
            specs::stats(
                db,
                Stats {
                    service,
                    group: g,
                    instance: &instance,
                    from_s,
                    to_s,
                    events_in,
                    p50_ms,
                },
            )
            .await;
        }
    }
}

/// `service: events in` of a list of services.
fn events_in(services: &Value) -> BTreeMap<String, i64> {
    services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["events_in"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn figures(pairs: [(&str, i64); 4]) -> BTreeMap<String, i64> {
    pairs.into_iter().map(|(s, n)| (s.to_owned(), n)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_of_another_group_or_a_later_run_are_not_shown() {
    let db = TestDb::new().await;
    let all = specs::events(&["BTC"], 30);
    specs::raw(&db, &all).await;
    for group in [A, B] {
        specs::record(&db, group, WindowSpec::tumbling(s(10))).await;
        specs::stream(&db, group, WindowSpec::tumbling(s(10)), &all).await;
    }
    two_runs(&db).await;
    let a_figures = figures([
        ("producer", 333),
        ("raw-consumer", 222),
        ("stream-aggregator", 111),
        ("update-counter", 444),
    ]);
    let a = section(&passing(&db, A, &[]), "10s").clone();
    assert_eq!(events_in(&a["services"]), a_figures, "{}", a["services"]);
    assert_eq!(a["stream_latency_ms"][0].as_f64(), Some(7.0));
    let b = section(&passing(&db, B, &[]), "10s").clone();
    assert_eq!(
        events_in(&b["services"]),
        figures([
            ("producer", 777),
            ("raw-consumer", 888),
            ("stream-aggregator", 999),
            ("update-counter", 666),
        ])
    );
    assert_eq!(b["stream_latency_ms"][0].as_f64(), Some(99.0));

    // compare serve on the finished run: its pipeline panel and report show A's run.
    let serve =
        serving::Serve::start(&db, "groups-services", &["--group", A, "--raw-group", RAW]).await;
    let started = Instant::now();
    let panel = loop {
        let p = serve.json("/api/pipeline").await.unwrap();
        if p["services"].as_array().is_some_and(|s| s.len() == 4) {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{p}\n{}",
            tail(&serve.log, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(events_in(&panel["services"]), a_figures, "{panel}");
    let agg = panel["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "stream-aggregator")
        .unwrap();
    assert_eq!(agg["latency"]["p50_ms"].as_f64(), Some(7.0), "{agg}");
    assert_eq!(agg["stale"], true, "a finished run's aggregator: {agg}");
    let report = serve.json("/api/report").await.unwrap();
    assert_eq!(events_in(&report["sections"][0]["services"]), a_figures);
}
