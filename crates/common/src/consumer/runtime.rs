//! The loop behind [`run`]: wake-ups (signal, write done, probe done, write due, timers, messages)
//! and what each one does. The protocol it keeps is in the module docs of `consumer`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::BorrowedMessage,
    Message, Offset, TopicPartitionList,
};
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    context::{GroupEvents, RebalanceEvent},
    offsets::OffsetStore,
    probe::{Broker, Probe},
    watchdog::{Held, Stall, Verdict, Watchdog},
    Msg, Processor, Target,
};
use crate::{
    backoff::Backoff,
    config::{ConsumerArgs, OnOffsetAhead},
    exit::Stopped,
    metrics as m,
    observe::Health,
    stats::{ConsumerFigures, StatsRecorder},
    Context,
};

/// Messages taken per wake-up before checking timers and signals again.
const DRAIN: usize = 4096;
/// How long a stop with its own exit status ([`Stopped`]) waits for pending writes.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a seek back to MySQL's offset may wait for the broker.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long without an answering probe before the instance says it is not ready.
const PROBE_STALE: Duration = Duration::from_secs(5);
/// How often the log is probed (watchdog, drained check, offsets ahead of the log).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

type GroupConsumer = StreamConsumer<GroupEvents>;

/// Consumes `target.topic` through `processor` until `shutdown`, until drained (`--exit-idle`),
/// or until a stop with its own exit status ([`Stopped`]). Returns the runtime's figures.
pub async fn run<P: Processor>(
    processor: &mut P,
    target: &Target,
    pool: &MySqlPool,
    args: &ConsumerArgs,
    ctx: &Context,
) -> anyhow::Result<ConsumerFigures> {
    let consumer: Arc<GroupConsumer> =
        Arc::new(target.client.create_with_context(GroupEvents::default())?);
    consumer.subscribe(&[&target.topic])?;
    tracing::info!(
        topic = %target.topic, group = %target.group,
        group_instance_id = ?args.group_instance_id, "consuming"
    );
    let now = Instant::now();
    let mut rt = Runtime {
        processor,
        target,
        args,
        pool: pool.clone(),
        store: OffsetStore::new(&target.group, &target.topic),
        broker: Broker::new(consumer.clone(), &target.topic),
        recorder: StatsRecorder::new(pool.clone(), target.service),
        parts: Vec::new(),
        in_flight: None,
        probing: None,
        last_probe: None,
        watchdog: Watchdog::new(args.stall_after()),
        figures: ConsumerFigures::default(),
        started: now,
        first_message: None,
        last_message: now,
        was_reading: true,
        resumed_at: now,
        probe_failing: false,
        assigned_at: None,
        health: ctx.health.clone(),
        last_probe_ok: None,
    };
    let outcome = rt.run(&consumer, ctx.shutdown.clone()).await;
    rt.processor.report(&rt.recorder, &rt.figures).await;
    outcome.map(|()| rt.figures)
}

/// What woke the loop.
enum Wake<'c, W> {
    Stop,
    Rebalanced,
    Written(anyhow::Result<W>),
    Probed(anyhow::Result<Probe>),
    WriteDue,
    ProbeDue,
    Stats,
    Message(Result<BorrowedMessage<'c>, KafkaError>),
}

/// What the loop does next.
enum Flow {
    Continue,
    /// Drained (`--exit-idle`): write what is pending and exit 0.
    Drained,
    /// Asked to stop (a signal): write what is pending and exit 0.
    Stop,
}

/// This instance's view of one partition of the topic.
#[derive(Debug, Clone, Copy)]
struct Part {
    held: bool,
    /// Next offset to apply (`None`: nothing stored or read yet).
    next: Option<i64>,
    /// When a message of it arrived last (or it was assigned).
    active_at: Instant,
    /// How a gap between the next offset and a message was dealt with.
    gap: Gap,
}

/// Offsets missing between the next offset of a partition and a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    None,
    /// Went back to the next offset once (Kafka's hint was ahead of MySQL's offset).
    SoughtBack,
    /// Still missing after going back (retention removed them): reported once.
    Reported,
}

