//! Publishing window results to the output topic, after the transaction that wrote them
//! committed. Results are also kept in MySQL (the partition's outbox) until their delivery is
//! confirmed, so a crash between the commit and the delivery publishes them again on restore:
//! at least once on the topic, and the update counter's upsert makes repeats harmless.
//!
//! Publishing never holds the consume loop: results are handed to the producer and their
//! deliveries are looked at when the partition's next flush is prepared ([`Deliveries::reap`]).
//! A result whose delivery is not confirmed by then stays in that flush's outbox (without being
//! sent again); one whose delivery failed is sent again after that flush commits.

use std::{sync::Arc, time::Duration};

use common::window::WindowResult;
use futures::FutureExt;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// A result as published: its key and message JSON (also its outbox entry), encoded once.
#[derive(Debug, Clone)]
pub struct Encoded {
    key: Arc<str>,
    json: Arc<str>,
}

impl Encoded {
    pub fn of(r: &WindowResult) -> Self {
        Encoded {
            key: common::Pair {
                base: r.base,
                quote: r.quote,
            }
            .to_string()
            .into(),
            json: r.to_json().into(),
        }
    }

    /// The message JSON.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Results handed to the producer, each with its delivery.
#[derive(Default)]
pub struct Deliveries(Vec<(Encoded, DeliveryFuture)>);

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deliveries({})", self.0.len())
    }
}

impl Deliveries {
    /// The results whose delivery is not confirmed.
    pub fn pending(&self) -> impl Iterator<Item = &Encoded> {
        self.0.iter().map(|(e, _)| e)
    }

    /// Looks at the deliveries without waiting: confirmed ones are dropped, failed ones move to
    /// `failed`, the rest stay.
    pub fn reap(&mut self, failed: &mut Vec<Encoded>) {
        self.0.retain_mut(|(e, delivery)| match delivery.now_or_never() {
            None => true,
            Some(Ok(Ok(_))) => false,
            Some(Ok(Err((error, _)))) => {
                tracing::warn!(%error, "publishing a window result failed; kept for the next flush");
                failed.push(e.clone());
                false
            }
            Some(Err(_)) => {
                tracing::warn!("a window result's delivery report was lost; kept for the next flush");
                failed.push(e.clone());
                false
            }
        });
    }
}

/// The output topic's producer.
pub struct Outbox {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Outbox {
    pub fn new(producer: FutureProducer, topic: &str) -> Self {
        Outbox {
            producer,
            topic: topic.to_owned(),
        }
    }

    /// Waits up to `limit` for every message handed to the producer, whatever partition it came
    /// from (those of a partition revoked meanwhile included); false when some are still queued.
    pub fn flush(&self, limit: Duration) -> bool {
        use rdkafka::producer::Producer;
        self.producer.flush(limit).is_ok()
    }

    /// Hands `items` to the producer (keyed `BASE/QUOTE`) without waiting: each goes to
    /// `delivering`, or to `failed` when the producer's queue refuses it (and every one after it).
    pub fn send(
        &self,
        items: Vec<Encoded>,
        delivering: &mut Deliveries,
        failed: &mut Vec<Encoded>,
    ) {
        let mut items = items.into_iter();
        for e in items.by_ref() {
            let record = FutureRecord::to(&self.topic)
                .key(e.key.as_bytes())
                .payload(e.json.as_bytes());
            match self.producer.send_result(record) {
                Ok(delivery) => delivering.0.push((e, delivery)),
                Err((error, _)) => {
                    tracing::warn!(%error, "enqueueing a window result failed; kept for the next flush");
                    failed.push(e);
                    break;
                }
            }
        }
        failed.extend(items);
    }
}
