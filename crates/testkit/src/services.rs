//! Service binaries as processes in tests: where the binaries are, where their logs go, and
//! signals and waits that never hang a test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The service binaries a test may run.
const SERVICES: [&str; 5] = [
    "producer",
    "raw-consumer",
    "stream-aggregator",
    "update-counter",
    "compare",
];

/// Path of service binary `name` in this build's target directory (the test binary lives in
/// `target/<profile>/deps`). The service binaries are brought up to date once per test process
/// (`cargo build --bins`, a no-op when they are): a test run of one package must not run the
/// other packages' binaries as an earlier build left them.
pub fn service_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    assert!(SERVICES.contains(&name), "unknown service {name}");
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "--quiet"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        for s in SERVICES {
            cmd.args(["-p", s]);
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the service binaries");
    });
    dir.join(name)
}

/// A directory for one test's service logs: `$COINSTREAM_TEST_LOG_DIR/<test>` when set (kept),
/// else a fresh temporary directory.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = match std::env::var("COINSTREAM_TEST_LOG_DIR") {
        Ok(d) => PathBuf::from(d).join(test),
        Err(_) => {
            std::env::temp_dir().join(format!("coinstream-{test}-{}", super::unique_suffix()))
        }
    };
    std::fs::create_dir_all(&dir).expect("creating the log directory");
    dir
}

/// Appends to `dir/<name>.log`, for a service's stderr.
pub fn log_to(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .map(Stdio::from)
        .expect("opening a service log")
}

/// The last `lines` lines of a log, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends SIGTERM (a graceful stop) to a child.
pub fn terminate(child: &Child) {
    signal(child, "TERM");
}

/// Waits for a child at most `limit`; `None` if it is still running then.
pub async fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `path` contains `needle`, at most `limit`; whether it did.
pub async fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> bool {
    wait_for_log_matching(path, |text| text.contains(needle), limit).await
}

/// Waits until the text of `path` satisfies `matches`, at most `limit`; whether it did.
pub async fn wait_for_log_matching(
    path: &Path,
    matches: impl Fn(&str) -> bool,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| matches(&t)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether a consumer's log says it holds at least one partition (its latest assignment).
pub fn holds_partitions(log: &str) -> bool {
    log.lines()
        .rev()
        .find(|l| l.contains("partitions ready") || l.contains("partitions revoked"))
        .is_some_and(|l| {
            l.contains("partitions ready partitions=[") && !l.contains("partitions=[]")
        })
}

/// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to a child.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status();
}

/// A child process killed (SIGKILL) and reaped when dropped: a test that fails half-way leaves no
/// service running behind it.
#[derive(Debug)]
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            kill(&mut self.0);
        }
    }
}

/// Spawns `cmd` as a [`Running`] child.
pub fn spawn_running(cmd: &mut Command) -> Running {
    Running(cmd.spawn().expect("starting a service"))
}

/// SIGKILLs a child and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How a restarted consumer did in [`kill_when_ready_and_restart`].
#[derive(Debug)]
pub struct Drill {
    pub status: ExitStatus,
    /// From the restart to the exit.
    pub took: Duration,
    /// The restarted instance's log.
    pub log: PathBuf,
}

/// The restart drill: starts a consumer (`make(extra args)`), SIGKILLs it as soon as it holds
/// partitions (a dead member the group coordinator still counts), and starts it again at once
/// with `--exit-idle 3s --max-wait 60s`. Returns when the restarted one exits (panics if it has
/// not 75 s after the restart).
pub async fn kill_when_ready_and_restart(make: impl Fn(&[&str]) -> Command, logs: &Path) -> Drill {
    let first_log = logs.join("first.log");
    let mut first = make(&[])
        .stdout(Stdio::null())
        .stderr(log_to(logs, "first"))
        .spawn()
        .expect("starting the consumer");
    assert!(
        wait_for_log(&first_log, "partitions ready", Duration::from_secs(60)).await,
        "the first instance never held partitions:\n{}",
        tail(&first_log, 30)
    );
    kill(&mut first);
    let started = Instant::now();
    let mut second = make(&["--exit-idle", "3s", "--max-wait", "60s"])
        .stdout(Stdio::null())
        .stderr(log_to(logs, "second"))
        .spawn()
        .expect("restarting the consumer");
    let log = logs.join("second.log");
    let Some(status) = wait_for(&mut second, Duration::from_secs(75)).await else {
        kill(&mut second);
        panic!(
            "the restarted instance was still running 75 s after the restart:\n{}",
            tail(&log, 40)
        );
    };
    Drill {
        status,
        took: started.elapsed(),
        log,
    }
}

/// Service `service` of a whole pipeline on topics `raw` and `agg`, with groups `agg`, `raw`
/// and `cnt` of `kafka`, 6 s sessions, and (for the aggregator) 10 s windows, a 5 s watermark
/// and a 3 s idle timeout. Its stdout is discarded.
pub fn pipeline_command(
    service: &str,
    db: &super::TestDb,
    kafka: &super::TestKafka,
    (raw, agg): (&str, &str),
) -> Command {
    let bin = service_binary(service);
    let mut c = super::service_command(
        bin.to_str().expect("UTF-8 path"),
        db,
        &kafka.bootstrap_servers,
    );
    c.env("RAW_TOPIC", raw)
        .env("AGG_TOPIC", agg)
        .env("AGGREGATOR_GROUP", kafka.group("agg"))
        .env("RAW_CONSUMER_GROUP", kafka.group("raw"))
        .env("UPDATE_COUNTER_GROUP", kafka.group("cnt"))
        .env("KAFKA_SESSION_TIMEOUT", "6s")
        .stdout(Stdio::null());
    if service == "stream-aggregator" {
        c.args([
            "--window",
            "10s",
            "--watermark",
            "5s",
            "--idle-timeout",
            "3s",
        ]);
    }
    c
}
