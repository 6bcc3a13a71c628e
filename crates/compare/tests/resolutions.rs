//! `compare serve` for an aggregator group with several window specs (real MariaDB, the tables
//! written as the services write them):
//! - the API: `/api/meta` lists the group's specs; `?window=<label>` (URL-encoded) returns that
//!   spec's windows only (each of its length, with its counts and candle), the first spec by
//!   default; a spec the group does not have is a 400 naming `window` and listing the specs;
//!   `/api/report` has a section per spec, `?window=` one;
//! - the page, in headless Chromium: the resolution selector lists the specs; every window is a
//!   candle (open = first rate, close = last, high = max, low = min) over its count bar; switching
//!   the selector shows the other spec's candles, and a window written for the spec shown reaches
//!   the page while one of another spec does not.

mod browser;
mod serving;
mod specs;

use std::time::Duration;

use browser::Browser;
use common::window::WindowSpec;
use serde_json::{json, Value};
use serving::Serve;
use specs::{Event, SEC, T0};
use testkit::{services::log_dir, TestDb};

const GROUP: &str = "agg-res";

fn specs() -> [WindowSpec; 3] {
    [
        WindowSpec::tumbling(10 * SEC),
        WindowSpec::sliding(30 * SEC, 10 * SEC),
        WindowSpec::tumbling(60 * SEC),
    ]
}

/// Two pairs, two minutes of updates, the three specs' windows.
async fn setup(db: &TestDb) -> Vec<Event> {
    let all = specs::events(&["BTC", "ETH"], 120);
    specs::raw(db, &all).await;
    for spec in specs() {
        specs::record(db, GROUP, spec).await;
        specs::stream(db, GROUP, spec, &all).await;
    }
    all
}

