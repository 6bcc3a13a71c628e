//! The time of each pair's last update on the topic, read from the topic's tail (not from a side
//! table: the topic is what the consumers read). Every partition's last messages are read, a
//! window that doubles (1,000, 2,000, ... up to [`MAX_WINDOW`] messages per partition) until every
//! pair was seen or the window holds the whole partition.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use common::{config::KafkaArgs, Pair, RateEvent};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

/// The most messages read back per partition.
pub const MAX_WINDOW: i64 = 1_024_000;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The latest event time of each of `pairs` found in the tail of `topic` (pairs not found are
/// absent).
pub fn last_times(
    kafka: &KafkaArgs,
    topic: &str,
    pairs: &[Pair],
) -> anyhow::Result<HashMap<Pair, DateTime<Utc>>> {
    let config =
        common::kafka::consumer_defaults(kafka.client_config()?, "coinstream-producer-tail");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut ranges = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
        if high > low {
            ranges.push((p.id(), low, high));
        }
    }
    let mut last: HashMap<Pair, DateTime<Utc>> = HashMap::new();
    let mut window = 1_000i64;
    loop {
        last.clear();
        let mut whole = true;
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0;
        for &(p, low, high) in &ranges {
            let from = (high - window).max(low);
            whole &= from == low;
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
            remaining += high - from;
        }
        if remaining > 0 {
            consumer.assign(&tpl)?;
            let highs: HashMap<i32, i64> = ranges.iter().map(|&(p, _, h)| (p, h)).collect();
            while remaining > 0 {
                let m = match consumer.poll(TIMEOUT) {
                    Some(m) => m?,
                    None => anyhow::bail!(
                        "reading the tail of {topic} stalled with {remaining} messages left"
                    ),
                };
                if m.offset() >= highs[&m.partition()] {
                    continue;
                }
                remaining -= 1;
                let Some(u) = m.payload().and_then(|b| RateEvent::from_json(b).ok()) else {
                    continue;
                };
                if pairs.contains(&u.pair) {
                    let t = DateTime::from_timestamp_micros(u.time_us).unwrap_or_default();
                    let e = last.entry(u.pair).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        if whole || window >= MAX_WINDOW || pairs.iter().all(|p| last.contains_key(p)) {
            return Ok(last);
        }
        window *= 2;
    }
}
