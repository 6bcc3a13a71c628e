//! The aggregator's MySQL side, and the formats of what it keeps there, both ways: restoring a
//! partition (claiming it, reading its state, duplicate log and outbox) and writing one flush
//! (window rows, late events, dead letters, duplicate log, state, outbox and offsets) in a single
//! transaction.
//!
//! Formats: the state is JSON ([`StoredState`]: the window spec, lateness and the engine's
//! snapshot); the duplicate log is the compact binary of [`seen_codec`]; the outbox (results
//! committed but not confirmed published) is a JSON array of the results' message JSON. Offsets
//! live in `kafka_offsets` ([`OffsetStore`]), like every service's.

mod restore;
mod seen_codec;
mod write;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::window::WindowSpec;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::engine::Snapshot;

pub use restore::{restore, Restored, SpecMismatch};
pub use write::{standing, write_flush, FlushOutcome, LateRow, PartFlush, Standing};

/// What is stored per partition besides the offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredState {
    spec: WindowSpec,
    lateness_us: i64,
    snapshot: Snapshot,
}

pub fn to_datetime(us: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .naive_utc()
}

/// Records the window spec the group runs with, for compare's batch side.
pub async fn record_spec(
    pool: &MySqlPool,
    group: &str,
    config: &crate::Config,
    mode: crate::settings::OutputMode,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stream_agg_spec (consumer_group, window_us, slide_us, watermark_us, mode, updated_at) \
         VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE window_us = VALUES(window_us), \
         slide_us = VALUES(slide_us), watermark_us = VALUES(watermark_us), mode = VALUES(mode), updated_at = VALUES(updated_at)",
    )
    .bind(group)
    .bind(config.spec.size_us)
    .bind(config.spec.slide_us)
    .bind(config.lateness_us)
    .bind(format!("{mode:?}").to_lowercase())
    .execute(pool)
    .await?;
    Ok(())
}
