//! `consume-rate`: the broker's plain consume rate for a topic: reads every message currently in
//! it (all partitions, from the beginning, by assignment) and does nothing else. The reference the
//! aggregator's wall-clock throughput is compared with in the same run.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    bootstrap_servers: String,
    #[arg(long)]
    topic: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = common::kafka::consumer_config(&args.bootstrap_servers, "consume-rate");
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = ClientConfig::clone(&config).create()?;
    let md = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut highs = std::collections::HashMap::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(&args.topic, p.id(), Offset::Offset(low))?;
            highs.insert(p.id(), high);
            remaining += high - low;
        }
    }
    let total = remaining;
    consumer.assign(&tpl)?;
    let mut started = None;
    while remaining > 0 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                if m.offset() < highs[&m.partition()] {
                    remaining -= 1;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("stalled with {remaining} messages left"),
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let usage = common::figures::process_usage();
    println!(
        "messages={total} seconds={secs:.3} messages_per_second={:.0} cpu_seconds={:.3} peak_rss_mb={:.1}",
        total as f64 / secs,
        usage.cpu_seconds,
        usage.peak_rss_bytes as f64 / 1_048_576.0
    );
    Ok(())
}
