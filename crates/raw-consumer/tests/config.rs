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