struct Runtime<'a, P: Processor> {
    processor: &'a mut P,
    target: &'a Target,
    args: &'a ConsumerArgs,
    pool: MySqlPool,
    store: OffsetStore,
    broker: Broker,
    recorder: StatsRecorder,
    /// Indexed by partition id.
    parts: Vec<Option<Part>>,
    in_flight: Option<JoinHandle<anyhow::Result<P::Written>>>,
    probing: Option<JoinHandle<anyhow::Result<Probe>>>,
    last_probe: Option<Probe>,
    watchdog: Watchdog,
    figures: ConsumerFigures,
    started: Instant,
    first_message: Option<Instant>,
    last_message: Instant,
    was_reading: bool,
    /// When reading resumed after a pause of ours (a due write waiting for the one in flight).
    resumed_at: Instant,
    probe_failing: bool,
    /// When partitions were last assigned, until the first write after it commits.
    assigned_at: Option<Instant>,
    health: Arc<Health>,
    /// When a probe last answered (the broker and MySQL both did).
    last_probe_ok: Option<Instant>,
}

/// Awaits the task in `slot` and empties it.
async fn join<T>(slot: &mut Option<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<T> {
    let result = slot.as_mut().expect("guarded by is_some").await;
    *slot = None;
    result.map_err(|e| anyhow::anyhow!("background task failed: {e}"))?
}

impl<P: Processor> Runtime<'_, P> {
    async fn run(
        &mut self,
        consumer: &GroupConsumer,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut stats_tick = tokio::time::interval(self.args.stats_interval);
        stats_tick.tick().await;
        let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.health.turn();
            if self.in_flight.is_none() && self.processor.write_due() {
                self.start_write()?;
            }
            let reading = self.reading();
            let writing = self.in_flight.is_some();
            let probing = self.probing.is_some();
            let deadline = self.processor.write_deadline().filter(|_| !writing);
            let far = Instant::now() + Duration::from_secs(3600);
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Stop,
                _ = consumer.context().arrived() => Wake::Rebalanced,
                w = join(&mut self.in_flight), if writing => Wake::Written(w),
                p = join(&mut self.probing), if probing => Wake::Probed(p),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far).into()), if deadline.is_some() => Wake::WriteDue,
                _ = probe_tick.tick() => Wake::ProbeDue,
                _ = stats_tick.tick() => Wake::Stats,
                m = consumer.recv(), if reading => Wake::Message(m),
            };
            let flow = match self.on_wake(consumer, wake).await {
                Ok(flow) => flow,
                Err(e) if e.downcast_ref::<Stopped>().is_some() => {
                    // Write what can be written, but do not wait for ever (the database may be
                    // why the topic could not be drained): an uncommitted write loses nothing,
                    // the next run reads its messages again.
                    match tokio::time::timeout(STOP_GRACE, self.stop(consumer)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(stop_error)) => {
                            tracing::warn!(error = %stop_error, "writing before the stop failed")
                        }
                        Err(_) => {
                            tracing::warn!(grace = ?STOP_GRACE, "pending writes did not finish in time: abandoned uncommitted (the next run reads them again)")
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match flow {
                Flow::Continue => {}
                Flow::Drained => {
                    tracing::info!(idle = ?self.args.exit_idle, "drained: every partition's stored offset is at the end of the log; writing and exiting");
                    return self.stop(consumer).await;
                }
                Flow::Stop => {
                    tracing::info!("stopping: writing what is pending");
                    return self.stop(consumer).await;
                }
            }
        }
    }

    async fn on_wake(
        &mut self,
        consumer: &GroupConsumer,
        wake: Wake<'_, P::Written>,
    ) -> anyhow::Result<Flow> {
        match wake {
            Wake::Stop => return Ok(Flow::Stop),
            Wake::Rebalanced => self.apply_rebalances(consumer).await?,
            Wake::Written(w) => self.write_finished(consumer, w?, false).await?,
            Wake::Probed(Ok(probe)) => return self.on_probe(consumer, probe).await,
            Wake::Probed(Err(e)) => self.probe_failed(&e),
            Wake::WriteDue => {
                self.apply_rebalances(consumer).await?;
                self.start_write()?;
            }
            Wake::ProbeDue => {
                self.check_max_wait(None)?;
                self.start_probe();
            }
            Wake::Stats => self.processor.report(&self.recorder, &self.figures).await,
            Wake::Message(Ok(m)) => self.on_messages(consumer, m).await?,
            Wake::Message(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(Flow::Continue)
    }

    /// Whether to take messages: not while a due write waits for the one in flight.
    fn reading(&mut self) -> bool {
        let reading = !(self.in_flight.is_some() && self.processor.write_due());
        if reading && !self.was_reading {
            self.resumed_at = Instant::now();
        }
        self.was_reading = reading;
        reading
    }

    fn part_mut(&mut self, p: i32) -> Option<&mut Part> {
        self.parts.get_mut(p as usize)?.as_mut()
    }

    fn held(&self) -> impl Iterator<Item = (i32, &Part)> {
        self.parts
            .iter()
            .enumerate()
            .filter_map(|(p, part)| part.as_ref().filter(|x| x.held).map(|x| (p as i32, x)))
    }

    // ------------------------------------------------------------------ messages

    /// The first message of a wake-up, then whatever is already fetched (up to [`DRAIN`]).
    async fn on_messages<'c>(
        &mut self,
        consumer: &'c GroupConsumer,
        first: BorrowedMessage<'c>,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        self.last_message = now;
        self.first_message.get_or_insert(now);
        if consumer.context().pending() {
            self.apply_rebalances(consumer).await?;
        }
        if !self.take(consumer, &first, now) {
            self.apply_rebalances(consumer).await?;
            self.take(consumer, &first, now);
        }
        drop(first);
        let mut stream = consumer.stream();
        for _ in 0..DRAIN {
            if self.processor.write_due() {
                break;
            }
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    if !self.take(consumer, &m, now) {
                        self.apply_rebalances(consumer).await?;
                        self.take(consumer, &m, now);
                    }
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
                _ => break,
            }
        }
        if consumer.context().pending() {
            self.apply_rebalances(consumer).await?;
        }
        // The first write after an assignment goes at once, not at the batch or flush deadline:
        // a restarted instance shows progress (and frees its lag) as soon as it can.
        if self.assigned_at.is_some() {
            self.start_write()?;
        }
        Ok(())
    }

    /// Hands a message to the processor if it is new to the group. False when it belongs to a
    /// partition this instance does not hold while rebalances wait: apply them, then call again.
    fn take(&mut self, consumer: &GroupConsumer, m: &BorrowedMessage<'_>, now: Instant) -> bool {
        let (p, o) = (m.partition(), m.offset());
        let Some(part) = self
            .parts
            .get_mut(p as usize)
            .and_then(Option::as_mut)
            .filter(|x| x.held)
        else {
            if consumer.context().pending() {
                return false;
            }
            self.figures.not_owned += 1;
            return true;
        };
        part.active_at = now;
        match part.next {
            Some(next) if o < next => {
                // Applied before (Kafka's hint was behind MySQL): skipped. Read through rather
                // than sought past: a seek right after an assignment has stopped fetching on
                // the test broker.
                self.figures.already_applied += 1;
                return true;
            }
            Some(next) if o > next => {
                if !self.gap(consumer, p, o, next) {
                    return true;
                }
                if let Some(part) = self.part_mut(p) {
                    part.next = Some(o + 1);
                }
            }
            _ => part.next = Some(o + 1),
        }
        self.figures.messages += 1;
        self.processor.handle(Msg {
            partition: p,
            offset: o,
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            received: now,
        });
        true
    }

    /// Message `o` of partition `p` is beyond its next offset `next`. The first time, Kafka's hint
    /// was ahead of MySQL's offset (reset by hand, or the log was refilled from the start): go
    /// back to `next` (messages fetched before the seek are dropped by librdkafka) and drop this
    /// one (false). After that the offsets really are missing from the log: report once, apply.
    fn gap(&mut self, consumer: &GroupConsumer, p: i32, o: i64, next: i64) -> bool {
        let topic = &self.target.topic;
        let Some(part) = self.part_mut(p) else {
            return true;
        };
        match part.gap {
            Gap::None => {
                part.gap = Gap::SoughtBack;
                tracing::warn!(%topic, partition = p, kafka = o, mysql = next, "the group's Kafka offset is ahead of MySQL's: going back to MySQL's offset");
                match consumer.seek(topic, p, Offset::Offset(next), SEEK_TIMEOUT) {
                    Ok(()) => return false,
                    Err(e) => {
                        tracing::error!(%topic, partition = p, error = %e, "seeking back failed")
                    }
                }
            }
            Gap::SoughtBack => {
                part.gap = Gap::Reported;
                tracing::error!(%topic, partition = p, first_read = o, mysql = next, "offsets between MySQL's next offset and the first message the broker returns are missing from the log (removed by retention?): they cannot be applied");
            }
            Gap::Reported => {}
        }
        true
    }

    // ------------------------------------------------------------------ rebalances

    async fn apply_rebalances(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        for event in consumer.context().drain() {
            match event {
                RebalanceEvent::Revoked(ps) => self.revoke(&ps),
                RebalanceEvent::Assigned(ps) => self.assign(consumer, ps).await?,
            }
        }
        Ok(())
    }

    fn revoke(&mut self, ps: &[i32]) {
        for &p in ps {
            if let Some(part) = self.part_mut(p) {
                part.held = false;
            }
        }
        self.processor.revoked(ps);
        self.figures.partitions_held = self.held().count();
    }

    /// Takes partitions: finishes the write in flight (it may hold their newest state), reads
    /// their stored offsets, checks them against the log, lets the processor prepare them.
    async fn assign(&mut self, consumer: &GroupConsumer, ps: Vec<i32>) -> anyhow::Result<()> {
        let received = Instant::now();
        self.finish_write(consumer, false).await?;
        let stored = self.load_stored().await;
        let mut offsets: BTreeMap<i32, Option<i64>> =
            ps.iter().map(|p| (*p, stored.get(p).copied())).collect();
        self.check_ahead_at_assignment(&mut offsets).await?;
        self.processor.assigned(&mut offsets).await?;
        let now = Instant::now();
        for (&p, &next) in &offsets {
            let i = p as usize;
            if self.parts.len() <= i {
                self.parts.resize(i + 1, None);
            }
            self.parts[i] = Some(Part {
                held: true,
                next,
                active_at: now,
                gap: Gap::None,
            });
        }
        self.figures.partitions_held = self.held().count();
        self.assigned_at = (!ps.is_empty()).then_some(received);
        tracing::info!(partitions = ?ps, stored_offsets = ?offsets, "partitions ready");
        Ok(())
    }

    /// The group's stored offsets, retrying database errors with backoff.
    async fn load_stored(&self) -> BTreeMap<i32, i64> {
        let mut backoff = Backoff::database();
        loop {
            match self.store.load(&self.pool).await {
                Ok(stored) => return stored,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "reading stored offsets failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// At assignment: stored offsets beyond the log fail the run or are reset to the log start.
    async fn check_ahead_at_assignment(
        &mut self,
        offsets: &mut BTreeMap<i32, Option<i64>>,
    ) -> anyhow::Result<()> {
        let with_stored: Vec<i32> = offsets.iter().filter_map(|(p, s)| s.map(|_| *p)).collect();
        if with_stored.is_empty() {
            return Ok(());
        }
        let marks = match self.broker.watermarks(Some(with_stored)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the watermarks of assigned partitions failed; they are checked at the next probe");
                return Ok(());
            }
        };
        for (p, (low, high)) in marks {
            let Some(stored) = offsets.get(&p).copied().flatten() else {
                continue;
            };
            if stored > high {
                offsets.insert(p, Some(self.offset_ahead(p, stored, low, high).await?));
            }
        }
        Ok(())
    }

    /// A stored offset beyond the high watermark: an ERROR and [`Stopped::OffsetsAhead`], or with
    /// reset-to-start a WARN and the stored offset moved to the log start (returned).
    async fn offset_ahead(&self, p: i32, stored: i64, low: i64, high: i64) -> anyhow::Result<i64> {
        let (topic, group) = (&self.target.topic, &self.target.group);
        if self.args.on_offset_ahead == OnOffsetAhead::Fail {
            let stop = Stopped::OffsetsAhead {
                topic: topic.clone(),
                group: group.clone(),
                partition: p,
                stored,
                high,
            };
            tracing::error!(%topic, %group, partition = p, mysql_offset = stored, high_watermark = high, "{stop}");
            return Err(stop.into());
        }
        tracing::warn!(%topic, %group, partition = p, mysql_offset = stored, high_watermark = high, log_start = low, "MySQL's offset is beyond the broker's log: resetting it to the log start (--on-offset-ahead reset-to-start)");
        let mut backoff = Backoff::database();
        loop {
            match self.store.reset(&self.pool, p, stored, low).await {
                Ok(_) => return Ok(low),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "resetting the stored offset failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    // ------------------------------------------------------------------ writes

    fn start_write(&mut self) -> anyhow::Result<()> {
        if self.in_flight.is_none() {
            if let Some(task) = self.processor.start_write(self.last_probe.as_ref())? {
                self.in_flight = Some(tokio::spawn(task));
            }
        }
        Ok(())
    }

    async fn finish_write(&mut self, consumer: &GroupConsumer, sync: bool) -> anyhow::Result<()> {
        if self.in_flight.is_some() {
            let written = join(&mut self.in_flight).await?;
            self.write_finished(consumer, written, sync).await?;
        }
        Ok(())
    }

    /// Records a committed write and commits its offsets to Kafka (a hint; MySQL's count).
    async fn write_finished(
        &mut self,
        consumer: &GroupConsumer,
        written: P::Written,
        sync: bool,
    ) -> anyhow::Result<()> {
        let offsets = self.processor.write_done(written).await?;
        self.figures.writes += 1;
        if let Some(at) = self.assigned_at.take() {
            tracing::info!(since_assignment = ?at.elapsed(), "first write after the assignment committed");
        }
        if let Some(first) = self.first_message {
            self.figures.active_seconds = first.elapsed().as_secs_f64();
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in offsets {
            if self.part_mut(p).is_some_and(|x| x.held) {
                tpl.add_partition_offset(&self.target.topic, p, Offset::Offset(next))?;
            }
        }
        if tpl.count() > 0 {
            let mode = if sync {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::debug!(error = %e, "committing Kafka offsets failed (MySQL holds the offsets that count)");
            }
        }
        Ok(())
    }

    /// Writes everything pending (revocations applied first) and commits the hint synchronously.
    async fn stop(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        self.finish_write(consumer, false).await?;
        for event in consumer.context().drain() {
            if let RebalanceEvent::Revoked(ps) = event {
                self.revoke(&ps);
            }
        }
        self.start_write()?;
        self.finish_write(consumer, true).await
    }

    // ------------------------------------------------------------------ probes

    fn start_probe(&mut self) {
        if self.probing.is_none() {
            let (broker, store, pool) =
                (self.broker.clone(), self.store.clone(), self.pool.clone());
            self.probing = Some(tokio::spawn(
                async move { broker.probe(&store, &pool).await },
            ));
        }
    }

    fn probe_failed(&mut self, e: &anyhow::Error) {
        if !self.probe_failing {
            tracing::warn!(error = %e, "reading offsets and watermarks failed (watchdog and drain checks wait for the next probe)");
        }
        self.probe_failing = true;
        if self.last_probe_ok.is_none_or(|t| t.elapsed() > PROBE_STALE) {
            self.health
                .set_ready(Err(format!("the broker or MySQL does not answer: {e:#}")));
        }
    }

    /// Readiness after a probe: holding partitions, or nothing to do; metrics of the probe.
    fn publish_probe(&mut self, probe: &Probe) {
        self.last_probe_ok = Some(Instant::now());
        let held = self.figures.partitions_held;
        let lag = probe.lag();
        self.health.set_ready(if held > 0 || lag == 0 {
            Ok(())
        } else {
            Err(format!(
                "no partitions held while {lag} messages wait in {}",
                self.target.topic
            ))
        });
        let topic = self.target.topic.as_str();
        for (p, mark) in &probe.partitions {
            m::CONSUMER_LAG
                .with_label_values(&[topic, &p.to_string()])
                .set(mark.lag());
        }
        m::PARTITIONS_HELD
            .with_label_values(&[topic])
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        m::set_total(
            &m::MESSAGES_CONSUMED.with_label_values(&[topic]),
            self.figures.messages,
        );
        m::set_total(
            &m::REJOINS.with_label_values(&[topic]),
            self.figures.rejoins,
        );
    }

    async fn on_probe(&mut self, consumer: &GroupConsumer, probe: Probe) -> anyhow::Result<Flow> {
        if std::mem::take(&mut self.probe_failing) {
            tracing::info!("reading offsets and watermarks works again");
        }
        self.figures.lag = Some(probe.lag());
        self.publish_probe(&probe);
        self.check_ahead_while_held(consumer, &probe).await?;
        let now = Instant::now();
        let resumed_at = self.resumed_at;
        let held: Vec<Held> = self
            .held()
            .map(|(partition, x)| Held {
                partition,
                position: x.next,
                active_at: x.active_at.max(resumed_at),
            })
            .collect();
        let reading = self.reading();
        match self.watchdog.observe(&probe, &held, reading, now) {
            Verdict::Rejoin(stalls) => self.rejoin(consumer, &stalls)?,
            Verdict::Waiting(_) | Verdict::Fine => {}
        }
        let drained = self.args.exit_idle.is_some_and(|idle| {
            probe.drained() && self.last_message <= probe.at && self.last_message.elapsed() >= idle
        });
        self.check_max_wait(Some(&probe))?;
        self.last_probe = Some(probe);
        Ok(if drained {
            Flow::Drained
        } else {
            Flow::Continue
        })
    }

    /// A held partition whose stored offset is now beyond the log (the topic was recreated
    /// under us): fail, or reset it and rejoin so that it is assigned afresh.
    async fn check_ahead_while_held(
        &mut self,
        consumer: &GroupConsumer,
        probe: &Probe,
    ) -> anyhow::Result<()> {
        let ahead: Vec<(i32, i64, i64, i64)> = self
            .held()
            .filter_map(|(p, _)| {
                let m = probe.partitions.get(&p)?;
                m.ahead()
                    .then(|| (p, m.stored.unwrap_or_default(), m.low, m.high))
            })
            .collect();
        let mut tpl = TopicPartitionList::new();
        for &(p, stored, low, high) in &ahead {
            let start = self.offset_ahead(p, stored, low, high).await?;
            tpl.add_partition_offset(&self.target.topic, p, Offset::Offset(start))?;
        }
        if !ahead.is_empty() {
            // Kafka's hint too, so that the new assignment starts at the log start.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::debug!(error = %e, "committing the reset offsets to Kafka failed");
            }
            consumer.unsubscribe();
            consumer.subscribe(&[&self.target.topic])?;
        }
        Ok(())
    }

    /// With `--max-wait`: past it and not drained is [`Stopped::NotDrained`].
    fn check_max_wait(&self, probe: Option<&Probe>) -> anyhow::Result<()> {
        let Some(max) = self.args.max_wait else {
            return Ok(());
        };
        let probe = probe.or(self.last_probe.as_ref());
        if self.started.elapsed() < max || probe.is_some_and(Probe::drained) {
            return Ok(());
        }
        Err(Stopped::NotDrained {
            topic: self.target.topic.clone(),
            group: self.target.group.clone(),
            waited: max,
            behind: probe.map(Probe::behind).unwrap_or_default(),
        }
        .into())
    }

    /// Leaves and rejoins the group so the coordinator assigns the partitions afresh.
    fn rejoin(&mut self, consumer: &GroupConsumer, stalls: &[Stall]) -> anyhow::Result<()> {
        let lag: i64 = stalls.iter().map(|s| s.lag).sum();
        let stalled: Vec<String> = stalls
            .iter()
            .map(|s| {
                let whose = if s.held {
                    "held here, not fetched"
                } else {
                    "not moving"
                };
                format!(
                    "{} ({} waiting, {whose} for {:?})",
                    s.partition, s.lag, s.stalled_for
                )
            })
            .collect();
        let held: Vec<i32> = self.held().map(|(p, _)| p).collect();
        tracing::warn!(
            topic = %self.target.topic, group = %self.target.group, lag, held = ?held,
            stalled = %stalled.join(", "),
            "no progress on partitions with messages waiting: rejoining the consumer group"
        );
        consumer.unsubscribe();
        consumer.subscribe(&[&self.target.topic])?;
        self.figures.rejoins += 1;
        Ok(())
    }
}
