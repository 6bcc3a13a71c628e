//! Writes: starting the processor's write, recording a finished one (Kafka's hint, rewinds, lost
//! partitions), and the final writes of a stop.

use rdkafka::{
    consumer::{CommitMode, Consumer},
    Offset, TopicPartitionList,
};

use super::{join, GroupConsumer, Runtime};
use crate::{context::RebalanceEvent, Processor, WriteOutcome};

impl<P: Processor> Runtime<'_, P> {
    pub(super) fn start_write(&mut self) -> anyhow::Result<()> {
        if self.in_flight.is_none() {
            if let Some(task) = self.processor.start_write(self.last_probe.as_ref())? {
                self.in_flight = Some(tokio::spawn(task));
            }
        }
        Ok(())
    }

    pub(super) async fn finish_write(
        &mut self,
        consumer: &GroupConsumer,
        sync: bool,
    ) -> anyhow::Result<()> {
        if self.in_flight.is_some() {
            let written = join(&mut self.in_flight).await?;
            self.write_finished(consumer, written, sync).await?;
        }
        Ok(())
    }

    /// Records a finished write: commits its offsets to Kafka (a hint; MySQL's count), reads
    /// partitions again that the processor rewound, gives up partitions it lost.
    pub(super) async fn write_finished(
        &mut self,
        consumer: &GroupConsumer,
        written: P::Written,
        sync: bool,
    ) -> anyhow::Result<()> {
        let outcome = self.processor.write_done(written).await?;
        self.figures.writes += 1;
        if let Some(at) = self.assigned_at.take() {
            tracing::info!(since_assignment = ?at.elapsed(), "first write after the assignment committed");
        }
        if let Some(first) = self.first_message {
            self.figures.active_seconds = first.elapsed().as_secs_f64();
        }
        self.commit_hint(consumer, &outcome.committed, sync)?;
        self.rewind(consumer, &outcome)?;
        self.give_up(consumer, &outcome.lost)
    }

    fn commit_hint(
        &mut self,
        consumer: &GroupConsumer,
        offsets: &[(i32, i64)],
        sync: bool,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &(p, next) in offsets {
            if let Some(part) = self.part_mut(p).filter(|x| x.held) {
                part.written = Some(next);
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

    /// Partitions the processor wants read again from an offset: their next offset goes back
    /// and the consumer seeks there (retrying, then rejoining).
    fn rewind(&mut self, consumer: &GroupConsumer, outcome: &WriteOutcome) -> anyhow::Result<()> {
        for &(p, to) in &outcome.rewind {
            let Some(part) = self.part_mut(p).filter(|x| x.held) else {
                continue;
            };
            part.next = Some(to);
            part.written = Some(to);
            tracing::info!(topic = %self.target.topic, partition = p, offset = to, "reading the partition again from its stored offset");
            self.seek(consumer, p, to)?;
        }
        Ok(())
    }

    /// Partitions another instance owns now: given up here at once (nothing more of them is
    /// applied), and the group rejoined so the coordinator's view and ours agree again.
    fn give_up(&mut self, consumer: &GroupConsumer, lost: &[i32]) -> anyhow::Result<()> {
        if lost.is_empty() {
            return Ok(());
        }
        tracing::warn!(topic = %self.target.topic, group = %self.target.group, partitions = ?lost, "another instance claimed these partitions: giving them up and rejoining the group");
        self.revoke(lost);
        self.rejoin_group(consumer)
    }

    /// Writes everything pending (revocations applied first) and commits the hint synchronously.
    pub(super) async fn stop(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        self.finish_write(consumer, false).await?;
        for event in consumer.context().drain() {
            if let RebalanceEvent::Revoked(ps) = event {
                self.revoke(&ps);
            }
        }
        self.start_write()?;
        self.finish_write(consumer, true).await
    }
}
