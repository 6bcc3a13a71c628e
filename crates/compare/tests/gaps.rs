//! Gaps and backfilled stretches on the dashboard, in headless Chromium: a pair with no update for
//! a while (the producer down) has no windows then; the chart shades that stretch and names it
//! (`rect.gap-mark` with its bounds and a title), and a pair without a gap has no mark. Windows
//! whose rows were first written more than a minute after they ended (filled from history) are
//! `backfilled` in the API and marked on the chart; the others are not.

mod browser;
mod serving;
mod specs;

use std::time::Duration;

use browser::Browser;
use common::window::WindowSpec;
use serving::Serve;
use specs::{SEC, T0};
use testkit::{services::log_dir, TestDb};

const GROUP: &str = "agg-gaps";

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stretch_without_updates_is_marked_as_a_gap() {
    let db = TestDb::new().await;
    let spec = WindowSpec::tumbling(10 * SEC);
    // Two minutes of BTC and ETH; BTC has nothing from 40 s to 70 s (its windows 40, 50, 60).
    let all: Vec<_> = specs::events(&["BTC", "ETH"], 120)
        .into_iter()
        .filter(|e| !(e.base == "BTC" && (T0 + 40 * SEC..T0 + 70 * SEC).contains(&e.time_us)))
        .collect();
    specs::raw(&db, &all).await;
    specs::record(&db, GROUP, spec).await;
    specs::stream(&db, GROUP, spec, &all).await;
    // BTC's last three windows were written an hour after they ended (a gap filled later); the
    // others while they were open.
    sqlx::query("UPDATE stream_agg SET created_at = start_time")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE stream_agg SET created_at = end_time + INTERVAL 1 HOUR \
         WHERE asset_id_base = 'BTC' AND start_time >= ?",
    )
    .bind(specs::time(T0 + 90 * SEC))
    .execute(&db.pool)
    .await
    .unwrap();
    let serve = Serve::start(&db, "serve-gaps", &["--group", GROUP]).await;
    let logs = log_dir("gaps");
    let browser = Browser::start(&logs).await;
    browser.client.goto(&serve.url("/")).await.unwrap();
    assert!(
        browser
            .until(
                "return document.querySelectorAll('svg.pair-chart g.window rect.candle').length === 21;",
                Duration::from_secs(20),
            )
            .await,
        "9 BTC and 12 ETH windows drawn: {}",
        browser.eval("return document.body.innerText.slice(0, 400);").await
    );
    let marks = browser
        .eval(
            "return [...document.querySelectorAll('svg.pair-chart')].map(s => [s.dataset.pair, \
             [...s.querySelectorAll('.plot rect.gap-mark')].map(r => [r.dataset.from, r.dataset.to, \
             r.querySelector('title').textContent, Number(r.getAttribute('width')) > 2])]);",
        )
        .await;
    let btc = marks
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m[0] == "BTC/USD")
        .unwrap_or_else(|| panic!("{marks}"));
    let eth = marks
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m[0] == "ETH/USD")
        .unwrap_or_else(|| panic!("{marks}"));
    assert_eq!(
        eth[1].as_array().unwrap().len(),
        0,
        "no gap for ETH: {marks}"
    );
    let gaps = btc[1].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "one gap for BTC: {marks}");
    assert_eq!(gaps[0][0], iso(T0 + 40 * SEC), "{marks}");
    assert_eq!(gaps[0][1], iso(T0 + 70 * SEC), "{marks}");
    assert!(
        gaps[0][2].as_str().unwrap().contains("no updates"),
        "{marks}"
    );
    assert_eq!(gaps[0][3], true, "the mark spans the stretch: {marks}");
    let backfilled = browser
        .eval(
            "return [...document.querySelectorAll('svg.pair-chart g.window.backfilled')]\
             .filter(g => g.querySelector('rect.backfill-mark'))\
             .map(g => [g.closest('svg').dataset.pair, g.dataset.start]);",
        )
        .await;
    let want: Vec<(String, String)> = [90, 100, 110]
        .iter()
        .map(|s| ("BTC/USD".to_owned(), iso(T0 + s * SEC)))
        .collect();
    assert_eq!(
        serde_json::from_value::<Vec<(String, String)>>(backfilled.clone()).unwrap(),
        want,
        "the backfilled windows are marked: {backfilled}"
    );
    let api = serve.json("/api/windows?pair=BTC/USD").await.unwrap();
    let flagged: Vec<i64> = api["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["backfilled"] == true)
        .map(|w| (w["start_us"].as_i64().unwrap() - T0) / SEC)
        .collect();
    assert_eq!(flagged, vec![90, 100, 110], "{api}");
    assert_eq!(
        browser.console_errors().await,
        Vec::<serde_json::Value>::new()
    );
    browser.close().await;
}
