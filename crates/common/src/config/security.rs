//! TLS and SASL settings: to a managed Kafka (librdkafka with OpenSSL: TLS, SASL PLAIN and SCRAM)
//! and to MySQL (rustls). A combination that cannot work is a [`ConfigError`] naming the setting;
//! secrets are [`Secret`]s (never shown).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};

use super::values::{ConfigError, Secret};

/// How clients talk to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext", alias = "sasl-plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl", alias = "sasl-ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// SASL mechanisms librdkafka has built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS and SASL to the brokers (every client: consumers, producers, topic creation).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka security")]
pub struct KafkaSecurity {
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        id = "kafka_security_protocol",
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_name = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext",
        value_enum
    )]
    pub protocol: SecurityProtocol,
    /// With a sasl_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(
        id = "kafka_sasl_mechanism",
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_name = "KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(
        id = "kafka_sasl_username",
        long = "kafka-sasl-username",
        env = "KAFKA_SASL_USERNAME",
        value_name = "KAFKA_SASL_USERNAME"
    )]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[arg(
        id = "kafka_sasl_password",
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        value_name = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,
    /// CA certificates (PEM file) to verify the brokers with; default: the system's.
    #[arg(
        id = "kafka_ssl_ca_location",
        long = "kafka-ssl-ca-location",
        env = "KAFKA_SSL_CA_LOCATION",
        value_name = "KAFKA_SSL_CA_LOCATION"
    )]
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        id = "kafka_ssl_certificate_location",
        long = "kafka-ssl-certificate-location",
        env = "KAFKA_SSL_CERTIFICATE_LOCATION",
        value_name = "KAFKA_SSL_CERTIFICATE_LOCATION",
        requires = "kafka_ssl_key_location"
    )]
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(
        id = "kafka_ssl_key_location",
        long = "kafka-ssl-key-location",
        env = "KAFKA_SSL_KEY_LOCATION",
        value_name = "KAFKA_SSL_KEY_LOCATION",
        requires = "kafka_ssl_certificate_location"
    )]
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the client private key.
    #[arg(
        id = "kafka_ssl_key_password",
        long = "kafka-ssl-key-password",
        env = "KAFKA_SSL_KEY_PASSWORD",
        value_name = "KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<Secret>,
}

fn existing(setting: &'static str, path: &Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    match path {
        None => Ok(None),
        Some(p) if p.is_file() => Ok(Some(p.display().to_string())),
        Some(p) => Err(ConfigError::new(
            setting,
            format!("{} is not a readable file", p.display()),
        )),
    }
}

impl KafkaSecurity {
    /// Sets the security properties on a client configuration.
    pub fn apply(&self, c: &mut ClientConfig) -> Result<(), ConfigError> {
        let p = self.protocol;
        c.set("security.protocol", p.librdkafka());
        if p != SecurityProtocol::Plaintext {
            // A TLS or SASL handshake that a broker does not answer fails after 10 s, not 30.
            c.set("socket.connection.setup.timeout.ms", "10000");
        }
        let tls_files = [
            (
                "KAFKA_SSL_CA_LOCATION",
                &self.ssl_ca_location,
                "ssl.ca.location",
            ),
            (
                "KAFKA_SSL_CERTIFICATE_LOCATION",
                &self.ssl_certificate_location,
                "ssl.certificate.location",
            ),
            (
                "KAFKA_SSL_KEY_LOCATION",
                &self.ssl_key_location,
                "ssl.key.location",
            ),
        ];
        for (setting, path, key) in tls_files {
            if let Some(file) = existing(setting, path)? {
                if !p.tls() {
                    return Err(ConfigError::new(
                        setting,
                        "needs KAFKA_SECURITY_PROTOCOL ssl or sasl_ssl",
                    ));
                }
                c.set(key, file);
            }
        }
        if let Some(pw) = &self.ssl_key_password {
            c.set("ssl.key.password", pw.expose());
        }
        if !p.sasl() {
            if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    "needs KAFKA_SECURITY_PROTOCOL sasl_plaintext or sasl_ssl",
                ));
            }
            return Ok(());
        }
        let mechanism = self.sasl_mechanism.ok_or_else(|| {
            ConfigError::new(
                "KAFKA_SASL_MECHANISM",
                "must be set with a sasl_* protocol (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)",
            )
        })?;
        let user = self
            .sasl_username
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ConfigError::new("KAFKA_SASL_USERNAME", "must be set with a sasl_* protocol")
            })?;
        let password = self
            .sasl_password
            .as_ref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConfigError::new("KAFKA_SASL_PASSWORD", "must be set with a sasl_* protocol")
            })?;
        c.set("sasl.mechanism", mechanism.librdkafka())
            .set("sasl.username", user)
            .set("sasl.password", password.expose());
        Ok(())
    }

    /// The settings that decide how a connection is secured, for error messages (no secrets).
    pub fn describe(&self) -> String {
        let mut out = format!("KAFKA_SECURITY_PROTOCOL={}", self.protocol.librdkafka());
        if let Some(m) = self.sasl_mechanism {
            out.push_str(&format!(", KAFKA_SASL_MECHANISM={}", m.librdkafka()));
        }
        out
    }
}

