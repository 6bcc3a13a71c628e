//! stream-aggregator: event-time windowed aggregation of `raw_coin_data` into table `stream_agg`
//! and topic `aggregated_data`, exactly once in MySQL.
//!
//! - [`engine`]: the pure window engine (semantics in its docs and the README).
//! - [`store`]: restoring a partition's state and writing a flush in one transaction.
//! - This module: the loop. Each Kafka partition has its own engine (a pair lives on one
//!   partition), restored from MySQL when the partition is assigned, which also claims it (an
//!   ownership epoch that fences every earlier owner's writes, including one still in flight);
//!   messages below MySQL's stored offset are skipped, Kafka's group offset being only a hint. Every
//!   `--flush-interval` one transaction holds the `stream_agg` upserts, late events, dead
//!   letters, the duplicate log, each touched partition's open-window state and next offset, and
//!   the emissions as an outbox. After the commit the emissions are published to the output topic
//!   (at least once: the outbox is re-published after a crash).

pub mod engine;
pub mod seen_codec;
mod seen_times;
pub mod settings;
pub mod store;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use common::backoff::Backoff;
use common::{
    ingest::{RebalanceEvent, RebalanceLog},
    stats::{Counters, StatsRecorder},
    window::{WindowBounds, WindowResult},
    RateEvent,
};
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use rustc_hash::FxBuildHasher;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{
    engine::{Applied, Emission, Mode, PartitionEngine, WindowSpec},
    store::{DeadRow, FlushOutcome, LateRow, PartFlush, StoredState},
};

const SERVICE: &str = "stream-aggregator";
/// Messages taken per wake-up before checking timers and signals again.
const DRAIN: usize = 4096;
/// Events applied since the last flush that trigger a flush before the interval (bounds memory).
const MAX_PENDING: usize = 100_000;

/// One partition's engine and what it has not written yet.
struct Part {
    /// Ownership epoch claimed at restore; flushes are refused once another instance claims.
    epoch: i64,
    engine: PartitionEngine,
    /// Next offset to apply.
    next_offset: i64,
    /// The next offset MySQL holds (fencing); `None` before the first write.
    stored_offset: Option<i64>,
    seen_seq: i64,
    last_event: Instant,
    late: Vec<LateRow>,
    dead: Vec<DeadRow>,
    /// `received_at` (µs) of events applied since the last flush, for the latency figures.
    received: Vec<i64>,
    /// Results not yet confirmed published.
    unpublished: Vec<WindowResult>,
    changed: bool,
    /// Whether a gap between MySQL's offset and Kafka's was reported.
    warned_gap: bool,
    /// The last check whether this partition is read to its end (for the idle advance).
    end_check: Option<EndCheck>,
}

/// Whether a partition was read to its end (our next offset at the broker's high watermark).
#[derive(Debug, Clone, Copy)]
struct EndCheck {
    at: Instant,
    next_offset: i64,
    at_end: bool,
}

/// Counters of a run.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub events: u64,
    pub applied: u64,
    pub late: u64,
    pub partly_late: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub already_applied: u64,
    /// Messages of partitions this instance does not hold (left to their owner).
    pub not_owned: u64,
    pub windows_emitted: u64,
    pub flushes: u64,
    pub db_retries: u64,
}

struct Aggregator<'a> {
    settings: &'a Settings,
    spec: WindowSpec,
    mode: Mode,
    pool: &'a MySqlPool,
    consumer: &'a StreamConsumer<RebalanceLog>,
    producer: &'a FutureProducer,
    parts: HashMap<i32, Part, FxBuildHasher>,
    totals: Totals,
    latency_us: Histogram<u64>,
    assigned_once: bool,
    first_event: Option<Instant>,
    /// When the latest event was applied (with `first_event`: the processing time).
    last_event: Option<Instant>,
    /// Events handled since the last flush.
    pending: usize,
    /// Partitions assigned whose state is still to be loaded.
    to_restore: Vec<i32>,
    /// Partitions held now.
    held: usize,
    /// The flush being written, if any.
    in_flight: Option<InFlight>,
}

