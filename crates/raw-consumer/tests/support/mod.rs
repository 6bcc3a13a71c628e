//! Shared by the raw-consumer's integration tests: deterministic updates, the consumer command,
//! and the exactness check of the table.
#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    process::{Child, Command, Output, Stdio},
};

use chrono::{DateTime, Utc};
use common::{Pair, RateUpdate};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use testkit::{consumer_command, TestDb, TestKafka};

pub const PAIRS: [&str; 6] = [
    "BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "ETH/EUR", "XRP/USD",
];

/// `n` distinct updates (unique pair and time), deterministic for a seed.
pub fn updates(n: usize, seed: u64) -> Vec<RateUpdate> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = DateTime::from_timestamp(1_722_864_000, 0).unwrap();
    (0..n)
        .map(|i| {
            let pair: Pair = PAIRS[i % PAIRS.len()].parse().unwrap();
            let time =
                start + chrono::Duration::microseconds((i / PAIRS.len()) as i64 * 1_000_003 + 7);
            RateUpdate::new(
                time,
                pair,
                rng.random_range(1.0..70_000.0),
                Some(Utc::now()),
            )
            .unwrap()
        })
        .collect()
}

pub fn messages(updates: &[RateUpdate]) -> Vec<(String, Vec<u8>)> {
    updates
        .iter()
        .map(|u| (u.key(), u.to_json().into_bytes()))
        .collect()
}

pub type Key = (String, String, i64, u64);

pub fn key_of(u: &RateUpdate) -> Key {
    (
        u.pair.base.to_string(),
        u.pair.quote.to_string(),
        u.time.timestamp_micros(),
        u.rate.to_bits(),
    )
}

pub async fn table(db: &TestDb) -> (usize, BTreeSet<Key>) {
    let rows: Vec<(String, String, chrono::NaiveDateTime, f64)> =
        sqlx::query_as("SELECT asset_id_base, asset_id_quote, `time`, rate FROM raw_coin_data")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let n = rows.len();
    let set = rows
        .into_iter()
        .map(|(b, q, t, r)| (b, q, t.and_utc().timestamp_micros(), r.to_bits()))
        .collect();
    (n, set)
}

pub fn consumer(
    db: &TestDb,
    kafka: &TestKafka,
    topic: &str,
    group: &str,
    args: &[&str],
) -> Command {
    let mut cmd = consumer_command(env!("CARGO_BIN_EXE_raw-consumer"), db, kafka, topic, group);
    cmd.args(args);
    cmd
}

pub fn finish(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run raw-consumer");
    assert!(
        out.status.success(),
        "raw-consumer failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn raw-consumer")
}

pub async fn assert_exact(db: &TestDb, expected: &[RateUpdate]) {
    let (n, got) = table(db).await;
    let want: BTreeSet<Key> = expected.iter().map(key_of).collect();
    assert_eq!(n, want.len(), "row count: no row missing, none doubled");
    let missing: Vec<_> = want.difference(&got).take(3).collect();
    let extra: Vec<_> = got.difference(&want).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stored values differ: missing {missing:?}, unexpected {extra:?}"
    );
}
