//! The loop behind [`run`]: wake-ups (signal, write done, probe done, write due, timers, messages)
//! and what each one does, by concern: [`messages`] (taking messages, gaps and seeks),
//! [`rebalances`] (assignments and revocations), [`writes`] (starting and finishing writes,
//! rewinds and lost partitions, the stop), [`probes`] (watchdog, drained exit, offsets ahead).
//! The protocol it keeps is in the module docs of `consumer`.

mod messages;
mod probes;
mod rebalances;
mod writes;

use crate::ConsumerArgs;
use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    message::BorrowedMessage,
};
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    context::GroupEvents,
    gaps::GapState,
    offsets::OffsetStore,
    probe::{Broker, Probe},
    watchdog::Watchdog,
    Processor, Target,
};
use common::{
    exit::{Stopped, Unwritten},
    figures::{ConsumerFigures, FiguresRecorder},
    observe::Health,
    Context,
};

/// How often the log is probed (watchdog, drained check, offsets ahead of the log).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the final statistics row may take to be stored (less when the shutdown timeout
/// passed: the database is what does not answer then).
const FINAL_STATS: Duration = Duration::from_secs(5);
const FINAL_STATS_TIMED_OUT: Duration = Duration::from_millis(500);

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
    // Rendered (at 0) from the start, like the other per-topic series.
    crate::metrics::init();
    crate::metrics::SKIPPED_OFFSETS.with_label_values(&[target.topic.as_str()]);
    let now = Instant::now();
    let mut rt = Runtime {
        processor,
        target,
        args,
        pool: pool.clone(),
        store: OffsetStore::new(&target.group, &target.topic),
        broker: Broker::new(consumer.clone(), &target.topic),
        recorder: FiguresRecorder::new(pool.clone(), target.service).with_group(&target.group),
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
        stop_clock: StopClock::start(&ctx.shutdown, args.shutdown_timeout),
        kafka_errors: ErrorLog::default(),
        caught_up: false,
    };
    let outcome = rt.run(&consumer, ctx.shutdown.clone()).await;
    rt.processor.report(&rt.recorder, &rt.figures);
    let timed_out = outcome.as_ref().is_err_and(|e| {
        matches!(
            e.downcast_ref::<Stopped>(),
            Some(Stopped::ShutdownTimeout { .. })
        )
    });
    let limit = if timed_out {
        FINAL_STATS_TIMED_OUT
    } else {
        FINAL_STATS
    };
    rt.recorder.flush(limit).await;
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
    /// MySQL's next offset as this instance last stored or read it.
    written: Option<i64>,
    /// When a message of it arrived last (or it was assigned).
    active_at: Instant,
    /// What was done about offsets missing before a message ([`super::gaps`]).
    gap: GapState,
}

/// When the shutdown deadline is: `--shutdown-timeout` after the signal (or after a stop of the
/// service's own: drained, a fatal error).
#[derive(Debug, Clone)]
struct StopClock {
    signalled: Arc<OnceLock<Instant>>,
    timeout: Duration,
}

impl StopClock {
    fn start(shutdown: &CancellationToken, timeout: Duration) -> Self {
        let signalled = Arc::new(OnceLock::new());
        let (token, at) = (shutdown.clone(), signalled.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            let _ = at.set(Instant::now());
        });
        StopClock { signalled, timeout }
    }

    /// Completes `timeout` after the signal (never without one).
    async fn passed(&self, shutdown: &CancellationToken) {
        shutdown.cancelled().await;
        let at = *self.signalled.get_or_init(Instant::now);
        tokio::time::sleep_until((at + self.timeout).into()).await;
    }

    /// What is left of the timeout for the final writes, from the signal or from now.
    fn remaining(&self) -> Duration {
        match self.signalled.get() {
            Some(at) => self.timeout.saturating_sub(at.elapsed()),
            None => self.timeout,
        }
    }
}

/// Kafka consumer errors, logged at most every 10 s with how many there were.
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

struct Runtime<'a, P: Processor> {
    processor: &'a mut P,
    target: &'a Target,
    args: &'a ConsumerArgs,
    pool: MySqlPool,
    store: OffsetStore,
    broker: Broker,
    recorder: FiguresRecorder,
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
    stop_clock: StopClock,
    kafka_errors: ErrorLog,
    /// The last wake-up took everything fetched: pending work is written without waiting for
    /// the processor's deadline (adaptive commit).
    caught_up: bool,
}

