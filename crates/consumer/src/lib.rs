//! consumer: the consumer runtime, one loop for every service that reads a topic into MySQL
//! (raw-consumer, update-counter, stream-aggregator). A service supplies a [`Processor`] (apply a
//! message, write what is pending); the runtime does everything else, once. [`ingest`] is the
//! processor of the services that only parse messages into rows; [`dead_letters`] what the
//! services keep of messages they cannot use; [`metrics`] the runtime's Prometheus series.
//!
//! # Offsets: effectively once
//! MySQL's `kafka_offsets` ([`offsets::OffsetStore`]) is the truth about what a group has applied:
//! a processor's write stores the partitions' next offsets in the same transaction as their
//! effect. Kafka's group offsets are committed after that commit and are only a hint for where to
//! resume fetching. When partitions are assigned the runtime reads their stored offsets; messages
//! below them were applied before (re-delivered after a crash between the database commit and the
//! Kafka commit) and are skipped, read through rather than sought past. So a crash at any moment
//! loses nothing and applies nothing twice. Writes lock the offset rows (`FOR UPDATE`) and check
//! them, which also fences a former owner still writing after a rebalance.
//!
//! # Liveness: never stuck silently
//! Every second a [`probe::Probe`] reads the stored offsets of every partition of the topic, then
//! the broker's watermarks (on a blocking thread, off the loop). From probes:
//! - the [`watchdog`] finds partitions with messages waiting and no progress for two session
//!   timeouts (held but not fetched; or held by a dead member, orphaned, or unassigned) and the
//!   instance logs a WARN naming topic, group and lag, and rejoins the group (unsubscribe,
//!   subscribe), backing off while it stays stuck;
//! - `--exit-idle D` exits 0 only when drained: every partition's stored offset at its high
//!   watermark and nothing received for `D`; `--max-wait` bounds that wait (exit status 3, naming
//!   the partitions behind);
//! - a stored offset beyond the high watermark (the topic was recreated, the broker lost its
//!   data) is never skipped past: ERROR and exit status 4, or, with
//!   `--on-offset-ahead reset-to-start`, a WARN and the partition read again from its start.
//!
//! # Writes
//! At most one write is in flight while the next one fills; the processor says when a write is
//! due (size or time). A write retries transient database errors with backoff until it commits
//! (offsets are not committed meanwhile); data the database refuses is narrowed down to the
//! messages that made it and those are kept as dead letters (`common::retry`, `crate::ingest`, the
//! aggregator's flush). A finished write may ask the runtime to read partitions again from an
//! offset ([`WriteOutcome::rewind`]: the aggregator narrowing down a refused flush) or report
//! partitions another instance owns now ([`WriteOutcome::lost`]: the runtime gives them up and
//! rejoins the group). Before partitions are assigned, a write in flight is finished (it may hold
//! their newest state). On shutdown, drain or a fatal stop, pending work is written and the Kafka
//! hint committed synchronously, within `--shutdown-timeout`; past it the service exits 1 naming
//! the offsets not written (nothing is lost: they are read again by the next run).
//!
//! # Gaps
//! A message beyond a partition's next offset is never applied before the broker confirms the
//! offsets between hold no message ([`gaps`]); a seek that fails is retried, then the instance
//! rejoins its group.

pub mod context;
pub mod dead_letters;
pub mod fetch;
pub mod gaps;
pub mod ingest;
pub mod metrics;
pub mod offsets;
pub mod probe;
mod runtime;
pub mod settings;
pub mod watchdog;

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Instant};

pub use runtime::run;

use common::{config::KafkaArgs, figures::ConsumerFigures};

pub use settings::{ConsumerArgs, OnOffsetAhead};

/// A write started by [`Processor::start_write`], run on the runtime's workers.
pub type WriteTask<W> = Pin<Box<dyn Future<Output = anyhow::Result<W>> + Send + 'static>>;

/// One message of a held partition, new to the group (at or beyond its stored offset).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The message's timestamp (milliseconds since the epoch), when the broker gave one.
    pub published_ms: Option<i64>,
    /// When the batch of messages it came in was taken from the consumer.
    pub received: Instant,
}

