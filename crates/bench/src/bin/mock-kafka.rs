//! `mock-kafka`: runs librdkafka's in-memory mock cluster as a broker for benchmarks.
//!
//! It prints `KAFKA_BOOTSTRAP_SERVERS=<address>` on stdout once ready and serves until killed.
//! The mock does not implement CreateTopics, so topics are created here (`--topic name:partitions`).
//! It keeps nothing across restarts and is not a correctness reference (see `../shared/KAFKA.md`):
//! use it to measure our own processes without the test broker being the bottleneck.

use std::io::Write;

use clap::Parser;
use rdkafka::mocking::MockCluster;

#[derive(Debug, Parser)]
#[command(name = "mock-kafka", about = "librdkafka mock cluster for benchmarks")]
struct Args {
    /// Topic to create, as name:partitions; repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<(String, i32)>,
    /// Number of mock brokers.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
}

fn parse_topic(s: &str) -> Result<(String, i32), String> {
    let (name, parts) = s.split_once(':').unwrap_or((s, "3"));
    let parts: i32 = parts
        .parse()
        .map_err(|_| format!("bad partition count in {s:?}"))?;
    if name.is_empty() || parts < 1 {
        return Err(format!("expected name:partitions, got {s:?}"));
    }
    Ok((name.to_owned(), parts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = MockCluster::new(args.brokers)?;
    for (name, partitions) in &args.topics {
        cluster.create_topic(name, *partitions, 1)?;
    }
    println!("KAFKA_BOOTSTRAP_SERVERS={}", cluster.bootstrap_servers());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
