//! A private Prometheus server for tests: scrapes the given targets every second, answers its
//! HTTP API. The binary comes from `COINSTREAM_TEST_PROMETHEUS` (printed by `scripts/infra.sh
//! env`, which installs Debian's `prometheus`).

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A Prometheus process of this test's own; stopped when dropped.
#[derive(Debug)]
pub struct PrivatePrometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl PrivatePrometheus {
    /// Starts Prometheus scraping `targets` (job name, address) every second.
    pub async fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let bin = std::env::var("COINSTREAM_TEST_PROMETHEUS").unwrap_or_else(|_| {
            panic!("COINSTREAM_TEST_PROMETHEUS is not set: run the tests through scripts/test.sh, or set it from `scripts/infra.sh env`")
        });
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("coinstream-prometheus-{}", super::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("prometheus directory");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let server = PrivatePrometheus {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest::get(format!("{}/-/ready", self.url)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s (log: {})",
                self.dir.join("prometheus.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs an instant query; returns the result vector (empty when no series matched).
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let response: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus JSON");
        assert_eq!(response["status"], "success", "{promql}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `promql` until it returns a series (at most `limit`); the series.
    pub async fn wait_for_series(&self, promql: &str, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let result = self.query(promql).await;
            if !result.is_empty() || Instant::now() >= deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for PrivatePrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var("COINSTREAM_TEST_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
