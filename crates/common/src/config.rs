//! Configuration shared by every service: environment variables (the seed's names), `.env`, CLI flags.
//!
//! Every setting is a clap argument with an `env` fallback, so `--help` lists them all and an invalid
//! value is reported by clap with the setting's flag and its environment name (the `value_name` is
//! the variable name), exiting with status 2. Secrets are [`Secret`]s: never shown by `Debug`,
//! `Display` or `--help`, and never echoed in an error.

use std::{fmt, path::Path, process, str::FromStr, time::Duration};

use clap::{Args, Parser, ValueEnum};
use sqlx::mysql::MySqlConnectOptions;

use crate::security::{KafkaSecurity, MySqlTls};

/// Exit status for bad configuration (clap uses the same one for usage errors).
pub const CONFIG_EXIT_CODE: i32 = crate::exit::CONFIG as i32;

/// A bad setting, found after clap parsed the command line.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    /// The environment variable name of the setting.
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// Prints the error and exits with [`CONFIG_EXIT_CODE`].
    pub fn exit(&self) -> ! {
        eprintln!("error: {self}");
        process::exit(CONFIG_EXIT_CODE)
    }
}

/// Loads `.env` from the working directory when present, then parses the command line and
/// environment into `T`. Exits with status 2 and a message naming the setting when that fails.
pub fn load<T: Parser>() -> T {
    load_dotenv(Path::new(".env"));
    T::parse()
}

/// Loads a dotenv file if it exists. Variables already set in the environment win.
pub fn load_dotenv(path: &Path) {
    match dotenvy::from_path(path) {
        Ok(()) => {}
        Err(e) if e.not_found() => {}
        Err(e) => ConfigError::new("(.env file)", format!("{}: {e}", path.display())).exit(),
    }
}

/// A string that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value, for the one place that must send it (a connection, an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Parses durations such as `250ms`, `10s`, `5m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 250ms, 10s, 5m)"))
}

/// Rejects empty and whitespace-only strings.
pub fn non_empty(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t.to_owned())
    }
}

/// Where the MySQL database is. `DATABASE_URL`, when set, wins over the `MYSQL_*` settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MySQL")]
pub struct MySqlArgs {
    /// Full connection URL (mysql://user:password@host:port/database); wins over MYSQL_* when set.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// MySQL host.
    #[arg(long = "mysql-host", env = "MYSQL_HOST", value_name = "MYSQL_HOST", default_value = "127.0.0.1", value_parser = non_empty)]
    pub host: String,
    /// MySQL TCP port.
    #[arg(long = "mysql-port", env = "MYSQL_PORT", value_name = "MYSQL_PORT", default_value_t = 3306, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// MySQL user.
    #[arg(long = "mysql-user", env = "MYSQL_USER", value_name = "MYSQL_USER", default_value = "coinstream", value_parser = non_empty)]
    pub user: String,
    /// MySQL password.
    #[arg(
        long = "mysql-password",
        env = "MYSQL_PASSWORD",
        value_name = "MYSQL_PASSWORD",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub password: Secret,
    /// MySQL database (schema) name.
    #[arg(long = "mysql-database", env = "MYSQL_DATABASE", value_name = "MYSQL_DATABASE", default_value = "coinstream", value_parser = non_empty)]
    pub database: String,
    /// How long to keep retrying at start-up while MySQL is not reachable.
    #[arg(id = "mysql_connect_timeout", long = "mysql-connect-timeout", env = "MYSQL_CONNECT_TIMEOUT", value_name = "MYSQL_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Connections in the pool.
    #[arg(long = "mysql-pool-size", env = "MYSQL_POOL_SIZE", value_name = "MYSQL_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub pool_size: u32,
    #[command(flatten)]
    pub tls: MySqlTls,
}

impl MySqlArgs {
    /// Connection options; an unparsable `DATABASE_URL` is a [`ConfigError`] that does not echo it.
    pub fn connect_options(&self) -> Result<MySqlConnectOptions, ConfigError> {
        let opts = match &self.database_url {
            Some(url) if !url.is_empty() => {
                if !url.expose().starts_with("mysql://") && !url.expose().starts_with("mariadb://")
                {
                    return Err(ConfigError::new(
                        "DATABASE_URL",
                        "must start with mysql:// (value not shown: it may hold a password)",
                    ));
                }
                MySqlConnectOptions::from_str(url.expose()).map_err(|e| {
                    ConfigError::new(
                        "DATABASE_URL",
                        format!("cannot be parsed ({}); value not shown", redact_sqlx(&e)),
                    )
                })?
            }
            _ => {
                let mut o = MySqlConnectOptions::new()
                    .host(&self.host)
                    .port(self.port)
                    .username(&self.user)
                    .database(&self.database);
                if !self.password.is_empty() {
                    o = o.password(self.password.expose());
                }
                o
            }
        };
        // Every timestamp we store is UTC; make the session agree so CURRENT_TIMESTAMP is UTC too.
        self.tls
            .apply(opts.timezone(Some("+00:00".to_owned())).charset("utf8mb4"))
    }

