//! Reading one message again from the broker, by partition and offset: for a row the database
//! refused, whose message must be kept whole as a dead letter although the hot path kept only the
//! parsed row (copying every message's bytes for the rare refusal would cost memory and CPU on
//! every message). A consumer of its own, assigned (no group membership, nothing committed), on a
//! blocking thread.

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};

/// How long one attempt may wait for the message.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A message's key and payload as the broker holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub published_ms: Option<i64>,
}

/// Reads messages back from `topic` with the service's client settings.
#[derive(Clone)]
pub struct Fetcher {
    client: ClientConfig,
    topic: String,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Fetcher {
    /// `client`: the service's consumer settings (brokers, security); its group is not joined.
    pub fn new(client: &ClientConfig, topic: &str) -> Self {
        let mut client = client.clone();
        client
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .remove("group.instance.id");
        Fetcher {
            client,
            topic: topic.to_owned(),
        }
    }

    /// The message at `offset` of `partition`.
    pub async fn fetch(&self, partition: i32, offset: i64) -> anyhow::Result<Fetched> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.fetch_blocking(partition, offset)).await?
    }

    fn fetch_blocking(&self, partition: i32, offset: i64) -> anyhow::Result<Fetched> {
        let consumer: BaseConsumer = self.client.create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + FETCH_TIMEOUT;
        while Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m?;
            if m.partition() == partition && m.offset() == offset {
                return Ok(Fetched {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    published_ms: m.timestamp().to_millis(),
                });
            }
            anyhow::ensure!(
                m.offset() < offset,
                "the broker no longer holds offset {offset} of partition {partition} (it returned {})",
                m.offset()
            );
        }
        anyhow::bail!(
            "reading offset {offset} of partition {partition} of {} again took over {FETCH_TIMEOUT:?}",
            self.topic
        )
    }
}
