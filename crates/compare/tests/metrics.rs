//! Metrics and health on the real broker, MariaDB and Prometheus: the four services run with
//! `METRICS_ADDR`; each one's `/metrics` passes `promtool check metrics`, `/healthz` and `/readyz`
//! answer and `--healthcheck` agrees; a private Prometheus scrapes them, and lag, throughput and
//! latency series come back from its API, as does every PromQL expression of the Grafana
//! dashboard (`deploy/grafana/dashboards/coinstream.json`).

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use testkit::{
    prometheus::{free_port, PrivatePrometheus},
    services::{kill, log_dir, log_to, pipeline_command, service_binary, tail, wait_for},
    TestDb, TestKafka,
};

const SERVICES: [&str; 4] = [
    "producer",
    "raw-consumer",
    "stream-aggregator",
    "update-counter",
];

struct Running {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Running {
    /// A failed assertion must not leave the services running.
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn start(
    db: &TestDb,
    kafka: &TestKafka,
    topics: (&str, &str),
    logs: &std::path::Path,
) -> Vec<Running> {
    SERVICES
        .iter()
        .map(|&name| {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut cmd = pipeline_command(name, db, kafka, topics);
            cmd.env("METRICS_ADDR", addr.to_string())
                .stderr(log_to(logs, name));
            match name {
                "producer" => {
                    cmd.args(["--source", "simulate", "--pair-count", "4", "--rate", "200"])
                        .args(["--late-fraction", "0.05", "--late-by", "30s"]);
                }
                "stream-aggregator" => {
                    cmd.args(["--flush-interval", "200ms"]);
                }
                _ => {}
            }
            Running {
                name,
                addr,
                child: cmd.spawn().unwrap(),
            }
        })
        .collect()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// `promtool check metrics` on a scrape.
fn promtool(text: &str) -> Result<(), String> {
    let bin = std::env::var("COINSTREAM_TEST_PROMTOOL")
        .expect("COINSTREAM_TEST_PROMTOOL (scripts/infra.sh env)");
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every service is ready, its metrics pass promtool, and `--healthcheck` says 0.
async fn check_endpoints(running: &[Running], logs: &std::path::Path) {
    for r in running {
        let mut ready = (0, String::new());
        for _ in 0..120 {
            ready = get(r.addr, "/readyz").await;
            if ready.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log = tail(&logs.join(format!("{}.log", r.name)), 20);
        assert_eq!(ready.0, 200, "{} /readyz: {}\n{log}", r.name, ready.1);
        assert_eq!(get(r.addr, "/healthz").await.0, 200, "{} /healthz", r.name);
        let (status, text) = get(r.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("process_resident_memory_bytes"),
            "{}: {text}",
            r.name
        );
        promtool(&text).unwrap_or_else(|e| panic!("promtool on {}'s metrics: {e}\n{text}", r.name));
        let check = Command::new(service_binary(r.name))
            .arg("--healthcheck")
            .env("METRICS_ADDR", r.addr.to_string())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{} --healthcheck: {check:?}",
            r.name
        );
    }
}

/// The PromQL expressions of the Grafana dashboard, with Grafana's rate interval filled in.
fn dashboard_queries() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana/dashboards/coinstream.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| {
            t["expr"]
                .as_str()
                .map(|e| e.replace("$__rate_interval", "10s"))
        })
        .collect();
    assert!(exprs.len() >= 10, "the dashboard's PromQL: {exprs:?}");
    exprs
}

#[tokio::test(flavor = "multi_thread")]
async fn services_expose_metrics_that_prometheus_and_the_dashboard_read() {
    let (db, kafka) = (TestDb::new().await, TestKafka::new());
    let raw = kafka.create_topic("raw", 3).await;
    let agg = kafka.create_topic("agg", 3).await;
    let logs = log_dir("metrics");
    let mut running = start(&db, &kafka, (&raw, &agg), &logs);
    let targets: Vec<(&str, SocketAddr)> = running.iter().map(|r| (r.name, r.addr)).collect();
    let prometheus = PrivatePrometheus::start(&targets).await;
    check_endpoints(&running, &logs).await;

    let wait = Duration::from_secs(40);
    for (what, q) in [
        ("lag per partition", "coinstream_consumer_lag_messages{service=\"raw-consumer\"}"),
        ("throughput", "rate(coinstream_messages_consumed_total{service=\"stream-aggregator\"}[10s]) > 0"),
        ("deliveries", "rate(coinstream_deliveries_total{result=\"delivered\"}[10s]) > 0"),
        ("latency", "histogram_quantile(0.99, sum by (le) (rate(coinstream_end_to_end_latency_seconds_bucket[10s]))) > 0"),
        ("rows written", "coinstream_rows_written_total{table=\"coin_update_count\"} > 0"),
    ] {
        let series = prometheus.wait_for_series(q, wait).await;
        assert!(!series.is_empty(), "{what}: no series for {q}");
    }
    for q in dashboard_queries() {
        let series = prometheus.wait_for_series(&q, wait).await;
        assert!(
            !series.is_empty(),
            "the dashboard's query returned nothing: {q}"
        );
    }

    // Not ready, with a reason, while an instance has nothing to offer yet.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut starting = pipeline_command("raw-consumer", &db, &kafka, (&raw, &agg))
        .env("METRICS_ADDR", addr.to_string())
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("KAFKA_CONNECT_TIMEOUT", "20s")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut not_ready = (0, String::new());
    for _ in 0..40 {
        not_ready = get(addr, "/readyz").await;
        if not_ready.0 != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(not_ready.0, 503, "{}", not_ready.1);
    let reason: serde_json::Value = serde_json::from_str(&not_ready.1).unwrap();
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{reason}"
    );
    let check = Command::new(service_binary("raw-consumer"))
        .arg("--healthcheck")
        .env("METRICS_ADDR", addr.to_string())
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(1),
        "--healthcheck of an instance not ready"
    );
    kill(&mut starting);

    for r in &mut running {
        kill(&mut r.child);
    }
    drop(prometheus);
    assert!(wait_for(&mut running[0].child, Duration::from_secs(1))
        .await
        .is_some());
}

#[test]
fn every_binary_lists_its_settings() {
    for name in SERVICES.iter().copied().chain(["compare"]) {
        let out = Command::new(service_binary(name))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for setting in ["MYSQL_SSL_MODE", "LOG_FORMAT"] {
            assert!(help.contains(setting), "{name} --help lacks {setting}");
        }
        if name != "compare" {
            for setting in [
                "METRICS_ADDR",
                "KAFKA_SECURITY_PROTOCOL",
                "KAFKA_SASL_PASSWORD",
            ] {
                assert!(help.contains(setting), "{name} --help lacks {setting}");
            }
        }
    }
}
