//! Probes of the log (every second, off the loop): readiness and metrics, the watchdog's
//! rejoin, the drained exit, `--max-wait`, and stored offsets beyond the log while held.

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{CommitMode, Consumer},
    Offset, TopicPartitionList,
};

use super::{Flow, GroupConsumer, Runtime};
use crate::{
    metrics as m,
    probe::Probe,
    watchdog::{Held, Stall, Verdict},
    Processor,
};
use common::exit::Stopped;

/// How long without an answering probe before the instance says it is not ready.
const PROBE_STALE: Duration = Duration::from_secs(5);

impl<P: Processor> Runtime<'_, P> {
    pub(super) fn start_probe(&mut self) {
        if self.probing.is_none() {
            let (broker, store, pool) =
                (self.broker.clone(), self.store.clone(), self.pool.clone());
            self.probing = Some(tokio::spawn(
                async move { broker.probe(&store, &pool).await },
            ));
        }
    }

    pub(super) fn probe_failed(&mut self, e: &anyhow::Error) {
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

    pub(super) async fn on_probe(
        &mut self,
        consumer: &GroupConsumer,
        probe: Probe,
    ) -> anyhow::Result<Flow> {
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
            self.rejoin_group(consumer)?;
        }
        Ok(())
    }

    /// With `--max-wait`: past it and not drained is [`Stopped::NotDrained`].
    pub(super) fn check_max_wait(&self, probe: Option<&Probe>) -> anyhow::Result<()> {
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
        self.rejoin_group(consumer)
    }
}
