//! update-counter: keeps per-window update counts (table `coin_update_count`) from the stream
//! aggregator's output topic `aggregated_data`.

use clap::Parser;
use common::config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs};

/// Settings of the update counter.
#[derive(Debug, Parser)]
#[command(
    name = "update-counter",
    version,
    about = "Keeps per-window update counts in MySQL"
)]
pub struct Settings {
    /// Topic with the aggregator's window results.
    #[arg(long = "topic", env = "AGG_TOPIC", value_name = "AGG_TOPIC", default_value = "aggregated_data", value_parser = non_empty)]
    pub topic: String,
    /// Kafka consumer group.
    #[arg(long = "group", env = "UPDATE_COUNTER_GROUP", value_name = "UPDATE_COUNTER_GROUP", default_value = "update-counter", value_parser = non_empty)]
    pub group: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Runs the update counter until it is asked to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = common::prepare(
        &settings.mysql,
        Some((&settings.kafka, &[settings.topic.as_str()])),
    )
    .await?;
    tracing::info!(topic = %settings.topic, group = %settings.group, "update-counter ready (the counting loop arrives with its issue)");
    pool.close().await;
    Ok(())
}
