//! Flushes: every flush interval (or after `MAX_PENDING` events) one transaction writes, for each
//! partition with something new, its window results, late events, dead letters, duplicate-log
//! entry, state, outbox and next offset. The write runs in the background while events go on
//! being applied (one in flight). After it commits, its results are published (the outbox)
//! without waiting for their delivery, so the next write can start at once.
//!
//! A failed write: a transient database error retries the same flush with backoff (an attempt
//! whose COMMIT reply was lost is found committed by the retry: `store::write_flush`). A flush
//! the database refuses for its data is written again partition by partition, so the others go
//! on; a partition refused alone is restored and read again in smaller flushes until the refused
//! messages are found (`probation`). A partition another instance claimed is given up (the
//! runtime rejoins the group).
//!
//! Before a flush, a partition that has been idle (no event for `--idle-timeout`) *and* is read to
//! its end (its next offset at the high watermark of the latest probe) has its watermark moved
//! with the wall clock, so its windows close. A partition that is only behind (a backlog being
//! read) is never advanced: its next messages would all be late.

use crate::metrics as m;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::{
    observe::Health,
    retry::{classify_any, Failure, Retrier},
    window::{WindowBounds, WindowResult},
};
use consumer::{dead_letters, offsets::OffsetStore, probe::Probe, WriteOutcome, WriteTask};
use sqlx::MySqlPool;

use super::Aggregator;
use crate::{
    engine::Emission,
    partitions::Part,
    probation::{Flushing, Probation},
    store::{self, FlushOutcome, PartFlush},
    Config, SERVICE,
};

/// What a background write did.
#[derive(Debug)]
pub struct Written {
    committed: Vec<PartFlush>,
    /// Partitions another instance claimed since they were restored here.
    lost: Vec<i32>,
    /// Partitions refused alone, with the database's error.
    rejected: Vec<(PartFlush, String)>,
    committed_at_us: i64,
    retries: u64,
    /// From the start of the write to its commit (retries included).
    took: Duration,
}

/// What the aggregator remembers of a partition's flush in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    /// The first offset the partition read since its restore.
    first_read: Option<i64>,
    /// What the flush held, for a partition on probation.
    probation: Option<Flushing>,
}

