//! Bad configuration exits with status 2 and a message naming the setting, without echoing secrets.

use std::process::Command;

fn run_with(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raw-consumer"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("MYSQL_CONNECT_TIMEOUT", "1s")
        .env("KAFKA_CONNECT_TIMEOUT", "1s");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run raw-consumer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_port_exits_2_naming_it() {
    let (code, err) = run_with(&[("MYSQL_PORT", "not-a-port")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MYSQL_PORT"), "{err}");
}

#[test]
fn empty_bootstrap_servers_exits_2_naming_it() {
    let (code, err) = run_with(&[("KAFKA_BOOTSTRAP_SERVERS", "")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KAFKA_BOOTSTRAP_SERVERS"), "{err}");
}

#[test]
fn bad_database_url_exits_2_without_echoing_it() {
    let (code, err) = run_with(&[("DATABASE_URL", "postgres://user:s3cr3tpw@host/db")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("s3cr3tpw"), "{err}");
}

#[test]
fn bad_log_format_exits_2_naming_it() {
    let (code, err) = run_with(&[("LOG_FORMAT", "xml")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("LOG_FORMAT"), "{err}");
}

#[test]
fn help_lists_every_setting_and_hides_secrets() {
    let (code, out) = {
        let o = Command::new(env!("CARGO_BIN_EXE_raw-consumer"))
            .arg("--help")
            .env("MYSQL_PASSWORD", "hunter2")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0);
    for name in [
        "KAFKA_BOOTSTRAP_SERVERS",
        "MYSQL_HOST",
        "MYSQL_PORT",
        "MYSQL_USER",
        "MYSQL_PASSWORD",
        "MYSQL_DATABASE",
        "DATABASE_URL",
        "LOG_FORMAT",
        "RAW_TOPIC",
    ] {
        assert!(out.contains(name), "--help lacks {name}:\n{out}");
    }
    assert!(!out.contains("hunter2"));
}

#[test]
fn unreachable_mysql_is_reported_without_password() {
    // Port 1 on loopback refuses at once; the bounded retry gives up after MYSQL_CONNECT_TIMEOUT.
    let (code, err) = run_with(
        &[
            ("MYSQL_PORT", "1"),
            ("MYSQL_PASSWORD", "pw-should-not-show"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not reachable"), "{err}");
    assert!(!err.contains("pw-should-not-show"), "{err}");
}

#[test]
fn mysql_tls_required_without_tls_fails_at_once_naming_it_without_the_password() {
    // The test server has no TLS.
    let url = testkit::test_mysql_url();
    let started = std::time::Instant::now();
    let (code, err) = run_with(
        &[
            ("DATABASE_URL", &format!("{url}/coinstream")),
            ("MYSQL_SSL_MODE", "required"),
            ("MYSQL_CONNECT_TIMEOUT", "60s"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "not retried for a minute"
    );
    assert!(
        err.contains("MYSQL_SSL_MODE") && err.contains("TLS"),
        "{err}"
    );
    let password = url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('@').next())
        .unwrap();
    assert!(!err.contains(&format!(":{password}@")), "{err}");
}

#[tokio::test]
async fn kafka_tls_against_a_plaintext_broker_fails_fast_naming_the_setting() {
    let db = testkit::TestDb::new().await;
    let started = std::time::Instant::now();
    let (code, err) = run_with(
        &[
            ("DATABASE_URL", &db.database_url()),
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                &testkit::test_bootstrap_servers(),
            ),
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_CONNECT_TIMEOUT", "120s"),
            ("MYSQL_CONNECT_TIMEOUT", "5s"),
        ],
        &["--topic", "test-tls-probe", "--exit-idle", "1s"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "failed fast"
    );
    assert!(err.contains("KAFKA_SECURITY_PROTOCOL=ssl"), "{err}");
}

#[test]
fn sasl_without_credentials_is_a_config_error() {
    let (code, err) = run_with(
        &[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KAFKA_SASL_USERNAME"), "{err}");
}