impl<'a> Msg<'a> {
    /// The message as a dead letter's source, read from `topic`.
    pub fn source(&self, topic: &'a str) -> dead_letters::Source<'a> {
        dead_letters::Source {
            topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key,
            payload: self.payload,
            published_ms: self.published_ms,
        }
    }
}

/// What a committed write tells the runtime.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The next offsets it stored per partition (for Kafka's hint).
    pub committed: Vec<(i32, i64)>,
    /// Partitions to read again from an offset (the processor dropped what it held of them
    /// after it; e.g. a flush the database refused, narrowed down message by message).
    pub rewind: Vec<(i32, i64)>,
    /// Partitions another instance owns now (a newer ownership claim): the runtime gives them up
    /// and rejoins the group, so that it never holds a partition it does not apply.
    pub lost: Vec<i32>,
}

impl WriteOutcome {
    /// A write that committed `offsets` and asks nothing else.
    pub fn committed(offsets: Vec<(i32, i64)>) -> Self {
        WriteOutcome {
            committed: offsets,
            ..WriteOutcome::default()
        }
    }
}

/// What a service does with its messages; the runtime calls it from its one loop.
pub trait Processor {
    /// What a finished write hands back to [`Processor::write_done`].
    type Written: Send + 'static;

    /// Partitions were assigned. `offsets` holds MySQL's next offset of each (`None`: never
    /// stored); a processor that reads them again under a lock (claiming the partitions) updates
    /// them with what it read.
    fn assigned(
        &mut self,
        offsets: &mut BTreeMap<i32, Option<i64>>,
    ) -> impl Future<Output = anyhow::Result<()>>;

    /// Partitions were revoked: drop what is not written (their new owner reads it again).
    fn revoked(&mut self, partitions: &[i32]);

    /// Applies one message (in offset order per partition; the hot path).
    fn handle(&mut self, msg: Msg<'_>);

    /// When the pending work must be written at the latest (`None`: nothing is due by time).
    fn write_deadline(&self) -> Option<Instant>;

    /// Enough is pending that it should be written now (and no more be read until then).
    fn write_due(&self) -> bool;

    /// Takes everything pending into a write, `None` when there is nothing to write. `probe` is
    /// the latest view of the log (watermarks), when there is one.
    fn start_write(
        &mut self,
        probe: Option<&probe::Probe>,
    ) -> anyhow::Result<Option<WriteTask<Self::Written>>>;

    /// A write finished: what it committed, and what the runtime must do about it.
    fn write_done(
        &mut self,
        written: Self::Written,
    ) -> impl Future<Output = anyhow::Result<WriteOutcome>>;

    /// Submits a `service_stats` row (written in the background, off the consume loop) and logs
    /// the statistics line; `runtime` holds the runtime's own figures for this service.
    fn report(&self, recorder: &common::figures::FiguresRecorder, runtime: &ConsumerFigures);
}

/// The rows a consuming service writes about itself, as retention prunes them: its statistics
/// and its dead letters (of its group).
pub fn own_rows(service: &str, group: &str) -> Vec<common::retention::Prune> {
    use common::retention::Prune;
    vec![
        Prune::new("service_stats", "recorded_at")
            .scoped("consumer_group", group)
            .scoped("service", service),
        Prune::new("dead_letters", "recorded_at")
            .scoped("service", service)
            .scoped("consumer_group", group),
    ]
}

/// What a runtime consumes, as whom, and with which client settings.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: &'static str,
    pub topic: String,
    pub group: String,
    /// Consumer configuration: our defaults, the service's tuning, the shared consumer settings,
    /// then the user's overrides (`KAFKA_CONSUMER_PROPERTIES`).
    pub client: rdkafka::ClientConfig,
}

impl Target {
    /// The target with its client built from the shared settings; `tuning` are service-specific
    /// librdkafka properties (the user's overrides still win).
    pub fn new(
        service: &'static str,
        topic: &str,
        group: &str,
        kafka: &KafkaArgs,
        consumer: &ConsumerArgs,
        tuning: &[(&str, &str)],
    ) -> Result<Self, common::ConfigError> {
        let mut client = common::kafka::consumer_defaults(kafka.client_config()?, group);
        for (k, v) in tuning {
            client.set(*k, *v);
        }
        consumer.apply(&mut client);
        kafka.consumer_properties.apply(&mut client);
        Ok(Target {
            service,
            topic: topic.to_owned(),
            group: group.to_owned(),
            client,
        })
    }
}
