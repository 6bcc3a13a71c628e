//! raw-consumer: stores every rate update from topic `raw_coin_data` in MySQL table `raw_coin_data`.

use clap::Parser;
use common::config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs};

/// Settings of the raw consumer.
#[derive(Debug, Parser)]
#[command(
    name = "raw-consumer",
    version,
    about = "Stores raw rate updates from Kafka in MySQL"
)]
pub struct Settings {
    /// Topic to read rate updates from.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// Kafka consumer group.
    #[arg(long = "group", env = "RAW_CONSUMER_GROUP", value_name = "RAW_CONSUMER_GROUP", default_value = "raw-consumer", value_parser = non_empty)]
    pub group: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Runs the raw consumer until it is asked to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = common::prepare(
        &settings.mysql,
        Some((&settings.kafka, &[settings.topic.as_str()])),
    )
    .await?;
    tracing::info!(topic = %settings.topic, group = %settings.group, "raw-consumer ready (the ingest loop arrives with its issue)");
    pool.close().await;
    Ok(())
}
