//! A private MariaDB server for tests that need a server set up their own way (TLS on, with the
//! test's certificates; `require_secure_transport`), beside the shared one every other test uses.
//!
//! A fresh data directory (`mariadb-install-db`) and `mariadbd` on a free port, run as the current
//! user; killed and its directory removed when dropped, also when the test fails. The programs come
//! from `COINSTREAM_TEST_MARIADBD` and `COINSTREAM_TEST_MARIADB_INSTALL_DB` (printed by
//! `scripts/infra.sh env`, which installs Debian's `mariadb-server-core`), else Debian's paths. A
//! server that cannot start fails the test, with the end of its log.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{
    mysql::{MySqlConnectOptions, MySqlSslMode},
    ConnectOptions, Connection, Executor,
};

use super::services::tail;

/// The server's TLS files (PEM). They are read at start and again by
/// [`PrivateMariaDb::reload_tls`], so a test can swap the certificate in place.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to set the server up.
#[derive(Debug, Clone, Default)]
pub struct MariaDbOptions {
    pub tls: Option<ServerTls>,
    /// `require_secure_transport=ON`: the server refuses TCP sessions without TLS.
    pub require_secure_transport: bool,
}

/// A MariaDB process of this test's own. Account [`PrivateMariaDb::user`] may do everything, over
/// TCP from 127.0.0.1 and over the server's Unix socket; database [`PrivateMariaDb::database`]
/// exists (empty).
#[derive(Debug)]
pub struct PrivateMariaDb {
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// What is found first: the variable's value, else the first existing path.
fn program(var: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{var} is not set and none of {candidates:?} exists: install Debian's \
                 mariadb-server-core (`scripts/infra.sh up` does), or set {var}"
            )
        })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs to completion; panics with the end of `log` when it fails.
fn run_logged(cmd: &mut Command, log: &Path, what: &str) {
    let file = std::fs::File::create(log).expect("a log file");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("a log file"))
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        status.success(),
        "{what} failed ({status}); the end of {}:\n{}",
        log.display(),
        tail(log, 30)
    );
}

impl PrivateMariaDb {
    /// Creates a data directory and starts the server on a free port; returns once the account
    /// can log in.
    pub async fn start(options: MariaDbOptions) -> Self {
        let suffix = super::unique_suffix();
        let dir = std::env::temp_dir().join(format!("coinstream-mariadb-{suffix}"));
        std::fs::create_dir_all(dir.join("data")).expect("a MariaDB directory");
        let mut server = PrivateMariaDb {
            port: 0,
            user: "coinstream".to_owned(),
            password: format!("tls-test-pw-{suffix}"),
            database: "coinstream".to_owned(),
            dir,
            child: None,
        };
        server.install();
        // A port found free can be taken before the server binds it: then once more elsewhere.
        for attempt in 1..=3 {
            server.port = super::prometheus::free_port();
            if server.up(&options, attempt == 3).await {
                return server;
            }
        }
        unreachable!("the last attempt panics")
    }

    fn user_flag() -> Option<&'static str> {
        // mariadbd will not run as root unless told so; as anyone else it runs as that user.
        running_as_root().then_some("--user=root")
    }

    /// Small InnoDB files and buffers: a few MB on disk and in memory, not a production default.
    const SMALL: [&str; 3] = [
        "--innodb-buffer-pool-size=8M",
        "--innodb-log-file-size=4M",
        "--skip-name-resolve",
    ];

    fn install(&self) {
        let install_db = program(
            "COINSTREAM_TEST_MARIADB_INSTALL_DB",
            &[
                "/usr/bin/mariadb-install-db",
                "/usr/local/bin/mariadb-install-db",
            ],
        );
        let mut cmd = Command::new(install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg("--skip-test-db")
            .args(Self::user_flag())
            .args(Self::SMALL);
        run_logged(
            &mut cmd,
            &self.dir.join("install.log"),
            "mariadb-install-db",
        );
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("mariadbd.log")
    }

    /// Starts mariadbd and waits until the account logs in over the socket. `false`: it could
    /// not bind its port and `last` is false (the caller tries another).
    async fn up(&mut self, options: &MariaDbOptions, last: bool) -> bool {
        let init = self.dir.join("init.sql");
        let (user, pw, db) = (&self.user, &self.password, &self.database);
        let mut sql = format!("CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4;\n");
        for host in ["127.0.0.1", "localhost"] {
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{pw}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}' WITH GRANT OPTION;\n"
            ));
        }
        std::fs::write(&init, sql).expect("the init file");
        let _ = std::fs::remove_file(self.log());
        let mariadbd = program(
            "COINSTREAM_TEST_MARIADBD",
            &["/usr/sbin/mariadbd", "/usr/local/sbin/mariadbd"],
        );
        let mut cmd = Command::new(mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .args(Self::user_flag())
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!("--log-error={}", self.log().display()))
            .arg(format!("--init-file={}", init.display()))
            .args(Self::SMALL);
        if let Some(tls) = &options.tls {
            cmd.arg(format!("--ssl-ca={}", tls.ca.display()))
                .arg(format!("--ssl-cert={}", tls.cert.display()))
                .arg(format!("--ssl-key={}", tls.key.display()));
        }
        if options.require_secure_transport {
            cmd.arg("--require-secure-transport=ON");
        }
        // What it says before its log is open (bad options) goes here.
        let out = std::fs::File::create(self.dir.join("mariadbd.out")).expect("a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .expect("starting mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = self.admin_options().connect().await {
                let _ = c.close().await;
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("waiting for mariadbd"));
            if let Some(status) = exited {
                self.child = None;
                let log = self.logs();
                if !last && log.contains("Address already in use") {
                    return false;
                }
                panic!("mariadbd exited at start-up ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not accept the account within 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of the server's logs, for failure messages (the files go with the directory unless
    /// `COINSTREAM_TEST_KEEP=1`).
    fn logs(&self) -> String {
        let out = self.dir.join("mariadbd.out");
        format!(
            "the end of {}:\n{}\nthe end of {}:\n{}",
            out.display(),
            tail(&out, 10),
            self.log().display(),
            tail(&self.log(), 30)
        )
    }

    /// The account over the Unix socket, without TLS (a socket counts as secure transport).
    pub fn admin_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .socket(self.socket())
            .username(&self.user)
            .password(&self.password)
            .ssl_mode(MySqlSslMode::Disabled)
    }

    /// Reads the TLS files again (`FLUSH SSL`): sessions opened from now on get the new
    /// certificate.
    pub async fn reload_tls(&self) {
        let mut c = self
            .admin_options()
            .connect()
            .await
            .expect("an admin session");
        c.execute("FLUSH SSL").await.expect("FLUSH SSL");
        let _ = c.close().await;
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its data is thrown away: no need for a clean shutdown.
            let _ = child.kill();
            let _ = child.wait();
        }
        if super::keep() {
            eprintln!("keeping the MariaDB directory {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
