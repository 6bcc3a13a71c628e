//! Assignments and revocations, as librdkafka reports them and as the runtime decides them
//! (rejoining the group when a partition cannot be applied here).

use std::{collections::BTreeMap, time::Instant};

use rdkafka::consumer::Consumer;

use super::{GroupConsumer, Part, Runtime};
use crate::OnOffsetAhead;
use crate::{context::RebalanceEvent, gaps::GapState, Processor};
use common::{exit::Stopped, retry::retry};

impl<P: Processor> Runtime<'_, P> {
    pub(super) async fn apply_rebalances(
        &mut self,
        consumer: &GroupConsumer,
    ) -> anyhow::Result<()> {
        for event in consumer.context().drain() {
            match event {
                RebalanceEvent::Revoked(ps) => self.revoke(&ps),
                RebalanceEvent::Assigned(ps) => self.assign(consumer, ps).await?,
            }
        }
        Ok(())
    }

    pub(super) fn revoke(&mut self, ps: &[i32]) {
        for &p in ps {
            if let Some(part) = self.part_mut(p) {
                part.held = false;
            }
        }
        self.processor.revoked(ps);
        self.figures.partitions_held = self.held().count();
    }

    /// Leaves and rejoins the group so the coordinator assigns the partitions afresh (each is
    /// then read again from MySQL's offset).
    pub(super) fn rejoin_group(&mut self, consumer: &GroupConsumer) -> anyhow::Result<()> {
        consumer.unsubscribe();
        consumer.subscribe(&[&self.target.topic])?;
        self.figures.rejoins += 1;
        Ok(())
    }

    /// Takes partitions: finishes the write in flight (it may hold their newest state), reads
    /// their stored offsets, checks them against the log, lets the processor prepare them.
    async fn assign(&mut self, consumer: &GroupConsumer, ps: Vec<i32>) -> anyhow::Result<()> {
        let received = Instant::now();
        self.finish_write(consumer, false).await?;
        let (store, pool) = (self.store.clone(), self.pool.clone());
        let (stored, _) = retry("reading stored offsets", Some(&self.health), || async {
            Ok(store.load(&pool).await?)
        })
        .await?;
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
                written: next,
                active_at: now,
                gap: GapState::Clear,
            });
        }
        self.figures.partitions_held = self.held().count();
        self.assigned_at = (!ps.is_empty()).then_some(received);
        tracing::info!(partitions = ?ps, stored_offsets = ?offsets, "partitions ready");
        Ok(())
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
    pub(super) async fn offset_ahead(
        &self,
        p: i32,
        stored: i64,
        low: i64,
        high: i64,
    ) -> anyhow::Result<i64> {
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
        let (store, pool) = (&self.store, &self.pool);
        retry(
            "resetting the stored offset",
            Some(&self.health),
            || async { Ok(store.reset(pool, p, stored, low).await?) },
        )
        .await?;
        Ok(low)
    }
}