/// `(start, end, stream count, first rate, last rate)` of BTC/USD's windows of `query`.
async fn btc(serve: &Serve, query: &str) -> (Value, Vec<(i64, i64, i64, f64, f64)>) {
    let body = serve
        .json(&format!("/api/windows?pair=BTC/USD{query}"))
        .await
        .unwrap();
    let windows = body["windows"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|w| {
            (
                w["start_us"].as_i64().unwrap(),
                w["end_us"].as_i64().unwrap(),
                w["stream"]["count"].as_i64().unwrap(),
                w["first_rate"].as_f64().unwrap(),
                w["last_rate"].as_f64().unwrap(),
            )
        })
        .collect();
    (body["window"].clone(), windows)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_for_the_spec_asked_for() {
    let db = TestDb::new().await;
    let all = setup(&db).await;
    let serve = Serve::start(&db, "resolutions-api", &["--group", GROUP]).await;
    let meta = serve.json("/api/meta").await.unwrap();
    let labels: Vec<&str> = meta["specs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["10s", "30s/10s", "1m"], "{meta}");
    assert_eq!(meta["window"], "10s", "the first spec by default");

    let (window, w) = btc(&serve, "").await;
    assert_eq!(window, "10s");
    assert_eq!(w.len(), 12);
    assert!(
        w.iter().all(|w| w.1 - w.0 == 10 * SEC && w.2 == 10),
        "{w:?}"
    );
    assert_eq!((w[0].3, w[0].4), (all[0].rate, all[9].rate), "the candle");

    let (window, w) = btc(&serve, "&window=30s%2F10s").await;
    assert_eq!(window, "30s/10s");
    // From T0 - 20 s (the first update's earliest window) to T0 + 110 s.
    assert_eq!(w.len(), 14, "{w:?}");
    assert!(w.iter().all(|w| w.1 - w.0 == 30 * SEC), "{w:?}");
    assert_eq!(w[0].0, T0 - 20 * SEC);
    assert_eq!(w.iter().find(|w| w.0 == T0).map(|w| w.2), Some(30));

    for query in ["&window=1m", "&window=60s"] {
        let (window, w) = btc(&serve, query).await;
        assert_eq!(window, "1m", "{query}");
        let got: Vec<(i64, i64, f64, f64)> = w.iter().map(|w| (w.0, w.2, w.3, w.4)).collect();
        let want = vec![
            (T0, 60, all[0].rate, all[59].rate),
            (T0 + 60 * SEC, 60, all[60].rate, all[119].rate),
        ];
        assert_eq!(got, want, "{query}");
    }
    let meta = serve.json("/api/meta?window=1m").await.unwrap();
    assert_eq!(
        (&meta["window"], &meta["accuracy"]["matched"]),
        (&json!("1m"), &json!(4))
    );

    for (query, says) in [
        ("window=7s", "10s, 30s/10s, 1m"),
        ("window=bogus", "window"),
        ("window=", "window"),
    ] {
        let r = reqwest::get(serve.url(&format!("/api/windows?pair=BTC/USD&{query}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        let e = body["error"].as_str().unwrap_or_default();
        assert!(e.contains("window") && e.contains(says), "{query}: {body}");
    }

    let report = serve.json("/api/report?window=30s%2F10s").await.unwrap();
    let sections = report["sections"].as_array().unwrap();
    assert_eq!(sections.len(), 1, "{report}");
    assert_eq!(sections[0]["label"], "30s/10s");
    assert_eq!(sections[0]["accuracy"]["passed"], true);
    let report = serve.json("/api/report").await.unwrap();
    assert_eq!(report["sections"].as_array().map(Vec::len), Some(3));
    assert_eq!(report["passed"], true, "{report}");
}

/// The candles on the page: their number, and BTC/USD's first window's data attributes.
const CANDLES: &str =
    "const c = document.querySelectorAll('svg.pair-chart g.window rect.candle').length; \
     const w = document.querySelectorAll('svg.pair-chart g.window').length; \
     const g = document.querySelector('svg.pair-chart[data-pair=\"BTC/USD\"] g.window'); \
     const svgs = [...document.querySelectorAll('svg.pair-chart')].map(s => s.dataset.window); \
     return [c, w, g && [g.dataset.start, Number(g.dataset.open), Number(g.dataset.close), \
       Number(g.dataset.high), Number(g.dataset.low), !!g.querySelector('line.wick'), \
       !!g.querySelector('rect.count')], svgs];";

/// Waits until the page shows `candles` candles, in charts of `window` only.
async fn shows(browser: &Browser, window: &str, candles: usize) -> Value {
    let ok = browser
        .until(
            &format!(
                "const svgs = [...document.querySelectorAll('svg.pair-chart')]; \
                 return svgs.length === 2 && svgs.every(s => s.dataset.window === '{window}') \
                 && document.querySelectorAll('svg.pair-chart g.window rect.candle').length === {candles};"
            ),
            Duration::from_secs(10),
        )
        .await;
    let got = browser.eval(CANDLES).await;
    assert!(ok, "{candles} candles of {window}: {got}");
    got
}

/// BTC/USD's first window as the page has it: start, open, close, high, low.
fn first_btc(got: &Value) -> (String, f64, f64, f64, f64) {
    let g = &got[2];
    (
        g[0].as_str().unwrap().to_owned(),
        g[1].as_f64().unwrap(),
        g[2].as_f64().unwrap(),
        g[3].as_f64().unwrap(),
        g[4].as_f64().unwrap(),
    )
}

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Selects `window` in the resolution selector, as a user does.
async fn select(browser: &Browser, window: &str) {
    browser
        .eval(&format!(
            "const s = document.getElementById('window'); s.value = '{window}'; \
             s.dispatchEvent(new Event('change')); return true;"
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_resolution_selector_switches_the_candles_in_chromium() {
    let db = TestDb::new().await;
    let all = setup(&db).await;
    let serve = Serve::start(&db, "resolutions-page", &["--group", GROUP]).await;
    let browser = Browser::start(&log_dir("resolutions")).await;
    browser.client.goto(&serve.url("/")).await.unwrap();

    // 10 s windows first: 12 candles per pair, BTC's first from its first to its tenth update.
    let got = shows(&browser, "10s", 24).await;
    assert_eq!(got[1], 24, "a window group per candle: {got}");
    let (start, open, close, high, low) = first_btc(&got);
    let btc10: Vec<f64> = all[..10].iter().map(|e| e.rate).collect();
    let max = |r: &[f64]| r.iter().copied().fold(f64::MIN, f64::max);
    let min = |r: &[f64]| r.iter().copied().fold(f64::MAX, f64::min);
    assert_eq!(start, iso(T0));
    assert_eq!((open, close), (btc10[0], btc10[9]));
    assert_eq!((high, low), (max(&btc10), min(&btc10)));
    assert_eq!(
        (&got[2][5], &got[2][6]),
        (&json!(true), &json!(true)),
        "wick and count bar"
    );
    let options = browser
        .eval("return [...document.getElementById('window').options].map(o => o.value).concat([document.getElementById('window').value]);")
        .await;
    assert_eq!(
        options,
        json!(["10s", "30s/10s", "1m", "10s"]),
        "the selector"
    );

    select(&browser, "1m").await;
    let got = shows(&browser, "1m", 4).await;
    let btc60: Vec<f64> = all[..60].iter().map(|e| e.rate).collect();
    assert_eq!(
        first_btc(&got),
        (iso(T0), btc60[0], btc60[59], max(&btc60), min(&btc60))
    );
    select(&browser, "30s/10s").await;
    let got = shows(&browser, "30s/10s", 28).await;
    assert_eq!(first_btc(&got).0, iso(T0 - 20 * SEC));
    let url = browser.eval("return location.search;").await;
    assert_eq!(
        url,
        json!("?window=30s%2F10s"),
        "the page's address keeps it"
    );

    // A window written for the spec shown reaches the page; one of another spec does not.
    let extra = specs::events(&["BTC"], 130)[120..].to_vec();
    specs::stream(&db, GROUP, WindowSpec::tumbling(60 * SEC), &extra).await;
    specs::stream(&db, GROUP, WindowSpec::sliding(30 * SEC, 10 * SEC), &extra).await;
    // 30 s windows from T0 + 100 s and T0 + 110 s rewritten, one from T0 + 120 s new (BTC: 15).
    shows(&browser, "30s/10s", 29).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lengths = browser
        .eval(
            "return [...new Set([...window.__coinstream.windows.values()]              .flatMap(m => [...m.values()]).map(v => v.end_us - v.start_us))];",
        )
        .await;
    assert_eq!(
        lengths,
        json!([30 * SEC]),
        "no window of another spec on the page"
    );
    select(&browser, "1m").await;
    shows(&browser, "1m", 5).await;

    assert_eq!(browser.errors().await, json!([]), "page errors");
    assert_eq!(
        browser.console_errors().await,
        Vec::<Value>::new(),
        "Chromium's console"
    );
    browser.close().await;
}
