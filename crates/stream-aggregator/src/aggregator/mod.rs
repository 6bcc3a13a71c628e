//! The aggregator as a processor of the consumer runtime (`common::consumer`): the runtime
//! delivers each new message of a held partition; this applies it to the partition's window
//! engine, and writes and publishes on the runtime's schedule. Ownership and restore are in
//! `partitions`, flushes and publishing in `flush` and `outbox`, a refused flush narrowed down in
//! `probation`, figures in `stats`.
//!
//! The boundary: a message becomes an update only if it parses and its values are in the accepted
//! range (`common::model`: rate, time, and time against the message's publication), so every
//! window row built from updates can be stored and its sums stay finite. Anything else is a dead
//! letter with its reason.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use common::{
    figures::{ConsumerFigures, FiguresRecorder},
    observe::Health,
    RateEvent,
};
use consumer::{
    dead_letters::{DeadLetter, Reason, Refusal},
    offsets::OffsetStore,
    probe::Probe,
    Msg, Processor, WriteOutcome, WriteTask,
};
use rustc_hash::FxBuildHasher;
use sqlx::MySqlPool;

mod flush;

use crate::{
    engine::Applied,
    figures::{self, RunningFigures},
    outbox::Outbox,
    partitions::{self, Part},
    probation::Probation,
    store::LateRow,
    Config,
};

/// Events applied since the last flush that trigger a flush before the interval (bounds memory).
const MAX_PENDING: usize = 100_000;

/// The stream aggregator's state: an engine per held partition.
#[derive(Debug)]
pub struct Aggregator {
    config: Config,
    pool: MySqlPool,
    offsets: OffsetStore,
    outbox: Outbox,
    health: Arc<Health>,
    parts: HashMap<i32, Part, FxBuildHasher>,
    /// Partitions whose flush the database refused, being narrowed down.
    probation: BTreeMap<i32, Probation>,
    stats: RunningFigures,
    /// Events handled since the last flush.
    pending: usize,
    next_flush: Instant,
    /// Latency samples (`received_at`, µs) of the flush in flight, per partition.
    received: Vec<(i32, Vec<i64>)>,
    /// What the flush in flight held, per partition.
    in_flight: BTreeMap<i32, flush::InFlight>,
}

impl Aggregator {
    pub fn new(
        config: Config,
        pool: MySqlPool,
        offsets: OffsetStore,
        outbox: Outbox,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        Ok(Aggregator {
            next_flush: Instant::now() + config.flush_interval,
            config,
            pool,
            offsets,
            outbox,
            health,
            parts: HashMap::default(),
            probation: BTreeMap::new(),
            stats: RunningFigures::new()?,
            pending: 0,
            received: Vec::new(),
            in_flight: BTreeMap::new(),
        })
    }

    /// The figures of this run.
    pub fn figures(&self) -> common::figures::AggregatorFigures {
        let open = self.parts.values().map(|p| p.engine.slices_held()).sum();
        let watermarks = self.parts.values().map(|p| p.engine.watermark());
        self.stats.snapshot(open, watermarks)
    }

    /// At a stop: waits up to `limit` for every message handed to the producer (those of
    /// partitions revoked at the stop included, which the process would drop on exit), then says
    /// how many results were not confirmed: they stay in their partition's outbox and are
    /// published again at the next start.
    pub fn settle(&mut self, limit: std::time::Duration) {
        let outbox = &self.outbox;
        let flushed = tokio::task::block_in_place(|| outbox.flush(limit));
        let mut unconfirmed = 0;
        for part in self.parts.values_mut() {
            part.delivering.reap(&mut part.unpublished);
            unconfirmed += part.unpublished.len() + part.delivering.pending().count();
        }
        if !flushed || unconfirmed > 0 {
            tracing::warn!(
                results = unconfirmed, limit = ?limit,
                "window results not confirmed published at the stop: they stay in the outbox and are published again at the next start"
            );
        }
    }

