//! The aggregator's MySQL side, and the formats of what it keeps there, both ways: restoring a
//! partition (claiming it, reading its state, duplicate log and outbox) and writing one flush
//! (window rows, late events, dead letters, duplicate log, state, outbox and offsets) in a single
//! transaction.
//!
//! Formats: the state is JSON ([`StoredState`]: the window spec, lateness and the engine's
//! snapshot); the duplicate log is the compact binary of [`seen_codec`]; the outbox (results
//! committed but not confirmed published) is a JSON array of the results' message JSON. Offsets
//! live in `kafka_offsets` ([`OffsetStore`]), like every service's.

mod log_marks;
mod restore;
mod seen_codec;
mod write;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::window::WindowSpec;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::engine::Snapshot;

pub use log_marks::LogMarks;
pub use restore::{restore, Restored, SpecMismatch};
pub use write::{standing, write_flush, FlushOutcome, LateRow, PartFlush, Standing};

/// What is stored per partition besides the offsets. A state from before several specs has only
/// `spec`; one written since has `specs` (and `spec`, the first, for older readers).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredState {
    #[serde(default)]
    specs: Vec<WindowSpec>,
    spec: Option<WindowSpec>,
    lateness_us: i64,
    snapshot: Snapshot,
}

impl StoredState {
    /// The specs the state was built with.
    fn specs(&self) -> Vec<WindowSpec> {
        if self.specs.is_empty() {
            self.spec.into_iter().collect()
        } else {
            self.specs.clone()
        }
    }
}

pub fn to_datetime(us: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .naive_utc()
}

/// Records the window specs the group runs with (one row each), for compare's batch side.
pub async fn record_specs(
    pool: &MySqlPool,
    config: &crate::Config,
    mode: crate::settings::OutputMode,
) -> Result<(), sqlx::Error> {
    let mode = format!("{mode:?}").to_lowercase();
    for spec in config.specs.list() {
        sqlx::query(
            "INSERT INTO stream_agg_specs (consumer_group, window_us, slide_us, watermark_us, mode, updated_at) \
             VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE watermark_us = VALUES(watermark_us), \
             mode = VALUES(mode), updated_at = VALUES(updated_at)",
        )
        .bind(&*config.group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(config.lateness_us)
        .bind(&mode)
        .execute(pool)
        .await?;
    }
    Ok(())
}