/// MySQL's TLS mode, as the MySQL clients name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MySqlTlsMode {
    Disabled,
    Preferred,
    Required,
    #[value(name = "verify_ca", alias = "verify-ca")]
    VerifyCa,
    #[value(name = "verify_identity", alias = "verify-identity")]
    VerifyIdentity,
}

/// TLS to MySQL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MySQL TLS")]
pub struct MySqlTls {
    /// disabled, preferred, required, verify_ca or verify_identity (default: preferred, or what
    /// DATABASE_URL says).
    #[arg(
        id = "mysql_ssl_mode",
        long = "mysql-ssl-mode",
        env = "MYSQL_SSL_MODE",
        value_name = "MYSQL_SSL_MODE",
        value_enum
    )]
    pub mode: Option<MySqlTlsMode>,
    /// CA certificates (PEM file) to verify the server with (verify_ca, verify_identity).
    #[arg(
        id = "mysql_ssl_ca",
        long = "mysql-ssl-ca",
        env = "MYSQL_SSL_CA",
        value_name = "MYSQL_SSL_CA"
    )]
    pub ca: Option<PathBuf>,
}

impl MySqlTls {
    pub fn apply(&self, mut o: MySqlConnectOptions) -> Result<MySqlConnectOptions, ConfigError> {
        if let Some(mode) = self.mode {
            o = o.ssl_mode(match mode {
                MySqlTlsMode::Disabled => MySqlSslMode::Disabled,
                MySqlTlsMode::Preferred => MySqlSslMode::Preferred,
                MySqlTlsMode::Required => MySqlSslMode::Required,
                MySqlTlsMode::VerifyCa => MySqlSslMode::VerifyCa,
                MySqlTlsMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
            });
        }
        if let Some(ca) = existing("MYSQL_SSL_CA", &self.ca)? {
            o = o.ssl_ca(ca);
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaSecurity,
    }

    fn apply(args: &[&str]) -> Result<ClientConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        let mut c = ClientConfig::new();
        cli.kafka.apply(&mut c).map(|()| c)
    }

    #[test]
    fn sasl_needs_its_settings_and_never_shows_the_password() {
        let c = apply(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password",
            "s3cret",
        ])
        .unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        let cli = Cli::try_parse_from(["t", "--kafka-sasl-password", "s3cret"]).unwrap();
        assert!(!format!("{cli:?}").contains("s3cret"));
        assert!(!cli.kafka.describe().contains("s3cret"));
        let e = apply(&[
            "--kafka-security-protocol",
            "sasl-plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
        ])
        .unwrap_err();
        assert_eq!(e.setting, "KAFKA_SASL_USERNAME");
        let e = apply(&["--kafka-security-protocol", "sasl-plaintext"]).unwrap_err();
        assert_eq!(e.setting, "KAFKA_SASL_MECHANISM");
        let e = apply(&["--kafka-sasl-mechanism", "PLAIN"]).unwrap_err();
        assert_eq!(e.setting, "KAFKA_SASL_MECHANISM");
    }

    #[test]
    fn tls_files_must_exist_and_need_tls() {
        let e = apply(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            "/nonexistent/ca.pem",
        ])
        .unwrap_err();
        assert_eq!(e.setting, "KAFKA_SSL_CA_LOCATION");
        let ca = std::env::current_exe().unwrap();
        let ca = ca.to_str().unwrap();
        let e = apply(&["--kafka-ssl-ca-location", ca]).unwrap_err();
        assert!(e.reason.contains("KAFKA_SECURITY_PROTOCOL"), "{e}");
        let c = apply(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            ca,
        ])
        .unwrap();
        assert_eq!(c.get("ssl.ca.location"), Some(ca));
        assert_eq!(
            apply(&[]).unwrap().get("security.protocol"),
            Some("plaintext")
        );
    }
}
