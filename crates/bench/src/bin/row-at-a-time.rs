//! `row-at-a-time`: the original project's ingestion method, as a benchmark baseline: consume a
//! message, INSERT one row, COMMIT, repeat. Prints rows per second over `--count` messages.
//! Uses the same parsing, table and broker as raw-consumer so only the write method differs.

use std::time::Instant;

use clap::Parser;
use common::{kafka::consumer_config, RateUpdate};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message,
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    bootstrap_servers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// mysql:// URL of a migrated database.
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 20_000)]
    count: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = sqlx::MySqlPool::connect(&args.database_url).await?;
    common::db::migrate(&pool, "bench").await?;
    let consumer: StreamConsumer =
        consumer_config(&args.bootstrap_servers, &args.group).create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut n = 0u64;
    let mut started = None;
    while n < args.count {
        let msg = consumer.recv().await?;
        let u = RateUpdate::from_json(msg.payload().unwrap_or_default())?;
        started.get_or_insert_with(Instant::now);
        // Autocommit: one statement, one transaction, one flush to disk, as the original did.
        sqlx::query("INSERT INTO raw_coin_data (asset_id_base, asset_id_quote, rate, `time`) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id")
            .bind(u.pair.base.as_str())
            .bind(u.pair.quote.as_str())
            .bind(u.rate)
            .bind(u.time.naive_utc())
            .execute(&pool)
            .await?;
        n += 1;
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "rows={n} seconds={secs:.2} rows_per_second={:.0}",
        n as f64 / secs
    );
    Ok(())
}
