//! Flushes: every flush interval (or after `MAX_PENDING` events) one transaction writes, for each
//! partition with something new, its window results, late events, dead letters, duplicate-log
//! entry, state, outbox and next offset. The write runs in the background while events go on
//! being applied (one in flight). After it commits, its results are published (the outbox).
//!
//! Before a flush, a partition that has been idle (no event for `--idle-timeout`) *and* is read to
//! its end (its next offset at the high watermark of the latest probe) has its watermark moved
//! with the wall clock, so its windows close. A partition that is only behind (a backlog being
//! read) is never advanced: its next messages would all be late.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{
    backoff::Backoff,
    consumer::{offsets::OffsetStore, probe::Probe, WriteTask},
    metrics as m,
    window::{WindowBounds, WindowResult},
};
use sqlx::MySqlPool;

use crate::{
    aggregator::Aggregator,
    engine::Emission,
    partitions::Part,
    store::{self, FlushOutcome, PartFlush},
    Config, SERVICE,
};

/// What a background write committed.
#[derive(Debug)]
pub struct Written {
    committed: Vec<PartFlush>,
    fenced: Vec<i32>,
    committed_at_us: i64,
    retries: u64,
    /// From the start of the write to its commit (retries included).
    took: Duration,
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
                flushes.push(f);
            }
        }
        if flushes.is_empty() {
            return None;
        }
        let (pool, offsets) = (self.pool.clone(), self.offsets.clone());
        Some(write_until_committed(pool, offsets, flushes))
    }

    /// Records a committed flush: drops fenced partitions, takes latency samples, publishes the
    /// results (undelivered ones stay in their partition's outbox). Returns the stored offsets.
    pub(crate) async fn flush_done(&mut self, written: Written) -> Vec<(i32, i64)> {
        let received = std::mem::take(&mut self.received);
        self.stats.figures.db_retries += written.retries;
        if written.took > self.config.flush_interval.max(Duration::from_millis(100)) {
            tracing::warn!(took = ?written.took, partitions = written.committed.len(), "slow flush: the write took longer than the flush interval");
        }
        if !written.fenced.is_empty() {
            tracing::warn!(partitions = ?written.fenced, "another instance claimed these partitions: dropping their state (nothing of it was written)");
            for p in &written.fenced {
                self.parts.remove(p);
            }
        }
        let mut offsets = Vec::with_capacity(written.committed.len());
        let emitted: usize = written.committed.iter().map(|f| f.results.len()).sum();
        let mut to_publish: Vec<(i32, WindowResult)> = Vec::new();
        for f in written.committed {
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
            // Earlier failures, then this flush's results: all in the outbox just committed.
            let p = f.partition;
            to_publish.extend(
                std::mem::take(&mut part.unpublished)
                    .into_iter()
                    .map(|r| (p, r)),
            );
            to_publish.extend(f.results.into_iter().map(|r| (p, r)));
        }
        self.publish(to_publish).await;
        self.export_metrics(written.took, emitted);
        offsets
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
        m::set_total(&m::DEAD_LETTERS, f.dead_letters);
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

    /// Publishes results of their partitions; undelivered ones go back to their outbox.
    pub(crate) async fn publish(&mut self, results: Vec<(i32, WindowResult)>) {
        if results.is_empty() {
            return;
        }
        let partition_of: Vec<(i32, WindowResult)> = results.clone();
        let failed = self
            .outbox
            .publish(results.into_iter().map(|(_, r)| r).collect())
            .await;
        for r in failed {
            let p = partition_of.iter().find(|(_, x)| *x == r).map(|(p, _)| *p);
            if let Some(part) = p.and_then(|p| self.parts.get_mut(&p)) {
                part.unpublished.push(r);
            }
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
fn part_flush(part: &mut Part, p: i32, config: &Config) -> Option<PartFlush> {
    let emissions = part.engine.take_emissions(config.mode);
    if emissions.is_empty() && !part.changed && part.unpublished.is_empty() {
        return None;
    }
    part.changed = false;
    let results: Vec<WindowResult> = emissions.iter().map(to_result).collect();
    let mut outbox = part.unpublished.clone();
    outbox.extend(results.iter().cloned());
    Some(PartFlush {
        partition: p,
        epoch: part.epoch,
        base_offset: part.stored_offset,
        next_offset: part.next_offset,
        spec: config.spec,
        lateness_us: config.lateness_us,
        snapshot: part.engine.snapshot(),
        results,
        late: std::mem::take(&mut part.late),
        dead: std::mem::take(&mut part.dead),
        new_seen: part.engine.take_new_seen(),
        seen_seq: part.seen_seq,
        seen_horizon: part.engine.seen_horizon(),
        unpublished: outbox,
    })
}

/// Writes a flush in one transaction, retrying database errors with backoff (offsets are not
/// committed until it succeeds); partitions found fenced are left out and reported.
fn write_until_committed(
    pool: MySqlPool,
    offsets: OffsetStore,
    mut flushes: Vec<PartFlush>,
) -> WriteTask<Written> {
    Box::pin(async move {
        let started = Instant::now();
        let mut backoff = Backoff::database();
        let mut fenced = Vec::new();
        let mut retries = 0;
        while !flushes.is_empty() {
            match store::write_flush(&pool, &offsets, SERVICE, &flushes).await {
                Ok(FlushOutcome::Committed) => break,
                Ok(FlushOutcome::Fenced(ps)) => {
                    flushes.retain(|f| !ps.contains(&f.partition));
                    fenced.extend(ps);
                }
                Err(e) if e.downcast_ref::<sqlx::Error>().is_some() => {
                    retries += 1;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "writing the flush failed; retrying (offsets not committed)");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Written {
            committed: flushes,
            fenced,
            committed_at_us: Utc::now().timestamp_micros(),
            retries,
            took: started.elapsed(),
        })
    })
}

/// The window result (message and row) of an engine emission.
pub fn to_result(e: &Emission) -> WindowResult {
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
        sum_rate: e.agg.sum,
        first_rate: e.agg.first_rate,
        last_rate: e.agg.last_rate,
        last_event_time: Some(dt(e.agg.last_time)),
        is_final: e.is_final,
    }
}