    /// Where we connect, for logs: never the password.
    pub fn describe(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => {
                let opts = self.connect_options().ok();
                match opts {
                    Some(o) => format!(
                        "mysql://{}@{}:{}/{}",
                        o.get_username(),
                        o.get_host(),
                        o.get_port(),
                        o.get_database().unwrap_or("")
                    ),
                    None => "DATABASE_URL (unparsable)".into(),
                }
            }
            _ => format!(
                "mysql://{}@{}:{}/{}",
                self.user, self.host, self.port, self.database
            ),
        }
    }
}

fn redact_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        _ => "invalid URL".into(),
    }
}

/// Where the Kafka-protocol broker is, and how topics we create are shaped.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Comma-separated host:port list of Kafka brokers.
    #[arg(long = "kafka-bootstrap-servers", env = "KAFKA_BOOTSTRAP_SERVERS", value_name = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092", value_parser = non_empty)]
    pub bootstrap_servers: String,
    /// Partitions of topics this service creates when they are missing.
    #[arg(long = "topic-partitions", env = "KAFKA_TOPIC_PARTITIONS", value_name = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub partitions: i32,
    /// Replication factor of topics this service creates.
    #[arg(long = "topic-replication", env = "KAFKA_TOPIC_REPLICATION", value_name = "KAFKA_TOPIC_REPLICATION", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication: i32,
    /// Extra librdkafka producer properties over our defaults: key=value,key=value.
    #[arg(long = "kafka-producer-properties", env = "KAFKA_PRODUCER_PROPERTIES", value_name = "KAFKA_PRODUCER_PROPERTIES", default_value = "", hide_default_value = true, value_parser = parse_properties)]
    pub producer_properties: Properties,
    /// Extra librdkafka consumer properties over our defaults: key=value,key=value.
    #[arg(long = "kafka-consumer-properties", env = "KAFKA_CONSUMER_PROPERTIES", value_name = "KAFKA_CONSUMER_PROPERTIES", default_value = "", hide_default_value = true, value_parser = parse_properties)]
    pub consumer_properties: Properties,
    /// How long to keep retrying at start-up while the broker is not reachable.
    #[arg(id = "kafka_connect_timeout", long = "kafka-connect-timeout", env = "KAFKA_CONNECT_TIMEOUT", value_name = "KAFKA_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub security: KafkaSecurity,
}

impl KafkaArgs {
    /// What every client needs: the brokers and the security settings.
    pub fn client_config(&self) -> Result<rdkafka::ClientConfig, ConfigError> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        self.security.apply(&mut c)?;
        Ok(c)
    }

    /// Creates the topics that are missing (see [`crate::kafka::ensure_topics`]). A TLS or SASL
    /// failure is a [`ConfigError`] naming the security settings.
    pub async fn ensure_topics(&self, names: &[&str]) -> anyhow::Result<()> {
        use anyhow::Context;
        let specs: Vec<crate::kafka::TopicSpec> = names
            .iter()
            .map(|t| crate::kafka::TopicSpec::new(*t, self.partitions, self.replication))
            .collect();
        let base = self.client_config()?;
        match crate::kafka::ensure_topics(&base, &specs, self.connect_timeout).await {
            Ok(()) => Ok(()),
            Err(crate::kafka::TopicsError::Security(failure)) => Err(ConfigError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!(
                    "{} does not fit the broker at {}: {failure} (check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*)",
                    self.security.describe(),
                    self.bootstrap_servers
                ),
            )
            .into()),
            Err(e) => Err(e).with_context(|| {
                format!("creating topics {names:?} at {}", self.bootstrap_servers)
            }),
        }
    }

    /// Producer configuration: our defaults (`kafka::producer_config`) plus the overrides.
    pub fn producer_config(&self) -> Result<rdkafka::ClientConfig, ConfigError> {
        let mut c = crate::kafka::producer_defaults(self.client_config()?);
        self.producer_properties.apply(&mut c);
        Ok(c)
    }
}

/// librdkafka properties given as `key=value,key=value`. `Debug` shows keys only (values may be
/// credentials such as `sasl.password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        for (k, v) in &self.0 {
            config.set(k, v);
        }
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Parses `key=value,key=value` (empty: none).
pub fn parse_properties(s: &str) -> Result<Properties, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => {
                return Err(format!(
                    "expected key=value, got {:?}",
                    item.split('=').next().unwrap_or("")
                ))
            }
        }
    }
    Ok(Properties(out))
}