/// Awaits the task in `slot` and empties it.
async fn join<T>(slot: &mut Option<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<T> {
    let result = slot.as_mut().expect("guarded by is_some").await;
    *slot = None;
    result.map_err(|e| anyhow::anyhow!("background task failed: {e}"))?
}

/// A Kafka error that ends the service (exit 1 with it).
#[derive(Debug, thiserror::Error)]
#[error("fatal Kafka consumer error: {0}")]
struct FatalKafka(String);

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
            let clock = self.stop_clock.clone();
            // Whatever a wake-up waits for (a write, the database at an assignment), a signal
            // bounds it by the shutdown timeout.
            let flow = tokio::select! {
                biased;
                flow = self.on_wake(consumer, wake) => Some(flow),
                _ = clock.passed(&shutdown) => None,
            };
            let flow = flow.unwrap_or_else(|| Err(self.not_written().into()));
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Drained) => {
                    tracing::info!(idle = ?self.args.exit_idle, "drained: every partition's stored offset is at the end of the log; writing and exiting");
                    return self.finish(consumer).await;
                }
                Ok(Flow::Stop) => {
                    tracing::info!(timeout = ?self.args.shutdown_timeout, "stopping: writing what is pending");
                    return self.finish(consumer).await;
                }
                Err(e) if stops_with_writes(&e) => {
                    // Write what can be written, within the timeout (the database may be why
                    // the topic could not be drained): an uncommitted write loses nothing.
                    if let Err(stop_error) = self.finish(consumer).await {
                        tracing::warn!(error = %stop_error, "writing before the stop failed");
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
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
            Wake::Written(w) => {
                self.write_finished(consumer, w?, false).await?;
                // What arrived during that write, at once when nothing more waits.
                if self.caught_up {
                    self.start_write()?;
                }
            }
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
            Wake::Stats => self.processor.report(&self.recorder, &self.figures),
            Wake::Message(Ok(m)) => self.on_messages(consumer, m).await?,
            Wake::Message(Err(e)) => self.kafka_error(consumer, &e)?,
        }
        Ok(Flow::Continue)
    }

    /// A Kafka consumer error: fatal ones (librdkafka's fatal errors, authentication and
    /// authorization) end the service; others are logged (at most every 10 s) while librdkafka
    /// recovers by itself.
    fn kafka_error(&mut self, consumer: &GroupConsumer, e: &KafkaError) -> anyhow::Result<()> {
        use rdkafka::types::RDKafkaErrorCode as C;
        if let Some((code, reason)) = consumer.client().fatal_error() {
            return Err(FatalKafka(format!("{reason} ({code:?})")).into());
        }
        let fatal = matches!(
            e.rdkafka_error_code(),
            Some(
                C::Fatal
                    | C::Authentication
                    | C::SaslAuthenticationFailed
                    | C::TopicAuthorizationFailed
                    | C::GroupAuthorizationFailed
                    | C::ClusterAuthorizationFailed
            )
        );
        if fatal {
            return Err(FatalKafka(e.to_string()).into());
        }
        let log = &mut self.kafka_errors;
        if log
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            log.suppressed += 1;
        } else {
            tracing::warn!(error = %e, similar_since_last = log.suppressed, "Kafka consumer error (librdkafka retries by itself)");
            log.last = Some(Instant::now());
            log.suppressed = 0;
        }
        Ok(())
    }

    /// The final writes within what is left of the shutdown timeout; past it, the service stops
    /// naming what was not written.
    async fn finish(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        let remaining = self.stop_clock.remaining();
        match tokio::time::timeout(remaining, self.stop(consumer)).await {
            Ok(result) => result,
            Err(_) => Err(self.not_written().into()),
        }
    }

    /// The stop for a shutdown timeout: the held partitions with offsets read but not written.
    fn not_written(&self) -> Stopped {
        let pending: Vec<Unwritten> = self
            .held()
            .filter_map(|(partition, x)| {
                let read = x.next?;
                (x.written != Some(read)).then_some(Unwritten {
                    partition,
                    stored: x.written,
                    read,
                })
            })
            .collect();
        let stop = Stopped::ShutdownTimeout {
            waited: self.args.shutdown_timeout,
            pending,
        };
        tracing::error!("{stop}");
        stop
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
}

/// Errors after which pending work is still written (within the timeout) before the exit.
fn stops_with_writes(e: &anyhow::Error) -> bool {
    e.downcast_ref::<FatalKafka>().is_some()
        || e.downcast_ref::<Stopped>()
            .is_some_and(|s| !matches!(s, Stopped::ShutdownTimeout { .. }))
}
