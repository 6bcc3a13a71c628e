//! `compare serve` started on a test database, and its JSON API.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    prometheus::free_port,
    service_command,
    services::{log_dir, log_to, tail},
    TestDb,
};

pub struct Serve {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Serve {
    /// `compare serve` on `db` with `args` (its group among them), ready once a spec is shown.
    pub async fn start(db: &TestDb, name: &str, args: &[&str]) -> Serve {
        let port = free_port();
        let logs = log_dir("serve");
        let child = service_command(env!("CARGO_BIN_EXE_compare"), db, "127.0.0.1:1")
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "100ms"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_to(&logs, name))
            .spawn()
            .unwrap();
        let serve = Serve {
            child,
            port,
            log: logs.join(format!("{name}.log")),
        };
        let started = Instant::now();
        loop {
            if let Ok(meta) = serve.json("/api/meta").await {
                if meta["waiting"].is_null() && meta["spec"].is_object() {
                    return serve;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "compare serve not ready: {}",
                tail(&serve.log, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn json(&self, path: &str) -> reqwest::Result<Value> {
        reqwest::get(self.url(path)).await?.json().await
    }

    /// Waits until `/api/meta`'s verdict satisfies `ok`.
    pub async fn accuracy_until(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let a = self.json("/api/meta").await.unwrap()["accuracy"].clone();
            if ok(&a) {
                return a;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: {a}\n{}",
                tail(&self.log, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
