//! `scripts/demo.sh` as a newcomer runs it: the live dashboard's address is the first thing it
//! prints; the page at that address shows windows while the pipeline runs (Chromium); the demo
//! ends with a passing report; and what it prints works as printed: the metrics and health
//! addresses while it runs, the report files, and the command that shows the run again
//! (`scripts/demo.sh serve <run>`), run in a shell without any database setting.
//!
//! Differences from a newcomer's run, so the test fits the suite: the binaries are the suite's own
//! debug build (`DEMO_BIN`, no second build), the broker is the test broker (`DEMO_BROKER=tansu`),
//! the database, ports and run directory are the test's own, and the run is 30 s.

mod browser;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use browser::Browser;
use testkit::{
    prometheus::free_port,
    services::{log_dir, service_binary},
};

/// The settings a newcomer's shell does not have: the printed command must not need them.
const SETTINGS: [&str; 9] = [
    "DATABASE_URL",
    "MYSQL_HOST",
    "MYSQL_PORT",
    "MYSQL_USER",
    "MYSQL_PASSWORD",
    "MYSQL_DATABASE",
    "AGGREGATOR_GROUP",
    "RAW_CONSUMER_GROUP",
    "COMPARE_LISTEN",
];

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Four consecutive free ports (the demo's metrics ports), the first returned.
fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        if first > u16::MAX - n {
            continue;
        }
        let all = (first..first + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all {
            return first;
        }
    }
    panic!("no {n} consecutive free ports");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn http_ok(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Waits until `url` answers 2xx; its body.
async fn wait_ok(url: &str, limit: Duration, log: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Some(body) = http_ok(url).await {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "{url} did not answer within {limit:?}; output:\n{}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_line(path: &Path, needle: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = read(path).lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            started.elapsed() < limit,
            "no line with {needle:?} within {limit:?}; output:\n{}",
            read(path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops the demo's database, as the demo's account (the one that made it).
async fn drop_database(name: &str) {
    let url = demo_account_url().expect("scripts/infra.sh env");
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// The application account of `scripts/infra.sh` (the one the demo uses).
fn demo_account_url() -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/infra.sh"))
        .arg("env")
        .output()?;
    let env = String::from_utf8(out.stdout)?;
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{k} not in scripts/infra.sh env"))
    };
    Ok(format!(
        "mysql://{}:{}@{}:{}",
        get("MYSQL_USER")?,
        get("MYSQL_PASSWORD")?,
        get("MYSQL_HOST")?,
        get("MYSQL_PORT")?
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_shows_its_dashboard_first_and_what_it_prints_works() {
    let bin_dir = service_binary("compare")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    let root = repo_root();
    let logs = log_dir("demo");
    let run_dir = logs.join("run");
    let output = logs.join("demo.out");
    let database = format!("coinstream_demo_{}", testkit::unique_suffix());
    let serve_port = free_port();
    let metrics_port = free_ports(4);
    let file = std::fs::File::create(&output).unwrap();
    let demo = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(&root)
        .envs([
            ("DEMO_SECONDS", "30"),
            ("DEMO_BROKER", "tansu"),
            ("DEMO_DATABASE", &database),
            ("DEMO_SERVE_PORT", &serve_port.to_string()),
            ("DEMO_METRICS_PORT", &metrics_port.to_string()),
            ("LOG_FORMAT", "json"),
        ])
        .env("DEMO_BIN", &bin_dir)
        .env("DEMO_DIR", &run_dir)
        .env_remove("COINAPI_KEY")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("running scripts/demo.sh");
    let mut running = Killed(vec![demo]);
    let url = format!("http://127.0.0.1:{serve_port}");

    // The dashboard's address comes first, before anything is built or started.
    let first = wait_for_line(&output, "==>", Duration::from_secs(60)).await;
    assert!(
        first.contains("live dashboard") && first.contains(&url),
        "the first line names the dashboard at {url}: {first:?}"
    );
    wait_for_line(&output, "  dashboard ", Duration::from_secs(240)).await;
    wait_ok(&format!("{url}/readyz"), Duration::from_secs(60), &output).await;
    // The printed metrics and health addresses answer while the services run.
    for port in [metrics_port, metrics_port + 2] {
        let base = format!("http://127.0.0.1:{port}");
        wait_ok(&format!("{base}/healthz"), Duration::from_secs(10), &output).await;
        let metrics = wait_ok(&format!("{base}/metrics"), Duration::from_secs(10), &output).await;
        assert!(metrics.contains("# TYPE"), "{base}/metrics: {metrics:.200}");
    }

    // The page shows windows while the pipeline runs.
    let browser = Browser::start(&logs).await;
    browser.client.goto(&url).await.unwrap();
    let shown = browser
        .until(
            "return document.querySelectorAll('svg.pair-chart g.window').length > 0;",
            Duration::from_secs(30),
        )
        .await;
    let so_far = read(&output);
    browser.close().await;
    assert!(
        shown,
        "windows on the demo's page within 30 s; output:\n{so_far}"
    );
    assert!(
        !so_far.contains("stopping the producer"),
        "the windows were seen only after the run; output:\n{so_far}"
    );

    // The demo ends with a passing report.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.0[0].try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the demo did not end; output:\n{}",
            read(&output)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = read(&output);
    assert!(status.success(), "the demo failed; output:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("accuracy") && l.contains("PASS")),
        "a passing report; output:\n{out}"
    );
    assert!(
        out.contains("Stream latency above"),
        "what the latency includes: {out}"
    );
    for file in ["report.txt", "report.html", "stream-aggregator.log"] {
        assert!(
            run_dir.join(file).is_file(),
            "{file} in {}",
            run_dir.display()
        );
    }
    assert!(
        http_ok(&format!("{url}/readyz")).await.is_none(),
        "the dashboard stops with the demo (DEMO_SERVE_AFTER=0)"
    );

    // The last line's command, run exactly as printed in a shell that has no database settings.
    let last = out.lines().last().unwrap_or_default();
    let command = last
        .strip_prefix("live dashboard over this run: ")
        .and_then(|rest| rest.split("  (").next())
        .unwrap_or_else(|| panic!("the last line prints the dashboard command: {last:?}"));
    assert!(last.contains(&url), "{last:?}");
    let mut shell = Command::new("bash");
    shell
        .args(["-c", command])
        .current_dir(&root)
        .stdout(std::fs::File::create(logs.join("serve-again.log")).unwrap())
        .stderr(std::fs::File::create(logs.join("serve-again.err")).unwrap());
    for k in SETTINGS {
        shell.env_remove(k);
    }
    running.0.push(shell.spawn().unwrap());
    let meta = wait_ok(
        &format!("{url}/api/meta"),
        Duration::from_secs(30),
        &logs.join("serve-again.err"),
    )
    .await;
    assert!(
        meta.contains("/USD") || meta.contains("\"base\""),
        "the run's pairs on the dashboard shown again: {meta:.400}"
    );
    drop(running);
    drop_database(&database).await;
}
