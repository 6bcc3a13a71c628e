//! Where the Kafka-protocol broker is, how topics we create are shaped, and the client settings
//! every service's clients start from (security in [`super::security`]).

use std::time::Duration;

use clap::Args;

use super::{
    security::KafkaSecurity,
    values::{non_empty, parse_duration, parse_properties, ConfigError, Properties},
};

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
