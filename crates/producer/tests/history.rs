//! CoinAPI history against a local stand-in serving the history endpoint (periods generated for
//! the range and limit asked), the producer binary publishing to the real broker:
//! - `--source coinapi-history` publishes one update per period at its `time_close` with its
//!   `rate_close`, page after page, through a 429 in the middle, and exits 0 with its progress
//!   (requests and credits) logged and the key nowhere in the log;
//! - a live source (`coinapi`) started 90 s after the topic's last update of its pair publishes
//!   the history of those 90 s first (nothing at or before that last update), then live updates.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::{
    model::{format_time, parse_time},
    RateUpdate,
};
use testkit::{TestKafka, TopicRecord};
use wiremock::{
    matchers::{header, method, path},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

const KEY: &str = "history-key-0123456789";

/// The history endpoint: one 1SEC period per second of `[time_start, time_end)`, at most `limit`;
/// closes at half a second into the period, rate = 1000 + the period's second of the epoch. The
/// request numbered `fail_at` (1-based) gets a 429 instead.
struct HistoryStandIn {
    requests: Arc<AtomicUsize>,
    fail_at: Option<usize>,
}

impl Respond for HistoryStandIn {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.fail_at {
            return ResponseTemplate::new(429).set_body_string(r#"{"error":"Too many requests"}"#);
        }
        let q = |k: &str| {
            req.url
                .query_pairs()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| panic!("{k} missing from {}", req.url))
        };
        assert_eq!(q("period_id"), "1SEC");
        let (start, end) = (
            parse_time(&q("time_start")).unwrap(),
            parse_time(&q("time_end")).unwrap(),
        );
        let limit: i64 = q("limit").parse().unwrap();
        let first = start.timestamp() + i64::from(start.timestamp_subsec_micros() > 0);
        let items: Vec<serde_json::Value> = (first..end.timestamp().min(first + limit))
            .map(|s| {
                let at = |us: i64| format_time(DateTime::from_timestamp_micros(s * 1_000_000 + us).unwrap());
                serde_json::json!({
                    "time_period_start": at(0), "time_period_end": at(1_000_000),
                    "time_open": at(100_000), "time_close": at(500_000),
                    "rate_open": 1.0, "rate_high": 2.0, "rate_low": 0.5, "rate_close": 1000.0 + s as f64,
                })
            })
            .collect();
        ResponseTemplate::new(200)
            .insert_header("X-RateLimit-Remaining", "5000")
            .set_body_json(items)
    }
}

async fn stand_in(fail_at: Option<usize>) -> (MockServer, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let requests = Arc::new(AtomicUsize::new(0));
    Mock::given(method("GET"))
        .and(path("/v1/exchangerate/BTC/USD/history"))
        .and(header("X-CoinAPI-Key", KEY))
        .respond_with(HistoryStandIn {
            requests: requests.clone(),
            fail_at,
        })
        .mount(&server)
        .await;
    (server, requests)
}

fn producer(server: &MockServer, kafka: &TestKafka, topic: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(["--topic", topic, "--pairs", "BTC/USD"])
        .args(["--backoff-initial", "100ms", "--backoff-max", "1s"])
        .args(args)
        .env("COINAPI_KEY", KEY)
        .env("COINAPI_BASE_URL", server.uri())
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("MYSQL_PORT", "1") // no database: statistics in the log only
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "pretty")
        .env_remove("PRODUCER_SOURCE")
        .stdout(Stdio::null());
    cmd
}

fn updates(records: &[TopicRecord]) -> Vec<RateUpdate> {
    records
        .iter()
        .map(|r| RateUpdate::from_json(r.payload.as_deref().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_publishes_one_update_per_period_through_pages_and_a_429() {
    let (server, requests) = stand_in(Some(2)).await;
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("hist", 1).await;
    let since = DateTime::from_timestamp(1_722_862_800, 0).unwrap(); // 2024-08-05T13:00:00Z
    let until = since + chrono::Duration::seconds(250);
    let out = producer(&server, &kafka, &topic, &["--source", "coinapi-history"])
        .args([
            "--since",
            &format_time(since),
            "--until",
            &format_time(until),
        ])
        .args(["--period", "1SEC", "--history-limit", "100"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(KEY), "the key is never logged: {log}");
    // Pages of 100, 100 and 50 periods, the second asked twice (a 429 first).
    assert_eq!(requests.load(Ordering::SeqCst), 4, "{log}");
    assert!(log.contains("429"), "the rate limit is logged: {log}");
    assert!(
        log.contains("history done") && log.contains("credits=3") && log.contains("requests=4"),
        "progress with requests and credits: {log}"
    );
    let got = updates(&kafka.read_all(&topic).await);
    assert_eq!(got.len(), 250);
    for (k, u) in got.iter().enumerate() {
        let second = since.timestamp() + k as i64;
        assert_eq!(u.pair, "BTC/USD".parse().unwrap());
        assert_eq!(
            u.time,
            DateTime::from_timestamp_micros(second * 1_000_000 + 500_000).unwrap()
        );
        assert_eq!(u.rate, 1000.0 + second as f64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_source_fills_the_gap_since_the_topics_last_update_first() {
    let (server, history_requests) = stand_in(None).await;
    let now = Utc::now();
    let live = serde_json::json!({
        "time": format_time(now + chrono::Duration::seconds(1)), "asset_id_base": "BTC",
        "asset_id_quote": "USD", "rate": 1.5,
    });
    Mock::given(method("GET"))
        .and(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(live))
        .mount(&server)
        .await;
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("gap", 3).await;
    // The topic's last update of the pair: 90 s ago.
    let last = RateUpdate::new(
        now - chrono::Duration::seconds(90),
        "BTC/USD".parse().unwrap(),
        7.0,
        None,
    )
    .unwrap();
    kafka
        .produce(&topic, &[(last.key(), last.to_json().into_bytes())])
        .await;

    let mut child = producer(
        &server,
        &kafka,
        &topic,
        &["--source", "coinapi", "--interval", "1s"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = std::time::Instant::now();
    let got = loop {
        let got = updates(&kafka.read_all(&topic).await);
        if got.iter().any(|u| u.rate == 1.5) || started.elapsed() > Duration::from_secs(60) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The gap ends at the producer's clock when it filled it: after `now`, before this.
    let filled_by = Utc::now();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(history_requests.load(Ordering::SeqCst) >= 1, "{log}");
    // One partition holds the pair: the original update, the gap's periods in order, then live.
    assert_eq!(got[0], last, "{log}");
    let live_at = got
        .iter()
        .position(|u| u.rate == 1.5)
        .unwrap_or_else(|| panic!("no live update: {log}"));
    let filled = &got[1..live_at];
    assert!(
        (88..=91).contains(&filled.len()),
        "90 s of 1SEC periods: {} ({log})",
        filled.len()
    );
    assert!(
        filled.windows(2).all(|w| w[0].time < w[1].time),
        "in time order"
    );
    assert!(filled
        .iter()
        .all(|u| u.time > last.time && u.time < filled_by + chrono::Duration::seconds(1)));
    assert!(!log.contains(KEY), "the key is never logged");
    assert!(log.contains("filling the gap"), "{log}");
}
