//! `dashboard-load`: how fast `compare serve` answers: `/api/windows` for one pair (each request
//! timed, every window of the pair) and the page's first load in headless Chromium, from
//! navigation start to every chart drawn (`window.__coinstream.readyAt`, set by the page).
//! Needs ChromeDriver and Chromium (`scripts/infra.sh up` installs them).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use fantoccini::ClientBuilder;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// The dashboard, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    /// The pair whose windows are fetched.
    #[arg(long)]
    pair: String,
    #[arg(long, default_value_t = 50)]
    requests: usize,
    #[arg(long, default_value_t = 5)]
    page_loads: usize,
    #[arg(
        long,
        env = "COINSTREAM_TEST_CHROMEDRIVER",
        default_value = "chromedriver"
    )]
    chromedriver: String,
    #[arg(long, env = "COINSTREAM_TEST_CHROMIUM", default_value = "chromium")]
    chromium: String,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50={:.1} ms p95={:.1} ms max={:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        ms[ms.len() - 1]
    );
}

async fn api(args: &Args) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{}/api/windows", args.url);
    let mut times = Vec::new();
    let mut windows = 0;
    for _ in 0..args.requests {
        let started = Instant::now();
        let body: Value = http
            .get(&url)
            .query(&[("pair", &args.pair)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        windows = body["windows"].as_array().map_or(0, Vec::len);
    }
    summary(
        &format!("/api/windows?pair={} ({windows} windows)", args.pair),
        times,
    );
    Ok(())
}

/// Headless Chromium through ChromeDriver: the session, the driver and the profile directory.
async fn browser(args: &Args) -> anyhow::Result<(fantoccini::Client, Child, PathBuf)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let driver = Command::new(&args.chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let profile = std::env::temp_dir().join(format!("dashboard-load-{}", std::process::id()));
    let caps = json!({
        "goog:chromeOptions": {
            "binary": args.chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps = caps.as_object().cloned().unwrap_or_default();
    let started = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return Ok((c, driver, profile)),
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("no WebDriver session: {e}"),
        }
    }
}

/// One fresh load: (ms to every chart drawn, ms to the last data response, charts drawn).
async fn load_once(client: &fantoccini::Client, url: &str) -> anyhow::Result<(f64, f64, u64)> {
    client.goto("about:blank").await?;
    client.goto(url).await?;
    let waited = Instant::now();
    let ready = loop {
        let v = client
            .execute(
                "const s = window.__coinstream; return s && s.readyAt || null;",
                vec![],
            )
            .await?;
        if let Some(ms) = v.as_f64() {
            break ms;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "the page never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let charts = client
        .execute(
            "return document.querySelectorAll('svg.pair-chart').length;",
            vec![],
        )
        .await?
        .as_u64()
        .unwrap_or(0);
    // When the last of the page's data requests ended (resource timing).
    let last = client
        .execute(
            "return Math.max(0, ...performance.getEntriesByType('resource')\
             .filter(e => e.name.includes('/api/')).map(e => e.responseEnd));",
            vec![],
        )
        .await?;
    if std::env::var_os("DASHBOARD_LOAD_DEBUG").is_some() {
        let entries = client
            .execute(
                "return performance.getEntriesByType('resource').map(e => \
                 [e.name.replace(location.origin, ''), Math.round(e.startTime), Math.round(e.responseStart), Math.round(e.responseEnd)]);",
                vec![],
            )
            .await?;
        eprintln!("{entries}");
    }
    Ok((ready, last.as_f64().unwrap_or(0.0), charts))
}

async fn page(args: &Args) -> anyhow::Result<()> {
    let (client, mut driver, profile) = browser(args).await?;
    let mut loads = Vec::new();
    let mut data = Vec::new();
    let mut charts = 0;
    for _ in 0..args.page_loads {
        let (ready, last, drawn) = load_once(&client, &args.url).await?;
        loads.push(ready);
        data.push(last);
        charts = drawn;
    }
    summary(
        &format!("first page load, navigation to {charts} charts drawn"),
        loads,
    );
    summary(
        "  the page's data requests, navigation to the last response",
        data,
    );
    let _ = client.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = std::fs::remove_dir_all(profile);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    api(&args).await?;
    page(&args).await
}