impl Aggregator {
    /// Takes everything pending into a flush; `None` when no partition has anything to write.
    pub(crate) fn start_flush(&mut self, probe: Option<&Probe>) -> Option<WriteTask<Written>> {
        self.next_flush = Instant::now() + self.config.flush_interval;
        self.pending = 0;
        let idle_wm = Utc::now().timestamp_micros() - self.config.lateness_us;
        let mut flushes = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if part.next_offset < 0 {
                continue; // nothing read or stored for this partition yet
            }
            if idle(part, p, &self.config, probe) && part.engine.watermark() < idle_wm {
                part.engine.advance_to(idle_wm);
            }
            if let Some(f) = part_flush(part, p, &self.config) {
                self.received.push((p, std::mem::take(&mut part.received)));
                let probation = self.probation.get_mut(&p).map(Probation::flushing);
                let first_read = part.first_read;
                self.in_flight.insert(
                    p,
                    InFlight {
                        first_read,
                        probation,
                    },
                );
                flushes.push(f);
            }
        }
        if flushes.is_empty() {
            return None;
        }
        let (pool, offsets) = (self.pool.clone(), self.offsets.clone());
        Some(write_parts(pool, offsets, self.health.clone(), flushes))
    }

    /// Records a finished flush: gives up lost partitions, narrows refused ones down, takes
    /// latency samples, hands the results to the producer (the outbox keeps them until their
    /// delivery is confirmed). Returns the stored offsets and what the runtime must do.
    pub(crate) async fn flush_done(&mut self, written: Written) -> anyhow::Result<WriteOutcome> {
        let received = std::mem::take(&mut self.received);
        let in_flight = std::mem::take(&mut self.in_flight);
        self.stats.figures.db_retries += written.retries;
        if written.took > self.config.flush_interval.max(Duration::from_millis(100)) {
            tracing::warn!(took = ?written.took, partitions = written.committed.len(), "slow flush: the write took longer than the flush interval");
        }
        let mut outcome = WriteOutcome::default();
        for p in written.lost {
            self.parts.remove(&p);
            self.probation.remove(&p);
            outcome.lost.push(p);
        }
        for (f, error) in written.rejected {
            let info = in_flight.get(&f.partition).copied();
            let rewind = self.narrow_down(&f, &error, info).await?;
            outcome.rewind.push(rewind);
        }
        let mut offsets = Vec::with_capacity(written.committed.len());
        let emitted: usize = written.committed.iter().map(|f| f.results.len()).sum();
        for f in written.committed {
            dead_letters::count(&f.dead.iter().collect::<Vec<_>>());
            self.stats.figures.windows_emitted += f.results.len() as u64;
            if let Some((_, samples)) = received.iter().find(|(p, _)| *p == f.partition) {
                self.stats.committed(written.committed_at_us, samples);
            }
            offsets.push((f.partition, f.next_offset));
            // Revoked meanwhile: written, and the new owner publishes the outbox.
            let Some(part) = self.parts.get_mut(&f.partition) else {
                continue;
            };
            part.stored_offset = Some(f.next_offset);
            part.seen_seq = f.written_seen_seq();
            if let Some(cut) = f.seen_cut {
                part.seen_marks.deleted(cut);
            }
            if let Some(max) = f.new_seen_max() {
                part.seen_marks.written(f.written_seen_seq(), max);
            }
            // Earlier failures, then this flush's results: all in the outbox just committed.
            // Published without waiting: their deliveries are looked at by the next flush.
            let mut items = std::mem::take(&mut part.unpublished);
            items.extend(f.encoded);
            self.outbox
                .send(items, &mut part.delivering, &mut part.unpublished);
            self.probation_passed(f.partition, f.next_offset);
        }
        self.export_metrics(written.took, emitted);
        outcome.committed = offsets;
        Ok(outcome)
    }

    /// A partition's flush was refused alone: it goes on probation (or its probation narrows),
    /// is restored from MySQL and read again from its stored offset (returned).
    async fn narrow_down(
        &mut self,
        f: &PartFlush,
        error: &str,
        info: Option<InFlight>,
    ) -> anyhow::Result<(i32, i64)> {
        let p = f.partition;
        let first_read = info.and_then(|i| i.first_read);
        match self.probation.get_mut(&p) {
            Some(probation) => {
                let flushing = info.and_then(|i| i.probation);
                let flushing = flushing.unwrap_or_else(|| probation.flushing());
                probation.rejected(p, flushing, error)?;
            }
            None => {
                let base = f.base_offset.or(first_read).unwrap_or(f.next_offset);
                tracing::warn!(partition = p, from = base, to = f.next_offset, %error, "the database refused the partition's flush: reading it again in smaller flushes to find the refused messages (the other partitions go on)");
                self.probation
                    .insert(p, Probation::start(base, f.next_offset));
            }
        }
        let stored = self.restore(p).await?;
        let from = stored.or(first_read).unwrap_or(f.next_offset);
        Ok((p, from))
    }

    /// A flush of partition `p` committed up to `next`: its probation ends past the refused range.
    fn probation_passed(&mut self, p: i32, next: i64) {
        if let Some(probation) = self.probation.get_mut(&p) {
            if probation.committed(next) {
                let refused: Vec<i64> = probation.refused().collect();
                tracing::info!(partition = p, ?refused, "the refused flush is narrowed down: these offsets are dead letters (reason rejected), the rest is written");
                self.probation.remove(&p);
            }
        }
    }

    /// Metrics after a flush: its duration and rows, and the running totals.
    fn export_metrics(&self, took: Duration, emitted: usize) {
        m::WRITE_DURATION.observe(took.as_secs_f64());
        m::ROWS_WRITTEN
            .with_label_values(&["stream_agg"])
            .inc_by(emitted as u64);
        m::WINDOWS_EMITTED.inc_by(emitted as u64);
        let f = &self.stats.figures;
        m::set_total(&m::LATE_EVENTS.with_label_values(&["false"]), f.late);
        m::set_total(&m::LATE_EVENTS.with_label_values(&["true"]), f.partly_late);
        m::set_total(&m::DUPLICATES, f.duplicates);
        let now = Utc::now().timestamp_micros();
        let lag = self
            .parts
            .values()
            .map(|p| p.engine.watermark())
            .filter(|w| *w > i64::MIN)
            .map(|w| (now - w) as f64 / 1e6)
            .reduce(f64::max);
        if let Some(lag) = lag {
            m::WATERMARK_LAG
                .with_label_values(&[self.offsets.topic()])
                .set(lag);
        }
    }
}

/// Whether partition `p` has been idle long enough and is read to its end.
fn idle(part: &Part, p: i32, config: &Config, probe: Option<&Probe>) -> bool {
    part.last_event.elapsed() >= config.idle_timeout
        && probe.is_some_and(|probe| {
            probe.at.elapsed() < config.idle_timeout
                && probe
                    .partitions
                    .get(&p)
                    .is_some_and(|m| part.next_offset >= m.high)
        })
}