/// Runs the aggregator until it is asked to stop (or `--exit-idle`).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let spec = settings.spec()?;
    let pool = common::prepare(
        &settings.mysql,
        Some((
            &settings.kafka,
            &[settings.topic.as_str(), settings.output_topic.as_str()],
        )),
    )
    .await?;
    sqlx::query(
        "INSERT INTO stream_agg_spec (consumer_group, window_us, slide_us, watermark_us, mode, updated_at) \
         VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE window_us = VALUES(window_us), \
         slide_us = VALUES(slide_us), watermark_us = VALUES(watermark_us), mode = VALUES(mode), updated_at = VALUES(updated_at)",
    )
    .bind(&settings.group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(settings.lateness_us())
    .bind(format!("{:?}", settings.mode).to_lowercase())
    .execute(&pool)
    .await?;
    let mut config =
        common::kafka::consumer_config(&settings.kafka.bootstrap_servers, &settings.group);
    // Latency: a fetch that finds nothing new returns within 10 ms (brokers that hold an empty
    // fetch for the whole wait, like librdkafka's mock cluster, otherwise add up to 500 ms).
    config.set("fetch.wait.max.ms", "10");
    // Memory: librdkafka keeps a ~200-byte operation per prefetched message besides the message
    // itself, and up to 100,000 messages per partition by default. A smaller prefetch (re-filled
    // every 5 ms) keeps the aggregator under 50 MB at full speed (docs/benchmarks.md).
    config.set("queued.max.messages.kbytes", "2048");
    config.set("queued.min.messages", "20000");
    config.set("fetch.queue.backoff.ms", "5");
    settings.kafka.consumer_properties.apply(&mut config);
    settings.consumer.apply(&mut config);
    let consumer: StreamConsumer<RebalanceLog> =
        config.create_with_context(RebalanceLog::default())?;
    consumer.subscribe(&[&settings.topic])?;
    let producer: FutureProducer = settings.kafka.producer_config().create()?;
    tracing::info!(
        topic = %settings.topic, output = %settings.output_topic, group = %settings.group,
        window = ?settings.window, slide = ?settings.slide, watermark = ?settings.watermark,
        mode = ?settings.mode, flush_interval = ?settings.flush_interval,
        "aggregating"
    );
    let mut agg = Aggregator {
        settings: &settings,
        spec,
        mode: settings.engine_mode(),
        pool: &pool,
        consumer: &consumer,
        producer: &producer,
        parts: HashMap::default(),
        totals: Totals::default(),
        latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        assigned_once: false,
        first_event: None,
        last_event: None,
        pending: 0,
        to_restore: Vec::new(),
        held: 0,
        in_flight: None,
    };
    let shutdown = common::shutdown::on_signal();
    let result = agg.run(shutdown).await;
    tracing::info!(totals = ?agg.totals, "stream-aggregator stopped");
    pool.close().await;
    result
}

