//! stream-aggregator: event-time windowed aggregation of `raw_coin_data` into table `stream_agg`
//! and topic `aggregated_data`.

use clap::Parser;
use common::config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs};

/// Settings of the stream aggregator.
#[derive(Debug, Parser)]
#[command(
    name = "stream-aggregator",
    version,
    about = "Windowed aggregation of rate updates"
)]
pub struct Settings {
    /// Topic to read rate updates from.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// Topic to publish window results to.
    #[arg(long = "output-topic", env = "AGG_TOPIC", value_name = "AGG_TOPIC", default_value = "aggregated_data", value_parser = non_empty)]
    pub output_topic: String,
    /// Kafka consumer group.
    #[arg(long = "group", env = "AGGREGATOR_GROUP", value_name = "AGGREGATOR_GROUP", default_value = "stream-aggregator", value_parser = non_empty)]
    pub group: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Runs the aggregator until it is asked to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let topics = [settings.topic.as_str(), settings.output_topic.as_str()];
    let pool = common::prepare(&settings.mysql, Some((&settings.kafka, &topics))).await?;
    tracing::info!(topic = %settings.topic, output = %settings.output_topic, "stream-aggregator ready (the window engine arrives with its issue)");
    pool.close().await;
    Ok(())
}
