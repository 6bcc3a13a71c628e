//! Publishing window results to the output topic, after the transaction that wrote them
//! committed. Results are also kept in MySQL (the partition's outbox) until their delivery is
//! confirmed, so a crash between the commit and the delivery publishes them again on restore:
//! at least once on the topic, and the update counter's upsert makes repeats harmless.

use common::window::WindowResult;
use rdkafka::producer::{FutureProducer, FutureRecord};

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

    /// Publishes results (each of its partition) keyed `BASE/QUOTE` and waits for their
    /// delivery; returns those not delivered (kept for the next flush).
    pub async fn publish(&self, results: Vec<(i32, WindowResult)>) -> Vec<(i32, WindowResult)> {
        let mut pending = Vec::with_capacity(results.len());
        let mut results = results.into_iter();
        for (p, r) in results.by_ref() {
            let key = format!("{}/{}", r.base, r.quote);
            let payload = r.to_json();
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((p, r, delivery)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "enqueueing a window result failed; kept for the next flush");
                    let mut failed = vec![(p, r)];
                    failed.extend(results);
                    failed.extend(pending.into_iter().map(|(p, r, _)| (p, r)));
                    return failed;
                }
            }
        }
        let mut failed = Vec::new();
        for (p, r, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, "publishing a window result failed; kept for the next flush");
                    failed.push((p, r));
                }
                Err(_) => failed.push((p, r)),
            }
        }
        failed
    }
}
