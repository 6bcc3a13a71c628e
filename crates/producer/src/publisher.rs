//! Publishing rate updates to Kafka with every delivery result checked.
//!
//! A [`ThreadedProducer`] (idempotent, `acks=all`) sends in the background; its delivery callback
//! counts successes and keeps failed messages. [`Publisher::check`] re-sends failed messages
//! every half second (librdkafka retries transient errors itself, but not every error a broker
//! returns while it restarts) for up to [`RESEND_WINDOW`] after their first failure; a message
//! still failing then makes the producer stop with an error. Nothing is dropped silently.
//! Downstream consumers deduplicate on (pair, time), so a re-send that the broker had in fact
//! stored is harmless.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{kafka::producer_config, RateUpdate};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::Message,
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    ClientConfig, ClientContext,
};

/// Why publishing failed for good.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("creating the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    #[error("message for key {key} not delivered within {window:?} of re-sends: {error}")]
    Undelivered {
        key: String,
        error: String,
        window: Duration,
    },
    #[error("enqueueing a message: {0}")]
    Enqueue(#[source] KafkaError),
    #[error("{0} message(s) still undelivered at shutdown after {1:?}")]
    FlushTimeout(u64, Duration),
}

/// How long a failed message is re-sent before the producer gives up (and stops).
pub const RESEND_WINDOW: Duration = Duration::from_secs(60);
/// Pause between re-sends of a failed message.
const RESEND_DELAY: Duration = Duration::from_millis(500);

/// A message whose delivery failed, kept to be sent again.
#[derive(Debug)]
struct Failed {
    key: Vec<u8>,
    payload: Vec<u8>,
    first_failed: Instant,
    retry_at: Instant,
    error: String,
}

/// Delivery outcomes, shared between the callback thread and the publisher.
#[derive(Debug, Default)]
pub struct DeliveryFigures {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    /// Deliveries that failed (a re-sent message counts each time).
    pub failures: AtomicU64,
    failed: Mutex<Vec<Failed>>,
    has_failed: AtomicU64,
    /// Whether the idempotent producer has its producer id (seen in librdkafka's statistics).
    pid_assigned: AtomicBool,
    /// The time re-send opaques count from.
    epoch: Option<Instant>,
}

impl DeliveryFigures {
    fn new() -> Self {
        DeliveryFigures {
            epoch: Some(Instant::now()),
            ..DeliveryFigures::default()
        }
    }

    /// The opaque of a message: 0 for a first send, else when it first failed (ms since the
    /// epoch, plus one).
    fn opaque(&self, first_failed: Option<Instant>) -> usize {
        let epoch = self.epoch.unwrap_or_else(Instant::now);
        first_failed.map_or(0, |t| {
            t.saturating_duration_since(epoch).as_millis() as usize + 1
        })
    }

    fn first_failed(&self, opaque: usize, now: Instant) -> Instant {
        match (opaque, self.epoch) {
            (0, _) | (_, None) => now,
            (ms, Some(epoch)) => epoch + Duration::from_millis(ms as u64 - 1),
        }
    }
}

/// The producer context: records each delivery result.
#[derive(Debug, Clone)]
pub struct DeliveryContext(Arc<DeliveryFigures>);

impl ClientContext for DeliveryContext {
    /// Only looks for the idempotent producer's state; the statistics are not otherwise used.
    fn stats_raw(&self, statistics: &[u8]) {
        const ASSIGNED: &[u8] = br#""idemp_state": "Assigned""#;
        if statistics.windows(ASSIGNED.len()).any(|w| w == ASSIGNED) {
            self.0.pid_assigned.store(true, Ordering::Release);
        }
    }
}

impl ProducerContext for DeliveryContext {
    /// When the message first failed (see [`DeliveryFigures::opaque`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, msg)) => {
                self.0.failures.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let failed = Failed {
                    key: msg.key().unwrap_or_default().to_vec(),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    first_failed: self.0.first_failed(opaque, now),
                    retry_at: now + RESEND_DELAY,
                    error: e.to_string(),
                };
                tracing::warn!(key = %String::from_utf8_lossy(&failed.key), error = %e, failing_for = ?now - failed.first_failed, "delivery failed; sending again");
                self.0
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(failed);
                self.0.has_failed.store(1, Ordering::Release);
            }
        }
    }
}

/// How long [`Publisher::with_config`] waits for the idempotent producer's id.
const PID_WAIT: Duration = Duration::from_secs(10);

/// Sends rate updates to one topic.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    stats: Arc<DeliveryFigures>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
    sent: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("sent", &self.sent)
            .finish()
    }
}

impl Publisher {
    /// A publisher with our producer defaults (`common::kafka::producer_config`).
    pub fn new(bootstrap_servers: &str, topic: &str) -> Result<Self, PublishError> {
        Self::with_config(&producer_config(bootstrap_servers), topic)
    }

