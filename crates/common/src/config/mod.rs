//! Configuration shared by every service: environment variables (the seed's names), `.env`, CLI flags.
//!
//! Every setting is a clap argument with an `env` fallback, so `--help` lists them all and an invalid
//! value is reported by clap with the setting's flag and its environment name (the `value_name` is
//! the variable name), exiting with status 2. Secrets are [`Secret`]s: never shown by `Debug`,
//! `Display` or `--help`, and never echoed in an error.
//!
//! By part: [`values`] (secrets, errors, durations, properties), [`mysql`], [`kafka`] and their
//! [`security`] (TLS, SASL), [`logging`].

pub mod kafka;
pub mod logging;
pub mod mysql;
pub mod security;
pub mod values;

pub use kafka::KafkaArgs;
pub use logging::{LogFormat, TelemetryArgs};
pub use mysql::MySqlArgs;
pub use values::{
    hostname, load, load_dotenv, non_empty, parse_duration, parse_properties, ConfigError,
    Properties, Secret, CONFIG_EXIT_CODE,
};

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        mysql: MySqlArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let cli = parse(&[
            "--mysql-password",
            "hunter2",
            "--database-url",
            "mysql://u:pw123@h/db",
        ])
        .unwrap();
        let dbg = format!("{cli:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("pw123"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        assert_eq!(cli.mysql.password.expose(), "hunter2");
        assert_eq!(cli.mysql.describe(), "mysql://u@h:3306/db");
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let err = parse(&["--mysql-port", "notaport"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MYSQL_PORT"), "{err}");
        let err = parse(&["--kafka-bootstrap-servers", " "])
            .unwrap_err()
            .to_string();
        assert!(err.contains("KAFKA_BOOTSTRAP_SERVERS"), "{err}");
        let err = parse(&["--mysql-connect-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MYSQL_CONNECT_TIMEOUT"), "{err}");
    }

    #[test]
    fn bad_database_url_is_named_but_not_echoed() {
        let cli = parse(&["--database-url", "postgres://u:topsecret@h/db"]).unwrap();
        let err = cli.mysql.connect_options().unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn database_url_wins_over_parts() {
        let cli = parse(&[
            "--database-url",
            "mysql://a:b@dbhost:3307/other",
            "--mysql-host",
            "ignored",
        ])
        .unwrap();
        let o = cli.mysql.connect_options().unwrap();
        assert_eq!(
            (o.get_host(), o.get_port(), o.get_database()),
            ("dbhost", 3307, Some("other"))
        );
    }

    #[test]
    fn properties_parse_and_hide_values() {
        let p = parse_properties("linger.ms=50, sasl.password=pw").unwrap();
        assert_eq!(p.0[0], ("linger.ms".to_owned(), "50".to_owned()));
        assert!(!format!("{p:?}").contains("pw\""));
        assert!(parse_properties("").unwrap().0.is_empty());
        assert!(parse_properties("novalue").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("five").is_err());
    }
}
