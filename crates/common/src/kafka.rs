//! Kafka helpers: client configurations with safe defaults, and idempotent topic creation.
//!
//! Producers are idempotent with `acks=all` and compressed batches, so a retried send never
//! duplicates and an acknowledged one is on every in-sync replica. Consumers never commit or store
//! offsets on their own: a service commits an offset only after the effect is durable in MySQL.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    ClientConfig,
};

/// Producer defaults: idempotence on, `acks=all`, lz4 compression, small linger for batching.
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        // Bound the local queue (default 1 GB): memory stays small and a fast source simply
        // waits for the broker instead of buffering without limit.
        .set("queue.buffering.max.kbytes", "16384")
        .set("queue.buffering.max.messages", "20000")
        .set("message.timeout.ms", "30000");
    c
}

/// Consumer defaults: no auto commit, no automatic offset store, earliest when the group is new.
pub fn consumer_config(bootstrap_servers: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Bound the prefetch queue (default 64 MB): batches are far smaller, memory stays low.
        // When the queue is full librdkafka pauses fetching for `fetch.queue.backoff.ms`
        // (default 1 s, which throttled a fast consumer to a crawl): resume soon instead.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "20")
        // A fetch that finds nothing new returns after 100 ms instead of 500: brokers that hold a
        // fetch for the whole wait (the test broker pads every fetch to at least half of it)
        // otherwise delay the first messages after an assignment and every live update.
        .set("fetch.wait.max.ms", "100");
    c
}

/// Names of the topics the cluster reports with at least one partition (empty when unreachable).
fn existing_topics(admin: &AdminClient<DefaultClientContext>, timeout: Duration) -> Vec<String> {
    match admin.inner().fetch_metadata(None, timeout) {
        Ok(md) => md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A topic to create when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32, replication: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication,
        }
    }
}

/// Creates the topics that do not exist yet; "already exists" is success. While the broker is not
/// reachable it retries with backoff, for at most `max_wait`.
pub async fn ensure_topics(
    bootstrap_servers: &str,
    topics: &[TopicSpec],
    max_wait: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        // Create only what is missing: asking the cluster first also works with brokers that do
        // not implement CreateTopics (librdkafka's mock cluster).
        let existing = existing_topics(&admin, Duration::from_secs(5));
        let missing: Vec<NewTopic<'_>> = topics
            .iter()
            .filter(|t| !existing.contains(&t.name))
            .map(|t| {
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication),
                )
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let outcome = admin.create_topics(missing.iter(), &opts).await;
        let retryable = match outcome {
            Ok(results) => {
                let mut first_err = None;
                for r in results {
                    match r {
                        Ok(name) => tracing::info!(topic = %name, "created topic"),
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!(topic = %name, "topic exists")
                        }
                        Err((name, code)) => {
                            tracing::warn!(topic = %name, error = %code, "creating topic failed");
                            first_err.get_or_insert(code);
                        }
                    }
                }
                match first_err {
                    None => return Ok(()),
                    Some(code) => KafkaError::AdminOp(code),
                }
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if started.elapsed() + delay > max_wait {
            return Err(retryable);
        }
        tracing::warn!(%bootstrap_servers, error = %retryable, retry_in = ?delay, "Kafka not ready yet");
        tokio::time::sleep(delay).await;
    }
}