/// The flush of one partition, or `None` when it has nothing new.
pub(crate) fn part_flush(part: &mut Part, p: i32, config: &Config) -> Option<PartFlush> {
    part.delivering.reap(&mut part.unpublished);
    let emissions = part.engine.take_emissions(config.mode);
    if emissions.is_empty() && !part.changed && part.unpublished.is_empty() {
        return None;
    }
    part.changed = false;
    let results: Vec<WindowResult> = emissions
        .iter()
        .map(|e| to_result(e, &config.group))
        .collect();
    Some(PartFlush {
        partition: p,
        epoch: part.epoch,
        base_offset: part.stored_offset,
        next_offset: part.next_offset,
        specs: config.specs.list().to_vec(),
        lateness_us: config.lateness_us,
        snapshot: part.engine.snapshot(),
        results,
        late: std::mem::take(&mut part.late),
        dead: std::mem::take(&mut part.dead),
        new_seen: part.engine.take_new_seen(),
        seen_seq: part.seen_seq,
        seen_cut: part.seen_marks.cut(part.engine.seen_horizon()),
        encoded: Vec::new(),
        // Failed and not yet confirmed: the outbox keeps them until a delivery is confirmed.
        unpublished: part
            .unpublished
            .iter()
            .chain(part.delivering.pending())
            .cloned()
            .collect(),
        replayed: Vec::new(),
    })
}

/// Writes a flush: one transaction for all its partitions, transient database errors retried
/// with backoff (offsets are not committed until it succeeds). Partitions another instance
/// claimed are left out (lost); a flush refused for its data is written again partition by
/// partition, and a partition refused alone is reported with the error.
fn write_parts(
    pool: MySqlPool,
    offsets: OffsetStore,
    health: Arc<Health>,
    flushes: Vec<PartFlush>,
) -> WriteTask<Written> {
    Box::pin(async move {
        let started = Instant::now();
        let mut retrier = Retrier::new(Some(health));
        let mut written = Written {
            committed: Vec::new(),
            lost: Vec::new(),
            rejected: Vec::new(),
            committed_at_us: 0,
            retries: 0,
            took: Duration::ZERO,
        };
        // Groups written in one transaction each, the next one last.
        let mut todo = vec![flushes];
        while let Some(mut group) = todo.pop() {
            if group.is_empty() {
                continue;
            }
            let e = match store::write_flush(&pool, &offsets, SERVICE, &mut group).await {
                Ok(FlushOutcome::Committed) => {
                    retrier.succeeded();
                    written.committed.extend(group);
                    continue;
                }
                Ok(FlushOutcome::Fenced(ps)) => {
                    group.retain(|f| !ps.contains(&f.partition));
                    written.lost.extend(ps);
                    todo.push(group);
                    continue;
                }
                Err(e) => e,
            };
            match classify_any(&e) {
                Some(Failure::Transient) => {
                    retrier
                        .wait(
                            "writing the flush (offsets not committed)",
                            &format!("{e:#}"),
                        )
                        .await;
                    todo.push(group);
                }
                Some(Failure::Rejected) => {
                    retrier.failed(Failure::Rejected, "writing the flush", &format!("{e:#}"));
                    if group.len() > 1 {
                        tracing::warn!(error = %e, partitions = group.len(), "the database refused the flush's data: writing its partitions one by one");
                        todo.extend(group.into_iter().map(|f| vec![f]));
                    } else if let Some(f) = group.pop() {
                        written.rejected.push((f, format!("{e:#}")));
                    }
                }
                None => return Err(e),
            }
        }
        written.committed_at_us = Utc::now().timestamp_micros();
        written.retries = retrier.failures;
        written.took = started.elapsed();
        Ok(written)
    })
}

/// The window result (message and row) of an engine emission.
pub fn to_result(e: &Emission, group: &std::sync::Arc<str>) -> WindowResult {
    let dt = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    WindowResult {
        window: WindowBounds {
            start: dt(e.start),
            end: dt(e.end),
        },
        base: e.pair.base,
        quote: e.pair.quote,
        update_count: e.agg.count,
        avg_rate: e.agg.avg(),
        min_rate: e.agg.min,
        max_rate: e.agg.max,
        sum_rate: e.agg.total(),
        first_rate: e.agg.first_rate,
        last_rate: e.agg.last_rate,
        last_event_time: Some(dt(e.agg.last_time)),
        is_final: e.is_final,
        group: group.clone(),
        spec: e.spec,
        revision: e.revision,
    }
}
