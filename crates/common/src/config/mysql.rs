//! Where the MySQL database is, and how to reach it (TLS in [`super::security`]).

use std::str::FromStr;

use clap::Args;
use sqlx::mysql::MySqlConnectOptions;

use super::{
    security::MySqlTls,
    values::{non_empty, parse_duration, ConfigError, Secret},
};
use std::time::Duration;

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
