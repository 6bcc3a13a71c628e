//! The CoinAPI source against a local HTTP server returning CoinAPI-shaped responses, publishing to
//! the real broker. Each test asserts what is (or is not) published and the back-off taken.

use std::time::Duration;

use chrono::Utc;
use common::{model::format_time, RateUpdate};
use producer::{
    publisher::Publisher,
    sources::rest::client::CoinApiClient,
    sources::rest::poller::{PollError, Poller, PollerConfig, RoundReport},
};
use testkit::TestKafka;
use tokio_util::sync::CancellationToken;
use wiremock::{
    matchers::{header, method, path, query_param},
    Mock, MockServer, ResponseTemplate,
};

const KEY: &str = "test-key-0123456789";

struct Rig {
    server: MockServer,
    kafka: TestKafka,
    topic: String,
    publisher: Publisher,
}

impl Rig {
    async fn new() -> Rig {
        let server = MockServer::start().await;
        let kafka = TestKafka::new();
        let topic = kafka.create_topic("raw", 3).await;
        let publisher = Publisher::new(&kafka.bootstrap_servers, &topic).unwrap();
        Rig {
            server,
            kafka,
            topic,
            publisher,
        }
    }

    fn poller(&self, pairs: &[&str], timeout: Duration, max_retries: u32) -> Poller {
        let client = CoinApiClient::new(&self.server.uri(), KEY.parse().unwrap(), timeout).unwrap();
        let pairs: Vec<_> = pairs.iter().map(|p| p.parse().unwrap()).collect();
        Poller::new(
            client,
            &pairs,
            PollerConfig {
                max_retries,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
            },
        )
    }

    async fn round(&mut self, poller: &mut Poller) -> Result<RoundReport, PollError> {
        let r = poller
            .poll_round(&mut self.publisher, &CancellationToken::new())
            .await;
        tokio::task::block_in_place(|| self.publisher.flush(Duration::from_secs(10))).unwrap();
        r
    }

    async fn published(&self) -> Vec<(String, RateUpdate)> {
        self.kafka
            .read_all(&self.topic)
            .await
            .into_iter()
            .map(|r| {
                let key = String::from_utf8(r.key.unwrap()).unwrap();
                (key, RateUpdate::from_json(&r.payload.unwrap()).unwrap())
            })
            .collect()
    }
}

