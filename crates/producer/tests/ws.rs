//! `producer --source coinapi-ws` against a local WebSocket server playing CoinAPI (written here,
//! on tokio-tungstenite), publishing to the real broker.
//!
//! One run goes through: the server not listening yet (refused: retried with backoff); the hello
//! checked; a burst of exrates with heartbeats and malformed frames; a server-requested reconnect
//! (a second connection opened, overlapping messages published once); an abrupt close; a silent
//! connection (no heartbeat for 5 s: dead); an error not about the key (reconnect); then a
//! connection with nothing but heartbeats for 7 s (kept), and more exrates. Every exrate the
//! server sent is on the topic exactly once, by pair and time to the microsecond, the key is never
//! in the log, and `/metrics` counts the reconnects by reason.
//! Two more tests: an error about the key, and HTTP 401 on the upgrade, stop the producer with
//! status 1 and the server's message. A `wss://` URL opens TLS (rustls) with the host's name, and a
//! failed handshake is a lost connection, retried.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::RateUpdate;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use testkit::{
    prometheus::free_port,
    services::{log_dir, log_to, tail, terminate, wait_for, wait_for_log},
    TestKafka,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

const KEY: &str = "ws-secret-key-8f3a91c2";
const PAIRS: [&str; 2] = ["BTC/USD", "ETH/USD"];

type Ws = WebSocketStream<TcpStream>;

/// What the fake server saw and sent.
#[derive(Default)]
struct Seen {
    hellos: Mutex<Vec<Value>>,
    /// Every exrate sent: (pair, event time in µs), duplicates included.
    sent: Mutex<Vec<(String, i64)>>,
    connections: AtomicUsize,
}

fn t0() -> DateTime<Utc> {
    "2024-08-05T12:00:00Z".parse().unwrap()
}

/// Exrate `n`: pair by parity, time `t0 + n ms + 0.7 µs` (seven digits, as CoinAPI writes them).
async fn exrate(ws: &mut Ws, seen: &Seen, n: i64) {
    let pair = PAIRS[(n % 2) as usize];
    let (base, quote) = pair.split_once('/').unwrap();
    let time = t0() + chrono::Duration::milliseconds(n);
    let text = json!({
        "type": "exrate", "asset_id_base": base, "asset_id_quote": quote,
        "rate_type": "BASE_ALL_CROSSES_TO_REF",
        "time": format!("{}7Z", time.format("%Y-%m-%dT%H:%M:%S%.6f")),
        "rate": 60_000.0 + n as f64 / 8.0,
    })
    .to_string();
    // Counted as sent only when it went out on a connection the client had open.
    if ws.send(Message::text(text)).await.is_ok() {
        seen.sent
            .lock()
            .unwrap()
            .push((pair.to_owned(), time.timestamp_micros()));
    }
}

