//! Headless Chromium driven through ChromeDriver (WebDriver, by fantoccini), for the dashboard's
//! browser tests: scripts evaluated in the page, its errors and Chromium's console log.
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use testkit::{prometheus::free_port, services::log_to};

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: std::path::PathBuf,
}

impl Browser {
    /// Headless Chromium with the flags it needs on a machine without a network, a fresh profile.
    pub async fn start(logs: &Path) -> Self {
        let chromedriver = std::env::var("COINSTREAM_TEST_CHROMEDRIVER").expect(
            "COINSTREAM_TEST_CHROMEDRIVER is not set: run the tests through scripts/test.sh, or \
             `eval \"$(scripts/infra.sh up)\"` (it installs Debian's chromium and chromium-driver)",
        );
        let chromium = std::env::var("COINSTREAM_TEST_CHROMIUM").expect("COINSTREAM_TEST_CHROMIUM");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log_to(logs, "chromedriver"))
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("coinstream-chromium-{}", testkit::unique_suffix()));
        let caps = json!({
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1700",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let caps: serde_json::Map<String, Value> = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            // Plain HTTP to the local driver: no TLS stack needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session with Chromium: {e}"),
            }
        };
        Browser {
            client,
            driver,
            profile,
        }
    }

    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Waits until `script` returns `true`; false after `limit`.
    pub async fn until(&self, script: &str, limit: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.eval(script).await == Value::Bool(true) {
                return true;
            }
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn errors(&self) -> Value {
        self.eval("return window.__errors || ['the error catcher did not load'];")
            .await
    }

    /// Chromium's console entries at level SEVERE since the last call (errors, failed loads,
    /// uncaught exceptions: what the developer tools' console shows in red).
    pub async fn console_errors(&self) -> Vec<Value> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|e| panic!("reading Chromium's console log: {e}"));
        let entries = entries.as_array().cloned().unwrap_or_default();
        entries
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect()
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// ChromeDriver's log command (`POST /session/{id}/se/log`, type `browser`): the console entries
/// since the last call. fantoccini has no method for it.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
