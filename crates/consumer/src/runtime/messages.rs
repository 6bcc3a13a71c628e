//! Taking messages: the first of a wake-up and whatever is already fetched, each handed to the
//! processor if it is new to the group; gaps before a message settled with the broker
//! ([`super::super::gaps`]) and seeks that retry, then rejoin.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::{consumer::Consumer, message::BorrowedMessage, Message, Offset};

use super::{GroupConsumer, Runtime};
use crate::{
    gaps::{self, GapAction, GapState},
    metrics as m, Msg, Processor,
};

/// Messages taken per wake-up before checking timers and signals again.
const DRAIN: usize = 4096;
/// How long one seek may wait for the broker.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Seek attempts before the instance rejoins its group instead.
const SEEK_ATTEMPTS: u32 = 3;

impl<P: Processor> Runtime<'_, P> {
    /// The first message of a wake-up, then whatever is already fetched (up to [`DRAIN`]).
    pub(super) async fn on_messages<'c>(
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
        if !self.take(consumer, &first, now)? {
            self.apply_rebalances(consumer).await?;
            self.take(consumer, &first, now)?;
        }
        drop(first);
        let mut stream = consumer.stream();
        // Caught up: everything fetched is taken (not stopped by the drain limit, a due write
        // or an error).
        self.caught_up = false;
        for _ in 0..DRAIN {
            if self.processor.write_due() {
                break;
            }
            match stream.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    if !self.take(consumer, &m, now)? {
                        self.apply_rebalances(consumer).await?;
                        self.take(consumer, &m, now)?;
                    }
                }
                Some(Some(Err(e))) => {
                    self.kafka_error(consumer, &e)?;
                    break;
                }
                _ => {
                    self.caught_up = true;
                    break;
                }
            }
        }
        if consumer.context().pending() {
            self.apply_rebalances(consumer).await?;
        }
        // Adaptive commit: once caught up, what is pending is written at once (one write in
        // flight; what arrives meanwhile goes in the next one, started when it finishes). Under
        // load the fetched messages never run out, and writes are grouped by size and time
        // (the processor's `write_due` and `write_deadline`). The first write after an
        // assignment goes at once too: a restarted instance shows progress as soon as it can.
        if self.caught_up || self.assigned_at.is_some() {
            self.start_write()?;
        }
        Ok(())
    }

    /// Hands a message to the processor if it is new to the group. False when it belongs to a
    /// partition this instance does not hold while rebalances wait: apply them, then call again.
    fn take(
        &mut self,
        consumer: &GroupConsumer,
        m: &BorrowedMessage<'_>,
        now: Instant,
    ) -> anyhow::Result<bool> {
        let (p, o) = (m.partition(), m.offset());
        let Some(part) = self
            .parts
            .get_mut(p as usize)
            .and_then(Option::as_mut)
            .filter(|x| x.held)
        else {
            if consumer.context().pending() {
                return Ok(false);
            }
            self.figures.not_owned += 1;
            return Ok(true);
        };
        part.active_at = now;
        let (action, state) = gaps::decide(part.gap, part.next, o);
        part.gap = state;
        match action {
            GapAction::Apply => {}
            GapAction::AlreadyApplied => {
                // Applied before (Kafka's hint was behind MySQL): skipped. Read through rather
                // than sought past: a seek right after an assignment has stopped fetching on
                // the test broker.
                self.figures.already_applied += 1;
                return Ok(true);
            }
            GapAction::SeekBack { to } => {
                tracing::warn!(topic = %self.target.topic, partition = p, kafka = o, mysql = to, "a message beyond MySQL's next offset (Kafka's group offset is ahead of MySQL's, or the broker lost messages): going back to MySQL's offset");
                self.seek(consumer, p, to)?;
                return Ok(true);
            }
            GapAction::Skip { from, to } => self.skip(p, from, to),
        }
        if let Some(part) = self.part_mut(p) {
            part.next = Some(o + 1);
        }
        self.figures.messages += 1;
        self.processor.handle(Msg {
            partition: p,
            offset: o,
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
            published_ms: m.timestamp().to_millis(),
            received: now,
        });
        Ok(true)
    }

    /// Offsets `from..to` of partition `p` hold no message: the broker, read from `from`,
    /// started at `to`. Passed over with a WARN naming the range, and counted.
    fn skip(&mut self, p: i32, from: i64, to: i64) {
        let topic = self.target.topic.as_str();
        let low = self
            .last_probe
            .as_ref()
            .and_then(|probe| probe.partitions.get(&p))
            .map(|mark| mark.low);
        let why = if low.is_some_and(|low| low >= to) {
            "deleted by retention (the log now starts at the first of them or later)"
        } else {
            "not in the log (removed by retention or compaction, or transaction markers)"
        };
        tracing::warn!(topic, partition = p, first_missing = from, last_missing = to - 1, count = to - from, log_start = ?low, "offsets {from} to {} of partition {p} are {why}: passed over; their messages cannot be applied", to - 1);
        let count = u64::try_from(to - from).unwrap_or_default();
        self.figures.skipped_offsets += count;
        m::SKIPPED_OFFSETS.with_label_values(&[topic]).inc_by(count);
    }

    /// Seeks partition `p` to `to`, retrying; when the seek keeps failing, rejoins the group (the
    /// partition is assigned afresh and read from MySQL's offset). Nothing beyond `to` is applied
    /// before the broker has answered from `to`.
    pub(super) fn seek(&mut self, consumer: &GroupConsumer, p: i32, to: i64) -> anyhow::Result<()> {
        let topic = self.target.topic.clone();
        let mut last_error = None;
        for attempt in 1..=SEEK_ATTEMPTS {
            match consumer.seek(&topic, p, Offset::Offset(to), SEEK_TIMEOUT) {
                Ok(()) => {
                    if let Some(part) = self.part_mut(p) {
                        part.gap = GapState::SoughtBack { to };
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(%topic, partition = p, offset = to, attempt, error = %e, "seeking failed");
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                }
            }
        }
        if let Some(part) = self.part_mut(p) {
            part.gap = gaps::seek_failed();
        }
        tracing::error!(%topic, partition = p, offset = to, error = ?last_error.map(|e| e.to_string()), "seeking kept failing: rejoining the group so that the partition is assigned afresh (nothing beyond the offset is applied)");
        self.rejoin_group(consumer)
    }
}