/// What to do when MySQL's offset of a partition is beyond the broker's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOffsetAhead {
    /// Log an ERROR naming the partition and both offsets and exit with status 4.
    Fail,
    /// Log a WARN and read the partition again from its first offset (the log was refilled).
    ResetToStart,
}

/// Settings every consuming service shares: group membership, liveness, when to stop, how often
/// to report (the consumer runtime, `common::consumer`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Consumer")]
pub struct ConsumerArgs {
    /// Exit 0 once drained: every partition's offset in MySQL at the broker's high watermark and
    /// nothing received for this long (tests, benchmarks, batch-style runs).
    #[arg(long = "exit-idle", env = "EXIT_IDLE", value_name = "EXIT_IDLE", value_parser = parse_duration)]
    pub exit_idle: Option<Duration>,
    /// With --exit-idle: exit with status 3, naming the partitions still behind, when not drained
    /// this long after the start.
    #[arg(long = "max-wait", env = "MAX_WAIT", value_name = "MAX_WAIT", requires = "exit_idle", value_parser = parse_duration)]
    pub max_wait: Option<Duration>,
    /// Log and store statistics this often.
    #[arg(long = "stats-interval", env = "STATS_INTERVAL", value_name = "STATS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stats_interval: Duration,
    /// Kafka consumer session timeout: how soon a dead instance's partitions move to another. The
    /// watchdog rejoins the group after two session timeouts without progress.
    #[arg(long = "session-timeout", env = "KAFKA_SESSION_TIMEOUT", value_name = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Static group membership (`group.instance.id`): a restarted instance with the same id takes
    /// its partitions back without a rebalance. Unique per instance (`{hostname}` is replaced by
    /// the host name, e.g. a container's); unset: dynamic membership.
    #[arg(long = "group-instance-id", env = "KAFKA_GROUP_INSTANCE_ID", value_name = "KAFKA_GROUP_INSTANCE_ID", value_parser = non_empty)]
    pub group_instance_id: Option<String>,
    /// When MySQL's offset of a partition is beyond the broker's log (topic recreated, broker
    /// data lost): fail (exit 4) or reset-to-start (read the partition again from its start).
    #[arg(
        long = "on-offset-ahead",
        env = "ON_OFFSET_AHEAD",
        value_name = "ON_OFFSET_AHEAD",
        default_value = "fail",
        value_enum
    )]
    pub on_offset_ahead: OnOffsetAhead,
    /// After SIGTERM (or when drained), how long writes in flight and pending may take; past it
    /// the service exits 1 naming the offsets not written (not committed: the next run reads them
    /// again, nothing is lost).
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT", value_name = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ConsumerArgs {
    /// Sets the session timeout, a heartbeat at a quarter of it, and the static member id.
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        config
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 4).max(100).to_string(),
            );
        if let Some(id) = &self.group_instance_id {
            config.set("group.instance.id", id.replace("{hostname}", &hostname()));
        }
    }

    /// How long a partition may show no progress while it has messages waiting before the
    /// watchdog acts: two session timeouts.
    pub fn stall_after(&self) -> Duration {
        self.session_timeout * 2
    }
}

/// This machine's (or container's) host name; `localhost` when unknown.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging settings. The filter comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "pretty",
        value_enum
    )]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn consumer_settings_reach_the_client() {
        #[derive(Debug, Parser)]
        struct C {
            #[command(flatten)]
            consumer: ConsumerArgs,
        }
        let parse =
            |args: &[&str]| C::try_parse_from(std::iter::once("t").chain(args.iter().copied()));
        let c = parse(&[
            "--group-instance-id",
            "raw-{hostname}",
            "--session-timeout",
            "8s",
        ])
        .unwrap();
        let mut config = rdkafka::ClientConfig::new();
        c.consumer.apply(&mut config);
        assert_eq!(
            config.get("group.instance.id"),
            Some(format!("raw-{}", hostname()).as_str())
        );
        assert_eq!(config.get("session.timeout.ms"), Some("8000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("2000"));
        assert_eq!(c.consumer.stall_after(), Duration::from_secs(16));
        let c = parse(&[]).unwrap();
        let mut config = rdkafka::ClientConfig::new();
        c.consumer.apply(&mut config);
        assert_eq!(
            config.get("group.instance.id"),
            None,
            "dynamic membership by default"
        );
        assert_eq!(c.consumer.on_offset_ahead, OnOffsetAhead::Fail);
        assert_eq!(c.consumer.shutdown_timeout, Duration::from_secs(30));
        let err = parse(&["--shutdown-timeout", "never"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHUTDOWN_TIMEOUT"), "{err}");
        let err = parse(&["--max-wait", "5s"]).unwrap_err().to_string();
        assert!(
            err.contains("exit-idle"),
            "--max-wait needs --exit-idle: {err}"
        );
        let err = parse(&["--on-offset-ahead", "skip"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ON_OFFSET_AHEAD"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("five").is_err());
    }
}
