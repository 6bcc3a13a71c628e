//! update-counter: keeps per-window update counts in table `coin_update_count` from the stream
//! aggregator's topic `aggregated_data`, one row per (pair, window).
//!
//! The upsert never lets an older or smaller emission overwrite a newer one: a window's count only
//! grows, so the row keeps the largest count seen and `is_final` once set stays set. Replays and
//! out-of-order deliveries are therefore harmless. Offsets, dead letters, reconnects and shutdown
//! are `common::ingest`'s, shared with raw-consumer.

use std::collections::HashMap;

use clap::Parser;
use common::{
    config::{non_empty, KafkaArgs, MySqlArgs, TelemetryArgs},
    ingest::{IngestArgs, IngestTarget, Meta, Sink},
    window::{WindowBounds, WindowResult},
    AssetId,
};
use sqlx::MySqlConnection;

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
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The part of a window result the counter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub base: AssetId,
    pub quote: AssetId,
    pub window: WindowBounds,
    pub update_count: u64,
    pub is_final: bool,
}

impl WindowCount {
    /// Combines two emissions of one window: the larger count, final once either is.
    pub fn merge(self, other: WindowCount) -> WindowCount {
        WindowCount {
            update_count: self.update_count.max(other.update_count),
            is_final: self.is_final || other.is_final,
            ..self
        }
    }
}

/// Upserts window counts into `coin_update_count`.
#[derive(Debug, Default)]
pub struct CountSink;

/// The upsert: never lower a count, never clear `is_final`; `updated_at` moves only on change.
const UPSERT: &str = "INSERT INTO coin_update_count \
    (start_time, end_time, asset_id_base, asset_id_quote, update_count, is_final, updated_at) VALUES ";
const ON_DUPLICATE: &str = " ON DUPLICATE KEY UPDATE \
    updated_at = IF(VALUES(update_count) > update_count OR (VALUES(is_final) AND NOT is_final), VALUES(updated_at), updated_at), \
    update_count = GREATEST(update_count, VALUES(update_count)), \
    is_final = is_final OR VALUES(is_final)";

impl Sink for CountSink {
    type Row = WindowCount;

    fn parse(&self, _meta: Meta, payload: &[u8]) -> Result<WindowCount, String> {
        let w = WindowResult::from_json(payload).map_err(|e| e.to_string())?;
        Ok(WindowCount {
            base: w.base,
            quote: w.quote,
            window: w.window,
            update_count: w.update_count,
            is_final: w.is_final,
        })
    }

    async fn write(
        &self,
        conn: &mut MySqlConnection,
        rows: &[&WindowCount],
    ) -> Result<u64, sqlx::Error> {
        // Many emissions of one window in a batch become one row.
        let mut merged: HashMap<(AssetId, AssetId, WindowBounds), WindowCount> = HashMap::new();
        for r in rows {
            merged
                .entry((r.base, r.quote, r.window))
                .and_modify(|m| *m = m.merge(**r))
                .or_insert(**r);
        }
        let merged: Vec<WindowCount> = merged.into_values().collect();
        let now = chrono::Utc::now().naive_utc();
        for chunk in merged.chunks(1000) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
            let sql = format!("{UPSERT}{values}{ON_DUPLICATE}");
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q
                    .bind(c.window.start.naive_utc())
                    .bind(c.window.end.naive_utc())
                    .bind(c.base.as_str())
                    .bind(c.quote.as_str())
                    .bind(c.update_count as i64)
                    .bind(c.is_final)
                    .bind(now);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(merged.len() as u64)
    }
}

/// Runs the update counter until it is asked to stop (or `--exit-idle`).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = common::prepare(
        &settings.mysql,
        Some((&settings.kafka, &[settings.topic.as_str()])),
    )
    .await?;
    let target = IngestTarget {
        service: "update-counter",
        topic: settings.topic.clone(),
        group: settings.group.clone(),
        client: settings.kafka.consumer_config(&settings.group),
    };
    let shutdown = common::shutdown::on_signal();
    let totals =
        common::ingest::run(&CountSink, &pool, &target, &settings.ingest, shutdown).await?;
    tracing::info!(?totals, "update-counter stopped");
    pool.close().await;
    Ok(())
}
