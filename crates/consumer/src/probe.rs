//! Where the group stands against the log: MySQL's stored offsets and the broker's watermarks for
//! every partition of the topic, read together (a [`Probe`]). The watchdog, the drained check and
//! the offsets-ahead check all decide from probes.
//!
//! Order matters: MySQL is read first, then the broker. Both only grow, so a stored offset read
//! before the watermark can never look beyond it unless it really is (the log lost messages).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use sqlx::MySqlPool;

use super::{context::GroupEvents, offsets::OffsetStore};
use common::exit::Behind;

/// How long one broker request of a probe may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition as seen by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMark {
    /// MySQL's next offset (`None`: never stored).
    pub stored: Option<i64>,
    /// The broker's log start and high watermark.
    pub low: i64,
    pub high: i64,
}

impl PartitionMark {
    /// Where this group resumes: the stored offset, or the log start when there is none (or
    /// retention removed what it pointed to).
    pub fn resume_at(&self) -> i64 {
        self.stored.unwrap_or(self.low).max(self.low)
    }

    /// Messages in the log not yet applied.
    pub fn lag(&self) -> i64 {
        (self.high - self.resume_at()).max(0)
    }

    /// MySQL's offset is beyond the end of the log.
    pub fn ahead(&self) -> bool {
        self.stored.is_some_and(|s| s > self.high)
    }
}

/// Stored offsets against watermarks for the partitions of a topic, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// When the probe started (its MySQL read).
    pub at: Instant,
    pub partitions: BTreeMap<i32, PartitionMark>,
}

impl Probe {
    /// Builds a probe from its two readings.
    pub fn new(
        at: Instant,
        stored: &BTreeMap<i32, i64>,
        marks: &BTreeMap<i32, (i64, i64)>,
    ) -> Self {
        let partitions = marks
            .iter()
            .map(|(&p, &(low, high))| {
                let mark = PartitionMark {
                    stored: stored.get(&p).copied(),
                    low,
                    high,
                };
                (p, mark)
            })
            .collect();
        Probe { at, partitions }
    }

    /// Total messages not yet applied.
    pub fn lag(&self) -> i64 {
        self.partitions.values().map(PartitionMark::lag).sum()
    }

    /// The partitions with messages not yet applied.
    pub fn behind(&self) -> Vec<Behind> {
        self.partitions
            .iter()
            .filter(|(_, m)| m.lag() > 0)
            .map(|(&partition, m)| Behind {
                partition,
                stored: m.stored,
                high: m.high,
                lag: m.lag(),
            })
            .collect()
    }

    /// Every partition's stored offset is at its high watermark (and the topic has partitions).
    pub fn drained(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.values().all(|m| m.lag() == 0)
    }
}

/// Reads a topic's partitions and watermarks through the consumer's client (librdkafka's calls
/// are thread-safe), on a blocking thread (they wait for the broker), so the consume loop never
/// waits for them.
#[derive(Clone)]
pub struct Broker {
    client: Arc<StreamConsumer<GroupEvents>>,
    topic: Arc<str>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Broker {
    pub fn new(client: Arc<StreamConsumer<GroupEvents>>, topic: &str) -> Self {
        Broker {
            client,
            topic: topic.into(),
        }
    }

    /// `(low, high)` watermarks of `partitions`, or of every partition of the topic.
    pub async fn watermarks(
        &self,
        partitions: Option<Vec<i32>>,
    ) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.watermarks_blocking(partitions))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn watermarks_blocking(
        &self,
        partitions: Option<Vec<i32>>,
    ) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
        let partitions = match partitions {
            Some(ps) => ps,
            None => {
                let md = self
                    .client
                    .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)?;
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect()
            }
        };
        partitions
            .into_iter()
            .map(|p| {
                let marks = self
                    .client
                    .fetch_watermarks(&self.topic, p, BROKER_TIMEOUT)?;
                Ok((p, marks))
            })
            .collect()
    }

    /// A probe of every partition: MySQL first, then the broker (see the module docs).
    pub async fn probe(&self, store: &OffsetStore, pool: &MySqlPool) -> anyhow::Result<Probe> {
        let at = Instant::now();
        let stored = store.load(pool).await?;
        let marks = self.watermarks(None).await?;
        Ok(Probe::new(at, &stored, &marks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_stored_offset_or_the_log_start() {
        let mark = |stored, low, high| PartitionMark { stored, low, high };
        assert_eq!(mark(Some(5), 0, 9).lag(), 4);
        assert_eq!(mark(None, 3, 9).lag(), 6);
        // Retention removed messages below the log start: they cannot be read any more.
        assert_eq!(mark(Some(1), 3, 9).lag(), 6);
        assert_eq!(mark(Some(9), 0, 9).lag(), 0);
        assert!(!mark(Some(9), 0, 9).ahead());
        assert!(mark(Some(12), 0, 9).ahead());
        assert_eq!(mark(Some(12), 0, 9).lag(), 0);
    }

    #[test]
    fn drained_needs_every_partition_at_its_end() {
        let stored = BTreeMap::from([(0, 10), (1, 4)]);
        let marks = BTreeMap::from([(0, (0, 10)), (1, (0, 6)), (2, (0, 0))]);
        let probe = Probe::new(Instant::now(), &stored, &marks);
        assert!(!probe.drained());
        assert_eq!(probe.lag(), 2);
        assert_eq!(
            probe.behind(),
            vec![Behind {
                partition: 1,
                stored: Some(4),
                high: 6,
                lag: 2
            }]
        );
        let stored = BTreeMap::from([(0, 10), (1, 6)]);
        assert!(Probe::new(Instant::now(), &stored, &marks).drained());
        assert!(!Probe::new(Instant::now(), &stored, &BTreeMap::new()).drained());
    }
}
