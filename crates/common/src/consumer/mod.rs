//! The consumer runtime: one loop for every service that reads a topic into MySQL (raw-consumer,
//! update-counter, stream-aggregator). A service supplies a [`Processor`] (apply a message, write
//! what is pending); the runtime does everything else, once.
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
//! due (size or time). A write retries database errors with backoff until it commits and offsets
//! are not committed meanwhile. Before partitions are assigned, a write in flight is finished
//! (it may hold their newest state). On shutdown, drain or a fatal stop, pending work is written
//! and the Kafka hint committed synchronously.

pub mod context;
pub mod dead_letters;
pub mod offsets;
pub mod probe;
mod runtime;
pub mod watchdog;

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Instant};

pub use runtime::run;

use crate::{
    config::{ConsumerArgs, KafkaArgs},
    stats::ConsumerFigures,
};

/// A write started by [`Processor::start_write`], run on the runtime's workers.
pub type WriteTask<W> = Pin<Box<dyn Future<Output = anyhow::Result<W>> + Send + 'static>>;

/// One message of a held partition, new to the group (at or beyond its stored offset).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// When the batch of messages it came in was taken from the consumer.
    pub received: Instant,
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

    /// A write committed. Returns the next offsets it stored per partition (for Kafka's hint).
    fn write_done(
        &mut self,
        written: Self::Written,
    ) -> impl Future<Output = anyhow::Result<Vec<(i32, i64)>>>;

    /// Stores a `service_stats` row and logs the statistics line; `runtime` holds the runtime's
    /// own figures for this service.
    fn report(
        &self,
        recorder: &crate::stats::StatsRecorder,
        runtime: &ConsumerFigures,
    ) -> impl Future<Output = ()>;
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
    ) -> Result<Self, crate::ConfigError> {
        let mut client = crate::kafka::consumer_defaults(kafka.client_config()?, group);
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
