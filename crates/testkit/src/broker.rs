//! A private broker for tests that restart the broker (the shared one serves every other test).
//!
//! The command comes from `COINSTREAM_TEST_BROKER_CMD` (printed by `scripts/infra.sh env`), a
//! template with `{addr}` (the host:port to listen on and advertise); it runs in an empty
//! directory of its own, for its data. Nothing here knows which broker it is.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::services::{terminate, wait_for};

/// A broker process of this test's own; stopped when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    pub bootstrap_servers: String,
    command: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker on a free port with a fresh data directory.
    pub async fn start() -> Self {
        let template = std::env::var("COINSTREAM_TEST_BROKER_CMD").unwrap_or_else(|_| {
            panic!("COINSTREAM_TEST_BROKER_CMD is not set: run the tests through scripts/test.sh, or set it from `scripts/infra.sh env`")
        });
        let port = super::prometheus::free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir =
            std::env::temp_dir().join(format!("coinstream-broker-{}", super::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("broker data directory");
        let command = template.replace("{addr}", &addr);
        let mut broker = PrivateBroker {
            bootstrap_servers: addr,
            command,
            dir,
            child: None,
        };
        broker.up().await;
        broker
    }

    async fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let child = Command::new("sh")
            .args(["-c", &format!("exec {}", self.command)])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("starting the private broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&self.bootstrap_servers).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private broker did not listen on {} within 60 s (log: {})",
                self.bootstrap_servers,
                self.dir.join("broker.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 15 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if wait_for(&mut child, Duration::from_secs(15))
                .await
                .is_none()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Stops and starts the broker again on the same address and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.up().await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var("COINSTREAM_TEST_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