impl Aggregator<'_> {
    async fn run(&mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let recorder = StatsRecorder::new(self.pool.clone(), SERVICE);
        let mut flush_tick = tokio::time::interval(self.settings.flush_interval);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stats_tick = tokio::time::interval(self.settings.consumer.stats_interval);
        stats_tick.tick().await;
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut last_activity = Instant::now();
        loop {
            let idle_due = self.settings.consumer.exit_idle.map_or(far, |d| {
                (last_activity + d).saturating_duration_since(Instant::now())
            });
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    tracing::info!("stopping: writing results, state and offsets");
                    self.apply_rebalances();
                    self.flush(true).await?;
                    break;
                }
                msg = self.consumer.recv() => {
                    if self.apply_rebalances() {
                        last_activity = Instant::now();
                    }
                    self.restore_assigned().await?;
                    match msg {
                        Ok(m) => {
                            let now = Instant::now();
                            last_activity = now;
                            let (p, o) = (m.partition(), m.offset());
                            self.handle(now, p, o, m.key(), m.payload().unwrap_or_default());
                            drop(m);
                            // Take what is already fetched without going back through the select.
                            let consumer = self.consumer;
                            let mut stream = consumer.stream();
                            for _ in 0..DRAIN {
                                match stream.next().now_or_never() {
                                    Some(Some(Ok(m))) => {
                                        self.handle(now, m.partition(), m.offset(), m.key(), m.payload().unwrap_or_default());
                                    }
                                    _ => break,
                                }
                            }
                            if self.apply_rebalances() {
                                last_activity = Instant::now();
                            }
                            if self.pending >= MAX_PENDING {
                                self.flush(false).await?;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                _ = flush_tick.tick() => {
                    if self.apply_rebalances() {
                        last_activity = Instant::now();
                    }
                    self.restore_assigned().await?;
                    self.flush(false).await?;
                }
                _ = stats_tick.tick() => self.report(&recorder).await,
                _ = tokio::time::sleep(idle_due), if self.settings.consumer.exit_idle.is_some() => {
                    let idle = last_activity.elapsed();
                    let waited_empty = self.settings.consumer.exit_idle.is_some_and(|d| idle >= d * 3);
                    if self.apply_rebalances() || !self.assigned_once || (self.held == 0 && !waited_empty) {
                        // An empty assignment may only mean a dead instance still holds the
                        // partitions: wait for them a while longer before calling it caught up.
                        if self.held > 0 || !self.assigned_once {
                            last_activity = Instant::now();
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    self.restore_assigned().await?;
                    tracing::info!(idle = ?self.settings.consumer.exit_idle, "caught up and idle: writing and exiting (open windows stay stored)");
                    self.flush(true).await?;
                    break;
                }
            }
        }
        self.report(&recorder).await;
        Ok(())
    }

    /// Drops the engines of revoked partitions (their state as of the last flush is in MySQL;
    /// the new owner continues from there). Returns whether any rebalance happened.
    fn apply_rebalances(&mut self) -> bool {
        let events = self.consumer.context().drain();
        let any = !events.is_empty();
        for e in events {
            match e {
                RebalanceEvent::Assigned(ps) => {
                    self.assigned_once = true;
                    self.held = ps.len();
                    for p in &ps {
                        self.parts.remove(p);
                    }
                    // Loaded at once, not on the first message: a partition that gets no more
                    // messages must still see its watermark follow the clock and its windows close.
                    self.to_restore.extend(ps);
                }
                RebalanceEvent::Revoked(ps) => {
                    self.held = 0;
                    self.to_restore.retain(|p| !ps.contains(p));
                    for p in ps {
                        if self.parts.remove(&p).is_some_and(|part| part.changed) {
                            tracing::info!(partition = p, "revoked with unwritten changes: abandoned, the new owner re-reads them");
                        }
                    }
                }
            }
        }
        any
    }

    /// Loads the partitions assigned since the last call.
    async fn restore_assigned(&mut self) -> anyhow::Result<()> {
        while let Some(p) = self.to_restore.pop() {
            if !self.parts.contains_key(&p) {
                self.restore(p).await?;
            }
        }
        Ok(())
    }

    /// Restores a partition's engine from MySQL and re-publishes its outbox. A database error is
    /// retried with backoff, like a flush; anything else (a different window spec, corrupt state)
    /// stops the service.
    async fn restore(&mut self, p: i32) -> anyhow::Result<()> {
        // A write in flight may hold this partition's newest state (revoked and assigned back).
        self.finish_write(false).await?;
        let mut backoff = Backoff::database();
        let restored = loop {
            let r = store::restore(
                self.pool,
                &self.settings.group,
                &self.settings.topic,
                p,
                self.spec,
                self.settings.lateness_us(),
            )
            .await;
            match r {
                Err(e) if e.downcast_ref::<sqlx::Error>().is_some() => {
                    self.totals.db_retries += 1;
                    let delay = backoff.next_delay();
                    tracing::warn!(partition = p, error = %e, retry_in = ?delay, "restoring partition state failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => break other?,
            }
        };
        let unpublished: Vec<WindowResult> = restored
            .unpublished
            .iter()
            .filter_map(|j| WindowResult::from_json(j.as_bytes()).ok())
            .collect();
        tracing::info!(partition = p, next_offset = ?restored.next_offset, open_windows = restored.engine.open_windows(), "partition state restored");
        let mut part = Part {
            epoch: restored.epoch,
            engine: restored.engine,
            // -1: not known yet, taken from the first message.
            next_offset: restored.next_offset.unwrap_or(-1),
            stored_offset: restored.next_offset,
            seen_seq: restored.seen_seq,
            last_event: Instant::now(),
            late: Vec::new(),
            dead: Vec::new(),
            received: Vec::new(),
            unpublished: Vec::new(),
            changed: false,
            warned_gap: false,
            end_check: None,
        };
        // Emissions committed before a crash but maybe not published: publish them again.
        if !unpublished.is_empty() {
            part.unpublished = self.publish(&unpublished).await;
        }
        self.parts.insert(p, part);
        Ok(())
    }

    /// Applies one message; `now` is the time of the current drain (one clock read per drain).
    fn handle(&mut self, now: Instant, p: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        let Some(part) = self.parts.get_mut(&p) else {
            // Not ours (any more): revoked, or claimed by another instance. Its owner reads it.
            self.totals.not_owned += 1;
            return;
        };
        if part.next_offset < 0 {
            part.next_offset = offset;
        }
        if offset < part.next_offset {
            // Applied before (Kafka's hint was behind MySQL): skipped. Read through rather than
            // sought past: a seek right after an assignment has stopped fetching on the test broker.
            self.totals.already_applied += 1;
            return;
        }
        if offset > part.next_offset && !part.warned_gap {
            part.warned_gap = true;
            tracing::error!(partition = p, kafka = offset, mysql = part.next_offset, "the group's Kafka offset is ahead of MySQL's: messages in between were not aggregated by this group (was the offset reset by hand?)");
        }
        part.next_offset = offset + 1;
        part.last_event = now;
        part.changed = true;
        self.totals.events += 1;
        self.pending += 1;
        self.first_event.get_or_insert(now);
        self.last_event = Some(now);
        let update = match RateEvent::from_json(payload) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(topic = %self.settings.topic, partition = p, offset, error = %e, "malformed message: kept in dead_letters");
                self.totals.dead_letters += 1;
                part.dead.push(DeadRow {
                    offset,
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    error: e.to_string(),
                });
                return;
            }
        };
        let time = update.time_us;
        let late_row = |watermark_us, missed, applied| LateRow {
            offset,
            pair: update.pair,
            rate: update.rate,
            time_us: time,
            watermark_us,
            missed,
            applied,
        };
        match part.engine.apply(update.pair, time, update.rate) {
            Applied::Accepted => {
                self.totals.applied += 1;
                part.received.push(update.received_us.unwrap_or(time));
            }
            Applied::PartlyLate { watermark, closed } => {
                self.totals.applied += 1;
                self.totals.partly_late += 1;
                part.received.push(update.received_us.unwrap_or(time));
                part.late.push(late_row(watermark, closed, true));
            }
            Applied::Late { watermark } => {
                self.totals.late += 1;
                let missed = self.spec.starts(time).count() as u32;
                part.late.push(late_row(watermark, missed, false));
            }
            Applied::Duplicate => self.totals.duplicates += 1,
        }
    }

    /// Starts writing everything pending in one transaction, in the background: events go on
    /// being applied meanwhile (one write in flight; the previous one is finished first). With
    /// `stopping`, waits until it is written and published.
    async fn flush(&mut self, stopping: bool) -> anyhow::Result<()> {
        self.finish_write(false).await?;
        self.pending = 0;
        let now = Utc::now();
        let idle_wm = now.timestamp_micros() - self.settings.lateness_us();
        let mut flushes = Vec::new();
        let mut received = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if part.next_offset < 0 {
                // Nothing read or stored for this partition yet.
                continue;
            }
            // Idle: no message for a while *and* nothing more to read. A partition that is only
            // behind (a backlog being read, a slow flush) must not have its windows closed by the
            // wall clock: its next messages would all be late.
            if part.last_event.elapsed() >= self.settings.idle_timeout
                && part.engine.watermark() < idle_wm
                && read_to_end(
                    self.consumer,
                    &self.settings.topic,
                    p,
                    part,
                    self.settings.idle_timeout,
                )
            {
                part.engine.advance_to(idle_wm);
            }
            let emissions = part.engine.take_emissions(self.mode);
            let new_seen = part.engine.take_new_seen();
            if emissions.is_empty() && !part.changed && part.unpublished.is_empty() {
                continue;
            }
            let seen = (!new_seen.is_empty()).then(|| {
                let (bytes, max) = seen_codec::encode(&new_seen);
                (part.seen_seq + 1, max, bytes)
            });
            let results: Vec<WindowResult> = emissions.iter().map(to_result).collect();
            let mut unpublished = part.unpublished.clone();
            unpublished.extend(results.iter().cloned());
            let unpublished_json: Vec<String> =
                unpublished.iter().map(WindowResult::to_json).collect();
            let state = StoredState {
                spec: self.spec,
                lateness_us: self.settings.lateness_us(),
                snapshot: part.engine.snapshot(),
            };
            part.changed = false;
            received.push((p, std::mem::take(&mut part.received)));
            flushes.push(PartFlush {
                partition: p,
                epoch: part.epoch,
                base_offset: part.stored_offset,
                next_offset: part.next_offset,
                state: serde_json::to_vec(&state)?,
                results,
                emissions,
                late: std::mem::take(&mut part.late),
                dead: std::mem::take(&mut part.dead),
                seen_seq: seen.as_ref().map_or(part.seen_seq, |s| s.0),
                seen,
                seen_horizon: part.engine.seen_horizon(),
                unpublished: serde_json::to_vec(&unpublished_json)?,
            });
        }
        if !flushes.is_empty() {
            let pool = self.pool.clone();
            let (group, topic) = (self.settings.group.clone(), self.settings.topic.clone());
            self.in_flight = Some(InFlight {
                task: tokio::spawn(write_until_committed(pool, group, topic, flushes)),
                received,
                started: Instant::now(),
            });
        }
        if stopping {
            self.finish_write(true).await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, if any, then records what it committed: offsets for
    /// fencing, latency samples, the Kafka commit (a hint; synchronous with `sync`) and the
    /// publication of its results.
    async fn finish_write(&mut self, sync: bool) -> anyhow::Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let written = in_flight.task.await??;
        self.totals.db_retries += written.retries;
        if !written.fenced.is_empty() {
            tracing::warn!(partitions = ?written.fenced, "another instance claimed these partitions: dropping their state (nothing of it was written)");
            for p in &written.fenced {
                self.parts.remove(p);
            }
        }
        if written.committed.is_empty() {
            return Ok(());
        }
        self.totals.flushes += 1;
        for (p, samples) in in_flight.received {
            if written.committed.iter().any(|f| f.partition == p) {
                for r in samples {
                    let _ = self
                        .latency_us
                        .record((written.committed_at_us - r).max(1) as u64);
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        let mut to_publish: Vec<(i32, WindowResult)> = Vec::new();
        for f in written.committed {
            self.totals.windows_emitted += f.emissions.len() as u64;
            let Some(part) = self.parts.get_mut(&f.partition) else {
                // Revoked meanwhile: written, and the new owner publishes its outbox.
                continue;
            };
            part.stored_offset = Some(f.next_offset);
            part.seen_seq = f.seen_seq;
            let p = f.partition;
            to_publish.extend(
                std::mem::take(&mut part.unpublished)
                    .into_iter()
                    .map(|r| (p, r)),
            );
            to_publish.extend(f.results.into_iter().map(|r| (p, r)));
            tpl.add_partition_offset(
                &self.settings.topic,
                f.partition,
                Offset::Offset(f.next_offset),
            )?;
        }
        let results: Vec<WindowResult> = to_publish.iter().map(|(_, r)| r.clone()).collect();
        let failed = self.publish(&results).await;
        // Undelivered results stay in their partition's outbox and go again with the next flush.
        for r in failed {
            if let Some((p, _)) = to_publish.iter().find(|(_, x)| *x == r) {
                if let Some(part) = self.parts.get_mut(p) {
                    part.unpublished.push(r);
                }
            }
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::debug!(error = %e, "committing Kafka offsets failed (MySQL holds the offsets that count)");
        }
        let took = in_flight.started.elapsed();
        if took > self.settings.flush_interval.max(Duration::from_millis(100)) {
            tracing::warn!(took = ?took, "slow flush (write, commit and publish)");
        }
        Ok(())
    }

    /// Publishes results keyed `BASE/QUOTE`; returns those not delivered.
    async fn publish(&self, results: &[WindowResult]) -> Vec<WindowResult> {
        let mut pending = Vec::with_capacity(results.len());
        for r in results {
            let key = format!("{}/{}", r.base, r.quote);
            let payload = r.to_json();
            let record = FutureRecord::to(&self.settings.output_topic)
                .key(&key)
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(f) => pending.push((r, f)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "enqueueing a window result failed");
                    return results.to_vec();
                }
            }
        }
        let mut failed = Vec::new();
        for (r, f) in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, "publishing a window result failed; kept for the next flush");
                    failed.push(r.clone());
                }
                Err(_) => failed.push(r.clone()),
            }
        }
        failed
    }

    async fn report(&self, recorder: &StatsRecorder) {
        let now = Utc::now().timestamp_micros();
        let watermark_lag_s = self
            .parts
            .values()
            .map(|p| p.engine.watermark())
            .filter(|w| *w > i64::MIN)
            .map(|w| (now - w) as f64 / 1e6)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            });
        let h = &self.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let active = match (self.first_event, self.last_event) {
            (Some(f), Some(l)) => (l - f).as_secs_f64(),
            _ => 0.0,
        };
        let mut details = serde_json::Map::new();
        details.insert("applied".into(), self.totals.applied.into());
        details.insert("duplicates".into(), self.totals.duplicates.into());
        details.insert("partly_late".into(), self.totals.partly_late.into());
        details.insert("windows_emitted".into(), self.totals.windows_emitted.into());
        details.insert(
            "open_windows".into(),
            self.parts
                .values()
                .map(|p| p.engine.open_windows())
                .sum::<usize>()
                .into(),
        );
        details.insert("flushes".into(), self.totals.flushes.into());
        details.insert("db_retries".into(), self.totals.db_retries.into());
        details.insert("latency_samples".into(), h.len().into());
        details.insert("latency_p50_ms".into(), ms(0.5).into());
        details.insert("latency_p95_ms".into(), ms(0.95).into());
        details.insert("latency_p99_ms".into(), ms(0.99).into());
        details.insert("latency_max_ms".into(), (h.max() as f64 / 1000.0).into());
        details.insert("processing_seconds".into(), active.into());
        // Log-spaced buckets for compare's latency chart: [upper bound ms, updates].
        let mut lower_us = 0u64;
        let buckets: Vec<serde_json::Value> = [
            1u64, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
            3_600_000,
        ]
        .iter()
        .map(|ms| {
            let upper_us = ms * 1000;
            let n = if h.is_empty() {
                0
            } else {
                h.count_between(lower_us, upper_us.saturating_sub(1))
            };
            lower_us = upper_us;
            serde_json::json!([ms, n])
        })
        .collect();
        details.insert("latency_histogram_ms".into(), buckets.into());
        if let Some(l) = watermark_lag_s {
            details.insert("watermark_lag_seconds".into(), l.into());
        }
        let lag = self.consumer.context().lag();
        let counters = Counters {
            events_in: self.totals.events,
            events_out: self.totals.windows_emitted,
            dead_letters: self.totals.dead_letters,
            late_events: self.totals.late,
            consumer_lag: lag,
            details,
        };
        let usage = recorder.record_or_warn(&counters).await;
        tracing::info!(
            events = self.totals.events,
            applied = self.totals.applied,
            late = self.totals.late,
            duplicates = self.totals.duplicates,
            dead_letters = self.totals.dead_letters,
            windows_emitted = self.totals.windows_emitted,
            watermark_lag_seconds = ?watermark_lag_s,
            latency_p50_ms = ms(0.5),
            latency_p99_ms = ms(0.99),
            processing_seconds = active,
            latency_p95_ms = ms(0.95),
            latency_max_ms = h.max() as f64 / 1000.0,
            cpu_seconds = usage.cpu_seconds,
            peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
            "stream-aggregator statistics"
        );
    }
}

