//! Kafka helpers: client configurations with safe defaults, and idempotent topic creation.
//!
//! Producers are idempotent with `acks=all` and compressed batches, so a retried send never
//! duplicates and an acknowledged one is on every in-sync replica. Consumers never commit or store
//! offsets on their own: a service commits an offset only after the effect is durable in MySQL.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    error::{KafkaError, RDKafkaErrorCode},
    ClientConfig, ClientContext,
};

/// A client configuration with only the brokers (plaintext), for tools and tests.
pub fn plain(bootstrap_servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers);
    c
}

/// Producer defaults over `base` (brokers, security): idempotence on, `acks=all`, lz4
/// compression, a 1 ms linger: an update waits at most 1 ms for others to share its request,
/// and under load batches form anyway behind the requests in flight.
pub fn producer_defaults(mut c: ClientConfig) -> ClientConfig {
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "1")
        // Bound the local queue (default 1 GB): memory stays small and a fast source simply
        // waits for the broker instead of buffering without limit.
        .set("queue.buffering.max.kbytes", "16384")
        .set("queue.buffering.max.messages", "20000")
        .set("message.timeout.ms", "30000");
    c
}

/// Producer defaults for plaintext brokers at `bootstrap_servers`.
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    producer_defaults(plain(bootstrap_servers))
}

/// Consumer defaults over `base`: no auto commit, no automatic offset store, earliest when the
/// group is new.
pub fn consumer_defaults(mut c: ClientConfig, group_id: &str) -> ClientConfig {
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Bound the prefetch queue (default 64 MB): batches are far smaller, memory stays low
        // (raw-consumer at full speed: 4 MB gave a peak RSS of 50.6 MB, 2 MB 39 MB at the same
        // rate; docs/benchmarks.md). When the queue is full librdkafka pauses fetching for
        // `fetch.queue.backoff.ms` (default 1 s, which throttled a fast consumer to a crawl):
        // resume soon instead.
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.queue.backoff.ms", "20")
        // A fetch that finds nothing new returns after 5 ms instead of 500: brokers that hold a
        // fetch for the whole wait (librdkafka's mock cluster; the test broker pads every fetch
        // to at least half of it) otherwise delay every live update by up to the wait (10 ms gave
        // a p99 of 25 ms from receipt to row at 1,000 updates/s, 5 ms 23 ms; 2 ms overloaded the
        // machine at 10,000/s: docs/benchmarks.md). Free under load, where a fetch finds messages
        // and returns at once; idle, a few hundred empty fetches a second.
        .set("fetch.wait.max.ms", "5");
    c
}

/// Consumer defaults for plaintext brokers at `bootstrap_servers`.
pub fn consumer_config(bootstrap_servers: &str, group_id: &str) -> ClientConfig {
    consumer_defaults(plain(bootstrap_servers), group_id)
}

/// Records the first TLS or authentication failure librdkafka reports: waiting cannot fix those.
#[derive(Debug, Default)]
struct SecurityWatch {
    failure: std::sync::Mutex<Option<String>>,
}

impl ClientContext for SecurityWatch {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if message.contains("SSL handshake failed") || message.contains("SASL authentication") {
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert_with(|| message.to_owned());
        }
        tracing::debug!(?level, fac, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // A plaintext broker never answers a TLS handshake: the setup times out in that state.
        let handshake = reason.contains("SSL_HANDSHAKE") || reason.contains("AUTH_HANDSHAKE");
        if handshake
            || matches!(
                code,
                Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)
            )
        {
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert_with(|| format!("{error}: {reason}"));
        } else {
            tracing::debug!(%error, reason, "Kafka client error");
        }
    }
}

impl SecurityWatch {
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// With TLS or SASL configured, a first attempt that failed although the broker accepts TCP
/// connections means the handshake itself did not complete (e.g. TLS to a plaintext listener,
/// which never answers it): a configuration mismatch that waiting does not fix.
fn handshake_stalled(base: &ClientConfig) -> Option<String> {
    let protocol = base.get("security.protocol").unwrap_or("plaintext");
    if protocol == "plaintext" {
        return None;
    }
    let first = base
        .get("bootstrap.servers")?
        .split(',')
        .next()?
        .trim()
        .to_owned();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&first)
        .ok()?
        .next()?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    Some(format!(
        "{first} accepts TCP connections, but no {protocol} session could be set up with it"
    ))
}

/// Why topics could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A TLS handshake or SASL authentication failed (the settings do not fit the broker).
    #[error("{0}")]
    Security(String),
}

/// Names of the topics the cluster reports with at least one partition (empty when unreachable).
fn existing_topics(admin: &AdminClient<SecurityWatch>, timeout: Duration) -> Vec<String> {
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
/// reachable it retries with backoff, for at most `max_wait`; a TLS or authentication failure
/// ends it at once. `base` holds the brokers and the security settings.
pub async fn ensure_topics(
    base: &ClientConfig,
    topics: &[TopicSpec],
    max_wait: Duration,
) -> Result<(), TopicsError> {
    let admin: AdminClient<SecurityWatch> = base.create_with_context(SecurityWatch::default())?;
    let bootstrap_servers = base.get("bootstrap.servers").unwrap_or_default();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        // Create only what is missing: asking the cluster first also works with brokers that do
        // not implement CreateTopics (librdkafka's mock cluster).
        let existing = existing_topics(&admin, Duration::from_secs(5));
        if let Some(failure) = admin.inner().context().failure() {
            return Err(TopicsError::Security(failure));
        }
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
        if let Some(failure) = admin
            .inner()
            .context()
            .failure()
            .or_else(|| handshake_stalled(base))
        {
            return Err(TopicsError::Security(failure));
        }
        let delay = backoff.next_delay();
        if started.elapsed() + delay > max_wait {
            return Err(retryable.into());
        }
        tracing::warn!(%bootstrap_servers, error = %retryable, retry_in = ?delay, "Kafka not ready yet");
        tokio::time::sleep(delay).await;
    }
}