async fn heartbeat(ws: &mut Ws) {
    let _ = ws.send(Message::text(r#"{"type":"hearbeat"}"#)).await;
}

/// Waits for `n` connections in all.
async fn until_connections(seen: &Seen, n: usize) {
    while seen.connections.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connection `i` (from 1) of the scripted run.
async fn connection(i: usize, mut ws: Ws, seen: Arc<Seen>) {
    let Some(Ok(Message::Text(hello))) = ws.next().await else {
        panic!("connection {i}: no hello")
    };
    seen.hellos
        .lock()
        .unwrap()
        .push(serde_json::from_str(hello.as_str()).unwrap());
    match i {
        1 => {
            for n in 0..100 {
                exrate(&mut ws, &seen, n).await;
                if n % 25 == 0 {
                    heartbeat(&mut ws).await;
                }
            }
            ws.send(Message::text("{not json")).await.unwrap();
            ws.send(Message::text(
                r#"{"type":"exrate","asset_id_base":"BTC","asset_id_quote":"USD","time":"2024-08-05T12:00:05.0000000Z","rate":-3}"#,
            ))
            .await
            .unwrap();
            ws.send(Message::text(
                r#"{"type":"reconnect","within_seconds":5,"before_time":"2024-08-05T12:00:10.0000000Z"}"#,
            ))
            .await
            .unwrap();
            // Still serving until the replacement is there, then the overlap, then gone.
            let mut n = 100;
            while seen.connections.load(Ordering::SeqCst) < 2 {
                exrate(&mut ws, &seen, n).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for m in 1000..1010 {
                exrate(&mut ws, &seen, m).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = ws.close(None).await;
        }
        2 => {
            for m in 1000..1030 {
                exrate(&mut ws, &seen, m).await; // 1000..1010 also came on connection 1
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(ws); // abrupt: no close frame
        }
        3 => {
            for m in 1030..1040 {
                exrate(&mut ws, &seen, m).await;
            }
            // Silent: no heartbeat. The client must give up on it after 5 s.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        4 => {
            for m in 1040..1050 {
                exrate(&mut ws, &seen, m).await;
            }
            // An error that is not about the key: the client opens a new connection.
            let _ = ws
                .send(Message::text(
                    r#"{"type":"error","message":"Subscription service is restarting"}"#,
                ))
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        5 => {
            for m in 1050..1100 {
                exrate(&mut ws, &seen, m).await;
            }
            // Nothing but heartbeats for 7 s: the connection is alive and must be kept.
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                heartbeat(&mut ws).await;
            }
            for m in 1100..1110 {
                exrate(&mut ws, &seen, m).await;
            }
            heartbeats(&mut ws).await;
        }
        _ => heartbeats(&mut ws).await, // not expected: the test counts connections
    }
}

/// A heartbeat after each ~second of silence, until the client goes.
async fn heartbeats(ws: &mut Ws) {
    loop {
        tokio::time::sleep(Duration::from_millis(900)).await;
        if ws
            .send(Message::text(r#"{"type":"hearbeat"}"#))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn serve(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let i = seen.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = seen.clone();
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                connection(i, ws, seen).await;
            }
        });
    }
}

fn producer(port: u16, kafka: &TestKafka, topic: &str, logs: &std::path::Path) -> Child {
    producer_command(port, kafka, topic, logs).spawn().unwrap()
}

fn producer_command(port: u16, kafka: &TestKafka, topic: &str, logs: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_producer"));
    c.args(["--source", "coinapi-ws", "--pairs", &PAIRS.join(",")])
        .args(["--backoff-initial", "200ms", "--backoff-max", "1s"])
        .env("COINAPI_WS_URL", format!("ws://127.0.0.1:{port}"))
        .env("COINAPI_KEY", KEY)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("RAW_TOPIC", topic)
        .env("STATS_INTERVAL", "1s")
        .env("MYSQL_PORT", "1") // no database: statistics in the log only
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "pretty")
        .stdout(Stdio::null())
        .stderr(log_to(logs, "producer"));
    c
}

/// (pair, time µs) of every message on the topic.
async fn on_topic(kafka: &TestKafka, topic: &str) -> Vec<(String, i64)> {
    kafka
        .read_all(topic)
        .await
        .into_iter()
        .map(|r| {
            let u = RateUpdate::from_json(&r.payload.unwrap()).unwrap();
            assert!(u.received_at.is_some());
            (u.pair.to_string(), u.time.timestamp_micros())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pushed_rate_once_through_reconnects() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("ws", 3).await;
    let logs = log_dir("producer-ws");
    let log = logs.join("producer.log");
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = producer_command(port, &kafka, &topic, &logs)
        .env("METRICS_ADDR", &metrics)
        .spawn()
        .unwrap();
    // Nothing listens yet: refused, retried with backoff.
    assert!(
        wait_for_log(&log, "reconnecting", Duration::from_secs(20)).await,
        "{}",
        tail(&log, 20)
    );
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(serve(listener, seen.clone()));

    until_connections(&seen, 5).await;
    let last = (
        PAIRS[1].to_owned(),
        (t0() + chrono::Duration::milliseconds(1109)).timestamp_micros(),
    );
    let want: BTreeSet<(String, i64)> = loop {
        let sent = seen.sent.lock().unwrap().clone();
        if sent.contains(&last) {
            break sent.into_iter().collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut got = Vec::new();
    for _ in 0..200 {
        got = on_topic(&kafka, &topic).await;
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fifth connection lived through 7 s of heartbeats alone: no sixth was opened.
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        5,
        "{}",
        tail(&log, 30)
    );
    let exposition = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    terminate(&child);
    let status = wait_for(&mut child, Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let reconnects = |reason: &str| -> f64 {
        let label = format!("reason=\"{reason}\"");
        exposition
            .lines()
            .find(|l| {
                l.starts_with("coinstream_coinapi_ws_reconnects_total{") && l.contains(&label)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no reconnects with {label} in:\n{exposition}"))
    };
    assert_eq!(reconnects("requested"), 1.0, "{exposition}");
    // Refused at least once, closed abruptly, silent, the error: each opened again.
    assert!(reconnects("lost") >= 4.0, "{exposition}");

    let mut counts: BTreeMap<&(String, i64), usize> = BTreeMap::new();
    for g in &got {
        *counts.entry(g).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let got: BTreeSet<(String, i64)> = got.into_iter().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "not published: {missing:?}\n{}",
        tail(&log, 30)
    );
    assert_eq!(got, want);

    for hello in seen.hellos.lock().unwrap().iter() {
        assert_eq!(
            hello,
            &json!({"type": "hello", "apikey": KEY, "heartbeat": true,
                "subscribe_data_type": ["exrate"], "subscribe_filter_asset_id": PAIRS})
        );
    }
    assert!(status.is_some_and(|s| s.success()), "{}", tail(&log, 20));
    assert!(!text.contains(KEY), "the key is in the log");
    for needle in [
        "switched to the new CoinAPI WebSocket connection",
        "no message for 5s",
        "Subscription service is restarting",
        "malformed CoinAPI WebSocket message skipped",
        "{not json",
    ] {
        assert!(
            text.contains(needle),
            "log lacks {needle:?}:\n{}",
            tail(&log, 40)
        );
    }
    let finished = text
        .lines()
        .rfind(|l| l.contains("producer finished"))
        .expect("final statistics");
    let field = |name: &str| -> u64 {
        let at = finished.find(&format!("{name}=")).expect(name) + name.len() + 1;
        finished[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("malformed"), 2, "{finished}");
    // Refused at least once, asked once, closed abruptly once, silent once, the error once.
    assert!(field("reconnects") >= 5, "{finished}");
    assert_eq!(field("delivered"), want.len() as u64, "{finished}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_stops_the_producer_with_the_servers_message() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("ws-key", 1).await;
    let logs = log_dir("producer-ws-key");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let _hello = ws.next().await;
                let _ = ws
                    .send(Message::text(
                        r#"{"type":"error","message":"Invalid API key (key not found)"}"#,
                    ))
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let mut child = producer(port, &kafka, &topic, &logs);
    let status = wait_for(&mut child, Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(logs.join("producer.log")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}");
    assert!(text.contains("Invalid API key (key not found)"), "{text}");
    assert!(!text.contains(KEY), "the key is in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_401_on_the_upgrade_stops_the_producer() {
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("ws-401", 1).await;
    let logs = log_dir("producer-ws-401");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upgrades = Arc::new(AtomicUsize::new(0));
    let counted = upgrades.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse_upgrade).await;
        }
    });
    let mut child = producer(port, &kafka, &topic, &logs);
    let status = wait_for(&mut child, Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(logs.join("producer.log")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert_eq!(upgrades.load(Ordering::SeqCst), 1, "not retried: {text}");
    assert!(!text.contains(KEY), "the key is in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_opens_tls_and_a_failed_handshake_is_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = TestKafka::new();
    let topic = kafka.create_topic("ws-tls", 1).await;
    let logs = log_dir("producer-ws-tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A server that is not TLS: it keeps what the client sent first and answers in plain HTTP.
    let hellos = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let kept = hellos.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut first = vec![0u8; 4096];
            let n = tcp.read(&mut first).await.unwrap_or(0);
            first.truncate(n);
            kept.lock().unwrap().push(first);
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let mut command = producer_command(port, &kafka, &topic, &logs);
    command.env("COINAPI_WS_URL", format!("wss://localhost:{port}"));
    let mut child = command.spawn().unwrap();
    let log = logs.join("producer.log");
    let retried = wait_for_log(&log, "reconnects=2", Duration::from_secs(20)).await;
    let running = wait_for(&mut child, Duration::from_millis(100))
        .await
        .is_none();
    terminate(&child);
    let _ = wait_for(&mut child, Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(retried && running, "not retried while running: {text}");
    let hellos = hellos.lock().unwrap();
    assert!(hellos.len() >= 2, "{} connections: {text}", hellos.len());
    for hello in hellos.iter() {
        // A TLS handshake record carrying the ClientHello, with the host's name (SNI).
        assert_eq!(hello.first(), Some(&0x16), "not TLS: {hello:?}");
        assert_eq!(hello.get(5), Some(&0x01), "not a ClientHello: {hello:?}");
        assert!(
            hello.windows(9).any(|w| w == b"localhost"),
            "no SNI: {hello:?}"
        );
    }
    assert!(
        text.contains("CoinAPI WebSocket connection lost; reconnecting"),
        "{text}"
    );
    assert!(!text.contains(KEY), "the key is in the log");
}

/// Answers the WebSocket upgrade with 401, as CoinAPI does for a bad key. (The signature is
/// tungstenite's handshake callback; its error type is the HTTP response itself.)
#[allow(clippy::result_large_err)]
fn refuse_upgrade(
    _: &tokio_tungstenite::tungstenite::handshake::server::Request,
    _: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    Err(tokio_tungstenite::tungstenite::http::Response::builder()
        .status(401)
        .body(Some("Unauthorized: invalid API key".to_owned()))
        .unwrap())
}