fn one_pair(base: &str, quote: &str, time: &str, rate: f64) -> serde_json::Value {
    serde_json::json!({"time": time, "asset_id_base": base, "asset_id_quote": quote, "rate": rate,
                       "src_side_base": null, "src_side_quote": null})
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_new_rates_once_with_microseconds() {
    let mut rig = Rig::new().await;
    Mock::given(method("GET"))
        .and(path("/v1/exchangerate/BTC/USD"))
        .and(header("X-CoinAPI-Key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "BTC",
            "USD",
            "2024-08-05T13:35:34.3741337Z",
            61234.56,
        )))
        .expect(2)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_secs(5), 2);
    let first = rig.round(&mut poller).await.unwrap();
    let second = rig.round(&mut poller).await.unwrap();
    assert_eq!((first.published, first.unchanged), (1, 0));
    assert_eq!(
        (second.published, second.unchanged),
        (0, 1),
        "same time is not published again"
    );
    let got = rig.published().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "BTC/USD");
    assert_eq!(format_time(got[0].1.time), "2024-08-05T13:35:34.374133Z");
    assert_eq!(got[0].1.rate, 61234.56);
    assert!(got[0].1.received_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn pairs_sharing_a_base_use_one_many_quotes_request() {
    let mut rig = Rig::new().await;
    Mock::given(method("GET"))
        .and(path("/v1/exchangerate/BTC"))
        .and(query_param("filter_asset_id", "USD;EUR"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "asset_id_base": "BTC",
            "rates": [
                {"time": "2017-08-09T14:31:37.0520000Z", "asset_id_quote": "USD", "rate": 3258.887541779804},
                {"time": "2017-08-09T14:31:37.0520000Z", "asset_id_quote": "EUR", "rate": 2800.5}
            ]})))
        .expect(1)
        .mount(&rig.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/exchangerate/ETH/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "ETH",
            "USD",
            "2017-08-09T14:31:37.0520000Z",
            300.0,
        )))
        .expect(1)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(
        &["BTC/USD", "ETH/USD", "BTC/EUR"],
        Duration::from_secs(5),
        2,
    );
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(report.published, 3);
    let mut keys: Vec<String> = rig.published().await.into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["BTC/EUR", "BTC/USD", "ETH/USD"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_bodies_with_message_or_error_skip_and_publish_nothing() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(serde_json::json!({"message": "bad request"})),
        )
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/ETH/USD"))
        .respond_with(
            ResponseTemplate::new(550).set_body_json(serde_json::json!({"error": "no data"})),
        )
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD", "ETH/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(report.published, 0);
    assert_eq!(report.skipped.len(), 2);
    assert!(
        report.backoffs.is_empty(),
        "neither 400 nor 550 is retried: {:?}",
        report.backoffs
    );
    assert!(rig.published().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_data_for_one_pair_while_others_succeed() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(550).set_body_json(serde_json::json!({"error": "You requested specific single item that we don't have at this moment."})))
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/SOL/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "SOL",
            "USD",
            "2024-08-05T13:35:34.1000000Z",
            150.0,
        )))
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD", "SOL/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(report.skipped, vec!["BTC/USD".parse().unwrap()]);
    let got = rig.published().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "SOL/USD");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_waits_until_reset_then_retries() {
    let mut rig = Rig::new().await;
    let reset = Utc::now() + chrono::Duration::milliseconds(1500);
    // CoinAPI-style reset with 7 fractional digits, lower-case headers, negative remaining.
    let reset_text = reset.format("%Y-%m-%dT%H:%M:%S%.f0Z").to_string();
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-ratelimit-remaining", "-2")
                .insert_header("x-ratelimit-limit", "100")
                .insert_header("x-ratelimit-reset", reset_text.as_str())
                .set_body_json(serde_json::json!({"message": "Too many requests"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "BTC",
            "USD",
            "2024-08-05T13:35:34.3741337Z",
            1.0,
        )))
        .with_priority(2)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(report.backoffs.len(), 1);
    let waited = report.backoffs[0];
    assert!(
        waited > Duration::from_millis(1000) && waited <= Duration::from_millis(1500),
        "{waited:?}"
    );
    assert_eq!(report.quota.remaining, Some(-2));
    assert_eq!(rig.published().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_without_reset_backs_off_exponentially() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(serde_json::json!({"error": "Quota exceeded"})),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "BTC",
            "USD",
            "2024-08-05T13:35:34Z",
            1.0,
        )))
        .with_priority(2)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(report.published, 1);
    let b = &report.backoffs;
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(
        b[0] >= Duration::from_millis(50) && b[0] <= Duration::from_millis(100),
        "{b:?}"
    );
    assert!(
        b[1] >= Duration::from_millis(100) && b[1] <= Duration::from_millis(200),
        "{b:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_key_stops_polling_and_publishes_nothing() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "Invalid API key"})),
        )
        .expect(1)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_secs(5), 2);
    let err = rig.round(&mut poller).await.unwrap_err();
    assert!(
        matches!(err, PollError::InvalidKey(ref m) if m == "Invalid API key"),
        "{err}"
    );
    assert!(!err.to_string().contains(KEY));
    assert!(rig.published().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_json_is_counted_and_polling_goes_on() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"time\": oops"))
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/ETH/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "ETH",
            "USD",
            "2024-08-05T13:35:34Z",
            2.0,
        )))
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD", "ETH/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!((report.malformed, report.published), (1, 1));
    assert!(report.backoffs.is_empty());
    assert_eq!(rig.published().await[0].0, "ETH/USD");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_response_times_out_and_is_retried_with_backoff() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(one_pair("BTC", "USD", "2024-08-05T13:35:34Z", 1.0))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_millis(300), 2);
    let started = std::time::Instant::now();
    let report = rig.round(&mut poller).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.published, 0);
    assert_eq!(report.failed_requests, 3, "first try and two retries");
    assert_eq!(report.backoffs.len(), 2);
    assert!(report.backoffs[1] >= Duration::from_millis(100));
    assert_eq!(report.skipped, vec!["BTC/USD".parse().unwrap()]);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(rig.published().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_until_success() {
    let mut rig = Rig::new().await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html>maintenance</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&rig.server)
        .await;
    Mock::given(path("/v1/exchangerate/BTC/USD"))
        .respond_with(ResponseTemplate::new(200).set_body_json(one_pair(
            "BTC",
            "USD",
            "2024-08-05T13:35:34Z",
            1.0,
        )))
        .with_priority(2)
        .mount(&rig.server)
        .await;
    let mut poller = rig.poller(&["BTC/USD"], Duration::from_secs(5), 2);
    let report = rig.round(&mut poller).await.unwrap();
    assert_eq!(
        (
            report.published,
            report.failed_requests,
            report.backoffs.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(rig.published().await.len(), 1);
}
