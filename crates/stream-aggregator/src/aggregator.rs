//! The aggregator as a processor of the consumer runtime (`common::consumer`): the runtime
//! delivers each new message of a held partition; this applies it to the partition's window
//! engine, and writes and publishes on the runtime's schedule. Ownership and restore are in
//! `partitions`, flushes and publishing in `flush` and `outbox`, figures in `stats`.

use std::{collections::BTreeMap, collections::HashMap, time::Instant};

use common::{
    consumer::{
        dead_letters::DeadLetter, offsets::OffsetStore, probe::Probe, Msg, Processor, WriteTask,
    },
    stats::{ConsumerFigures, StatsRecorder},
    RateEvent,
};
use rustc_hash::FxBuildHasher;
use sqlx::MySqlPool;

use crate::{
    engine::Applied,
    flush::Written,
    outbox::Outbox,
    partitions::{self, Part},
    stats::{self, Stats},
    store::LateRow,
    Config,
};

/// Events applied since the last flush that trigger a flush before the interval (bounds memory).
const MAX_PENDING: usize = 100_000;

/// The stream aggregator's state: an engine per held partition.
#[derive(Debug)]
pub struct Aggregator {
    pub(crate) config: Config,
    pub(crate) pool: MySqlPool,
    pub(crate) offsets: OffsetStore,
    pub(crate) outbox: Outbox,
    pub(crate) parts: HashMap<i32, Part, FxBuildHasher>,
    pub(crate) stats: Stats,
    /// Events handled since the last flush.
    pub(crate) pending: usize,
    pub(crate) next_flush: Instant,
    /// Latency samples (`received_at`, µs) of the flush in flight, per partition.
    pub(crate) received: Vec<(i32, Vec<i64>)>,
}

impl Aggregator {
    pub fn new(
        config: Config,
        pool: MySqlPool,
        offsets: OffsetStore,
        outbox: Outbox,
    ) -> anyhow::Result<Self> {
        Ok(Aggregator {
            next_flush: Instant::now() + config.flush_interval,
            config,
            pool,
            offsets,
            outbox,
            parts: HashMap::default(),
            stats: Stats::new()?,
            pending: 0,
            received: Vec::new(),
        })
    }

    /// The figures of this run.
    pub fn figures(&self) -> common::stats::AggregatorFigures {
        let open = self.parts.values().map(|p| p.engine.open_windows()).sum();
        let watermarks = self.parts.values().map(|p| p.engine.watermark());
        self.stats.snapshot(open, watermarks)
    }
}

impl Processor for Aggregator {
    type Written = Written;

    /// Restores each partition (and re-publishes its outbox): loaded at once, not on the first
    /// message, so a partition that gets no more messages still sees its windows close.
    async fn assigned(&mut self, offsets: &mut BTreeMap<i32, Option<i64>>) -> anyhow::Result<()> {
        for (&p, next) in offsets.iter_mut() {
            self.parts.remove(&p);
            let (mut part, retries) =
                partitions::restore(&self.pool, &self.offsets, &self.config, p).await?;
            self.stats.figures.db_retries += retries;
            *next = part.stored_offset;
            // Results committed before a crash but maybe not published: publish them again.
            let outbox: Vec<_> = std::mem::take(&mut part.unpublished)
                .into_iter()
                .map(|r| (p, r))
                .collect();
            self.parts.insert(p, part);
            self.publish(outbox).await;
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
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
        part.last_event = msg.received;
        part.changed = true;
        self.pending += 1;
        self.stats.event(msg.received);
        let f = &mut self.stats.figures;
        let update = match RateEvent::from_json(msg.payload) {
            Ok(u) => u,
            Err(e) => {
                f.dead_letters += 1;
                let topic = self.offsets.topic();
                let (p, o) = (msg.partition, msg.offset);
                part.dead.push(DeadLetter::found(
                    topic,
                    p,
                    o,
                    msg.key,
                    msg.payload,
                    e.to_string(),
                ));
                return;
            }
        };
        let late_row = |watermark_us, missed, applied| LateRow {
            offset: msg.offset,
            pair: update.pair,
            rate: update.rate,
            time_us: update.time_us,
            watermark_us,
            missed,
            applied,
        };
        match part.engine.apply(update.pair, update.time_us, update.rate) {
            Applied::Accepted => {
                f.applied += 1;
                part.received
                    .push(update.received_us.unwrap_or(update.time_us));
            }
            Applied::PartlyLate { watermark, closed } => {
                f.applied += 1;
                f.partly_late += 1;
                part.received
                    .push(update.received_us.unwrap_or(update.time_us));
                part.late.push(late_row(watermark, closed, true));
            }
            Applied::Late { watermark } => {
                f.late += 1;
                let missed = self.config.spec.starts(update.time_us).count() as u32;
                part.late.push(late_row(watermark, missed, false));
            }
            Applied::Duplicate => f.duplicates += 1,
        }
    }

    fn write_deadline(&self) -> Option<Instant> {
        Some(self.next_flush)
    }

    fn write_due(&self) -> bool {
        self.pending >= MAX_PENDING
    }

    fn start_write(&mut self, probe: Option<&Probe>) -> anyhow::Result<Option<WriteTask<Written>>> {
        Ok(self.start_flush(probe))
    }

    async fn write_done(&mut self, written: Written) -> anyhow::Result<Vec<(i32, i64)>> {
        Ok(self.flush_done(written).await)
    }

    async fn report(&self, recorder: &StatsRecorder, runtime: &ConsumerFigures) {
        stats::report(recorder, runtime, self.figures()).await;
    }
}
