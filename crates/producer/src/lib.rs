//! producer: fetches exchange rates (CoinAPI REST, a built-in simulator, or a file replay) and
//! publishes them to topic `raw_coin_data`, keyed `BASE/QUOTE`.

use clap::Parser;
use common::config::{non_empty, KafkaArgs, MySqlArgs, Secret, TelemetryArgs};

/// Settings of the producer.
#[derive(Debug, Parser)]
#[command(
    name = "producer",
    version,
    about = "Publishes exchange-rate updates to Kafka"
)]
pub struct Settings {
    /// Topic to publish rate updates to.
    #[arg(long = "topic", env = "RAW_TOPIC", value_name = "RAW_TOPIC", default_value = "raw_coin_data", value_parser = non_empty)]
    pub topic: String,
    /// CoinAPI key (sent as X-CoinAPI-Key; never logged).
    #[arg(
        long = "coinapi-key",
        env = "COINAPI_KEY",
        value_name = "COINAPI_KEY",
        hide_env_values = true
    )]
    pub coinapi_key: Option<Secret>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Runs the producer until it is done or asked to stop.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = common::prepare(
        &settings.mysql,
        Some((&settings.kafka, &[settings.topic.as_str()])),
    )
    .await?;
    tracing::info!(topic = %settings.topic, "producer ready (sources arrive with the producer issue)");
    pool.close().await;
    Ok(())
}