    /// Restores partition `p` from MySQL (claiming it) and publishes its outbox; returns the
    /// next offset it stored.
    async fn restore(&mut self, p: i32) -> anyhow::Result<Option<i64>> {
        self.parts.remove(&p);
        let (mut part, retries) =
            partitions::restore(&self.pool, &self.offsets, &self.config, &self.health, p).await?;
        self.stats.figures.db_retries += retries;
        let next = part.stored_offset;
        // Results committed before a crash but maybe not published: publish them again.
        let outbox = std::mem::take(&mut part.unpublished);
        self.outbox
            .send(outbox, &mut part.delivering, &mut part.unpublished);
        self.parts.insert(p, part);
        Ok(next)
    }

    /// A message that cannot be applied: kept as a dead letter of its partition.
    fn dead(&mut self, msg: &Msg<'_>, refusal: Refusal) {
        let Some(part) = self.parts.get_mut(&msg.partition) else {
            return;
        };
        let f = &mut self.stats.figures;
        f.dead_letters += 1;
        if refusal.reason == Reason::Rejected {
            f.rejected += 1;
        }
        part.dead
            .push(DeadLetter::found(msg.source(self.offsets.topic()), refusal));
    }
}

impl Processor for Aggregator {
    type Written = flush::Written;

    /// Restores each partition (and re-publishes its outbox): loaded at once, not on the first
    /// message, so a partition that gets no more messages still sees its windows close.
    async fn assigned(&mut self, offsets: &mut BTreeMap<i32, Option<i64>>) -> anyhow::Result<()> {
        for (&p, next) in offsets.iter_mut() {
            self.probation.remove(&p);
            *next = self.restore(p).await?;
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.probation.remove(p);
            // Its results in flight are delivered anyway (a stop flushes the producer); the new
            // owner publishes its outbox again.
            if self.parts.remove(p).is_some_and(|part| part.changed) {
                tracing::info!(
                    partition = p,
                    "revoked with unwritten changes: abandoned, the new owner reads them again"
                );
            }
        }
    }

    fn handle(&mut self, msg: Msg<'_>) {
        let Some(part) = self.parts.get_mut(&msg.partition) else {
            return; // the runtime hands over messages of held partitions only
        };
        part.next_offset = msg.offset + 1;
        part.first_read.get_or_insert(msg.offset);
        part.last_event = msg.received;
        part.changed = true;
        self.pending += 1;
        self.stats.event(msg.received);
        if let Some(probation) = self.probation.get_mut(&msg.partition) {
            if let Some(error) = probation.on_message(msg.offset) {
                let refusal = Refusal::new(Reason::Rejected, error.to_owned());
                return self.dead(&msg, refusal);
            }
        }
        let update = match RateEvent::from_json(msg.payload)
            .and_then(|u| u.check_published(msg.published_ms).map(|()| u))
        {
            Ok(u) => u,
            Err(e) => return self.dead(&msg, e.into()),
        };
        let (f, part) = (&mut self.stats.figures, self.parts.get_mut(&msg.partition));
        let Some(part) = part else { return };
        let received = update.received_us.unwrap_or(update.time_us);
        match part.engine.apply(update.pair, update.time_us, update.rate) {
            Applied::Accepted => {
                f.applied += 1;
                part.received.push(received);
            }
            Applied::Late {
                watermark,
                missed,
                applied,
            } => {
                if applied {
                    f.applied += 1;
                    f.partly_late += 1;
                    part.received.push(received);
                } else {
                    f.late += 1;
                }
                part.late.extend(
                    missed
                        .iter()
                        .map(|m| LateRow::of(msg.offset, &update, watermark, m)),
                );
            }
            Applied::Duplicate => f.duplicates += 1,
        }
    }

    fn write_deadline(&self) -> Option<Instant> {
        Some(self.next_flush)
    }

    fn write_due(&self) -> bool {
        self.pending >= MAX_PENDING || self.probation.values().any(Probation::due)
    }

    fn start_write(
        &mut self,
        probe: Option<&Probe>,
    ) -> anyhow::Result<Option<WriteTask<flush::Written>>> {
        Ok(self.start_flush(probe))
    }

    async fn write_done(&mut self, written: flush::Written) -> anyhow::Result<WriteOutcome> {
        self.flush_done(written).await
    }

    fn report(&self, recorder: &FiguresRecorder, runtime: &ConsumerFigures) {
        figures::report(recorder, runtime, self.figures());
    }
}

pub(crate) use flush::part_flush;
pub use flush::to_result;