    /// A publisher with the given client configuration (e.g. `KafkaArgs::producer_config`).
    /// Returns once the topic's metadata is known and, for an idempotent producer, once it has its
    /// producer id, so the first updates are not held (and timed) while the client starts: librdkafka
    /// asks for the id only 500 ms after it starts and holds every message until it has one.
    pub fn with_config(config: &ClientConfig, topic: &str) -> Result<Self, PublishError> {
        let stats = Arc::new(DeliveryFigures::new());
        let mut config = config.clone();
        // The producer id is visible only in the statistics; every 100 ms they cost nothing. A
        // statistics interval set by hand is kept (and waited on only if it is short).
        let wait_for_pid = config.get("enable.idempotence") == Some("true")
            && match config.get("statistics.interval.ms") {
                None => {
                    config.set("statistics.interval.ms", "100");
                    true
                }
                Some(ms) => ms.parse::<u64>().is_ok_and(|ms| (1..=1000).contains(&ms)),
            };
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext(stats.clone()))
            .map_err(PublishError::Create)?;
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(PublishError::Create)?;
        if wait_for_pid {
            let started = Instant::now();
            while !stats.pid_assigned.load(Ordering::Acquire) {
                if started.elapsed() > PID_WAIT {
                    tracing::warn!(waited = ?PID_WAIT, "no producer id yet; sending anyway (librdkafka holds messages until it has one)");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            tracing::debug!(waited = ?started.elapsed(), "idempotent producer ready");
        }
        Ok(Publisher {
            producer,
            topic: topic.to_owned(),
            stats,
            key_buf: Vec::with_capacity(40),
            value_buf: Vec::with_capacity(192),
            sent: 0,
        })
    }

    /// Enqueues one update (keyed `BASE/QUOTE`). Waits while the local queue is full.
    pub fn send(&mut self, update: &RateUpdate) -> Result<(), PublishError> {
        self.key_buf.clear();
        self.value_buf.clear();
        update.write_key(&mut self.key_buf);
        update.write_json(&mut self.value_buf);
        let (key, value) = (
            std::mem::take(&mut self.key_buf),
            std::mem::take(&mut self.value_buf),
        );
        let result = self.enqueue(&key, &value, 0);
        self.key_buf = key;
        self.value_buf = value;
        result?;
        self.sent += 1;
        Ok(())
    }

    fn enqueue(&self, key: &[u8], value: &[u8], opaque: usize) -> Result<(), PublishError> {
        let mut record = BaseRecord::with_opaque_to(&self.topic, opaque)
            .key(key)
            .payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // The background thread is delivering; give it a moment.
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => return Err(PublishError::Enqueue(e)),
            }
        }
    }

    /// Re-sends failed messages whose pause is over; errors for a message that has failed for
    /// longer than [`RESEND_WINDOW`]. Cheap when nothing failed (one atomic load): call it often.
    pub fn check(&self) -> Result<(), PublishError> {
        if self.stats.has_failed.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let due: Vec<Failed> = {
            let mut guard = self.stats.failed.lock().unwrap_or_else(|p| p.into_inner());
            let (due, waiting) = std::mem::take(&mut *guard)
                .into_iter()
                .partition(|f| f.retry_at <= now);
            *guard = waiting;
            self.stats
                .has_failed
                .store(u64::from(!guard.is_empty()), Ordering::Release);
            due
        };
        for f in due {
            if now - f.first_failed > RESEND_WINDOW {
                return Err(PublishError::Undelivered {
                    key: String::from_utf8_lossy(&f.key).into_owned(),
                    error: f.error,
                    window: RESEND_WINDOW,
                });
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            let opaque = self.stats.opaque(Some(f.first_failed));
            self.enqueue(&f.key, &f.payload, opaque)?;
        }
        Ok(())
    }

    /// Waits until every enqueued message is delivered (re-sending failures).
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .producer
                .flush(remaining.min(Duration::from_millis(500)));
            self.check()?;
            let in_flight = self.producer.in_flight_count();
            if in_flight == 0 && self.stats.has_failed.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            if remaining.is_zero() {
                return Err(PublishError::FlushTimeout(in_flight.max(0) as u64, timeout));
            }
        }
    }

    /// Messages enqueued so far (first sends, not re-sends).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Messages the broker acknowledged.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// Messages re-sent after a failed delivery.
    pub fn retried(&self) -> u64 {
        self.stats.retried.load(Ordering::Relaxed)
    }

    /// Failed deliveries so far (each re-sent until it succeeds or its window ends).
    pub fn failed(&self) -> u64 {
        self.stats.failures.load(Ordering::Relaxed)
    }

    /// Failed messages waiting to be re-sent now.
    pub fn failing(&self) -> usize {
        if self.stats.has_failed.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.stats
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