/// A flush being written in the background.
struct InFlight {
    task: tokio::task::JoinHandle<anyhow::Result<Written>>,
    /// Latency samples (`received_at`, µs) of the events it holds, per partition.
    received: Vec<(i32, Vec<i64>)>,
    started: Instant,
}

/// What a background write committed.
struct Written {
    committed: Vec<PartFlush>,
    fenced: Vec<i32>,
    committed_at_us: i64,
    retries: u64,
}

/// Writes a flush in one transaction, retrying database errors with backoff (offsets are not
/// committed until it succeeds); partitions found fenced are left out and reported.
async fn write_until_committed(
    pool: MySqlPool,
    group: String,
    topic: String,
    mut flushes: Vec<PartFlush>,
) -> anyhow::Result<Written> {
    let mut backoff = Backoff::database();
    let mut fenced = Vec::new();
    let mut retries = 0;
    while !flushes.is_empty() {
        match store::write_flush(&pool, &group, &topic, SERVICE, &flushes).await {
            Ok(FlushOutcome::Committed) => break,
            Ok(FlushOutcome::Fenced(ps)) => {
                flushes.retain(|f| !ps.contains(&f.partition));
                fenced.extend(ps);
            }
            Err(e) => {
                retries += 1;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "writing the flush failed; retrying (offsets not committed)");
                tokio::time::sleep(delay).await;
            }
        }
    }
    Ok(Written {
        committed: flushes,
        fenced,
        committed_at_us: Utc::now().timestamp_micros(),
        retries,
    })
}

/// Whether partition `p` has been read to its end: asks the broker for the high watermark, at
/// most once per `ttl` while the partition's position stays the same. Unknown counts as not.
fn read_to_end(
    consumer: &StreamConsumer<RebalanceLog>,
    topic: &str,
    p: i32,
    part: &mut Part,
    ttl: Duration,
) -> bool {
    if let Some(c) = part.end_check {
        if c.next_offset == part.next_offset && c.at.elapsed() < ttl {
            return c.at_end;
        }
    }
    // A network round trip: let the runtime's other tasks (a flush being written) go on meanwhile.
    let high =
        tokio::task::block_in_place(|| consumer.fetch_watermarks(topic, p, Duration::from_secs(2)));
    let at_end = match high {
        Ok((_, high)) => part.next_offset >= high,
        Err(e) => {
            tracing::debug!(partition = p, error = %e, "reading the high watermark failed; not advancing the idle watermark");
            false
        }
    };
    part.end_check = Some(EndCheck {
        at: Instant::now(),
        next_offset: part.next_offset,
        at_end,
    });
    at_end
}

fn to_result(e: &Emission) -> WindowResult {
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
