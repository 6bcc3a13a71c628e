//! Partition ownership: what the aggregator keeps per partition it holds, restored from MySQL
//! when the partition is assigned. The restore claims the partition (an ownership epoch that
//! fences every earlier owner's writes, including one still in flight) and reads its offset,
//! state, duplicate log and outbox in one transaction. A revoked partition is dropped: its state
//! as of the last flush is in MySQL, and the new owner reads the rest again.

use std::time::Instant;

use std::sync::Arc;

use common::{observe::Health, retry::retry};
use consumer::{dead_letters::DeadLetter, offsets::OffsetStore};
use sqlx::MySqlPool;

use crate::{
    engine::PartitionEngine,
    outbox::{Deliveries, Encoded},
    store::{self, LateRow, LogMarks, Restored},
    Config,
};

/// One held partition's engine and what it has not written yet.
#[derive(Debug)]
pub struct Part {
    /// Ownership epoch claimed at restore; flushes are refused once another instance claims.
    pub epoch: i64,
    pub engine: PartitionEngine,
    /// Next offset to apply; -1 until known (nothing stored, nothing read).
    pub next_offset: i64,
    /// The next offset MySQL holds (fencing); `None` before the first write.
    pub stored_offset: Option<i64>,
    /// The first offset handled since the restore (where to read again when nothing is stored).
    pub first_read: Option<i64>,
    pub seen_seq: i64,
    /// Where the duplicate log can be cut.
    pub seen_marks: LogMarks,
    pub last_event: Instant,
    pub late: Vec<LateRow>,
    pub dead: Vec<DeadLetter>,
    /// `received_at` (µs) of events applied since the last flush, for the latency figures.
    pub received: Vec<i64>,
    /// Results to publish again after the next commit (their delivery failed, or they were
    /// restored from the outbox).
    pub unpublished: Vec<Encoded>,
    /// Results handed to the producer, their delivery not looked at yet.
    pub delivering: Deliveries,
    /// Applied something since the last flush.
    pub changed: bool,
}

impl Part {
    fn new(restored: Restored, config: &Config) -> Self {
        let step = (config.specs.max_size_us() + config.lateness_us + config.allowed_us) / 64;
        let step = step.max(1_000_000);
        Part {
            epoch: restored.epoch,
            engine: restored.engine,
            next_offset: restored.next_offset.unwrap_or(-1),
            stored_offset: restored.next_offset,
            first_read: None,
            seen_seq: restored.seen_seq,
            seen_marks: LogMarks::of_entries(step, restored.seen_entries),
            last_event: Instant::now(),
            late: Vec::new(),
            dead: Vec::new(),
            received: Vec::new(),
            unpublished: restored.unpublished,
            delivering: Deliveries::default(),
            changed: false,
        }
    }
}

/// Restores partition `p`. A transient database error is retried with backoff; anything else
/// (another window spec, corrupt state) stops the service. Returns the part and its retries.
pub async fn restore(
    pool: &MySqlPool,
    offsets: &OffsetStore,
    config: &Config,
    health: &Arc<Health>,
    p: i32,
) -> anyhow::Result<(Part, u64)> {
    let (restored, retries) = retry("restoring partition state", Some(health), || {
        store::restore(pool, offsets, p, &config.specs, config.lateness_us)
    })
    .await?;
    let mut restored = restored;
    restored.engine = restored.engine.with_allowed_lateness(config.allowed_us);
    tracing::info!(partition = p, next_offset = ?restored.next_offset, slices = restored.engine.slices_held(), unpublished = restored.unpublished.len(), "partition state restored");
    Ok((Part::new(restored, config), retries))
}
