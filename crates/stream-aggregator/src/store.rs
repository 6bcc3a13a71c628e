//! The aggregator's MySQL side: restoring a partition's state, and writing one flush (results,
//! late events, dead letters, duplicate log, state and offsets) in a single transaction.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::{window::WindowResult, Pair};
use serde::{Deserialize, Serialize};
use sqlx::{MySqlConnection, MySqlPool};

use crate::{
    engine::{Emission, PartitionEngine, Snapshot, WindowSpec},
    seen_codec,
};

/// What is stored per partition besides the offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredState {
    pub spec: WindowSpec,
    pub lateness_us: i64,
    pub snapshot: Snapshot,
}

/// A partition as restored from MySQL.
#[derive(Debug)]
pub struct Restored {
    /// The ownership epoch this restore claimed (see `aggregator_owner`).
    pub epoch: i64,
    pub engine: PartitionEngine,
    pub next_offset: Option<i64>,
    pub seen_seq: i64,
    pub unpublished: Vec<String>,
}

/// The stored spec differs from the configured one.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} of group {group} holds state built with a {stored:?} window and {stored_lateness} µs watermark; this run has {configured:?} and {configured_lateness} µs. Use another AGGREGATOR_GROUP (or delete its aggregator_state rows) to change the window.")]
pub struct SpecMismatch {
    pub group: String,
    pub partition: i32,
    pub stored: WindowSpec,
    pub stored_lateness: i64,
    pub configured: WindowSpec,
    pub configured_lateness: i64,
}

pub fn to_datetime(us: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .naive_utc()
}

/// `aggregator_state` columns: next_offset, seen_seq, state, unpublished.
type StateRow = (i64, i64, Vec<u8>, Option<Vec<u8>>);

/// Claims a partition (raising its ownership epoch, which fences every earlier owner's writes)
/// and loads its state and duplicate log, in one transaction; a fresh engine when there is none.
pub async fn restore(
    pool: &MySqlPool,
    group: &str,
    topic: &str,
    partition: i32,
    spec: WindowSpec,
    lateness: i64,
) -> anyhow::Result<Restored> {
    let mut tx = pool.begin().await?;
    // The claim waits for a flush holding the owner row; the locking read below then sees what
    // that flush committed.
    sqlx::query(
        "INSERT INTO aggregator_owner (consumer_group, topic, kafka_partition, epoch, claimed_at) \
         VALUES (?, ?, ?, 1, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE epoch = epoch + 1, claimed_at = VALUES(claimed_at)",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .execute(&mut *tx)
    .await?;
    let (epoch,): (i64,) = sqlx::query_as(
        "SELECT epoch FROM aggregator_owner WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_one(&mut *tx)
    .await?;
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT next_offset, seen_seq, state, unpublished FROM aggregator_state \
         WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((next_offset, seen_seq, state, unpublished)) = row else {
        tx.commit().await?;
        return Ok(Restored {
            epoch,
            engine: PartitionEngine::new(spec, lateness),
            next_offset: None,
            seen_seq: 0,
            unpublished: Vec::new(),
        });
    };
    let stored: StoredState = serde_json::from_slice(&state)?;
    if stored.spec != spec || stored.lateness_us != lateness {
        return Err(SpecMismatch {
            group: group.to_owned(),
            partition,
            stored: stored.spec,
            stored_lateness: stored.lateness_us,
            configured: spec,
            configured_lateness: lateness,
        }
        .into());
    }
    let logs: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT times FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? ORDER BY seq",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut seen: Vec<(Pair, i64)> = Vec::new();
    for (bytes,) in logs {
        seen.extend(seen_codec::decode(&bytes).ok_or_else(|| {
            anyhow::anyhow!("aggregator_seen of partition {partition} is corrupt")
        })?);
    }
    let engine = PartitionEngine::restore(spec, lateness, &stored.snapshot, seen)?;
    let unpublished = match unpublished {
        Some(b) if !b.is_empty() => serde_json::from_slice(&b)?,
        _ => Vec::new(),
    };
    Ok(Restored {
        epoch,
        engine,
        next_offset: Some(next_offset),
        seen_seq,
        unpublished,
    })
}

/// A late (or partly late) event to record.
#[derive(Debug, Clone)]
pub struct LateRow {
    pub offset: i64,
    pub pair: Pair,
    pub rate: f64,
    pub time_us: i64,
    pub watermark_us: i64,
    pub missed: u32,
    pub applied: bool,
}

/// A message that did not parse.
#[derive(Debug, Clone)]
pub struct DeadRow {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Everything one flush writes for one partition.
#[derive(Debug)]
pub struct PartFlush {
    pub partition: i32,
    /// The ownership epoch claimed when the partition was restored.
    pub epoch: i64,
    /// The offset MySQL must still hold (fencing); `None` for a partition never stored.
    pub base_offset: Option<i64>,
    pub next_offset: i64,
    pub state: Vec<u8>,
    pub results: Vec<WindowResult>,
    pub emissions: Vec<Emission>,
    pub late: Vec<LateRow>,
    pub dead: Vec<DeadRow>,
    /// New duplicate-log entry: (seq, max time, bytes).
    pub seen: Option<(i64, i64, Vec<u8>)>,
    pub seen_seq: i64,
    pub seen_horizon: i64,
    /// JSON of the results not yet confirmed published (this flush's and earlier failures).
    pub unpublished: Vec<u8>,
}

/// Outcome of a flush transaction.
#[derive(Debug)]
pub enum FlushOutcome {
    Committed,
    /// Another instance claimed these partitions since we restored them (or their stored offsets
    /// moved under us): nothing was written.
    Fenced(Vec<i32>),
}

/// Writes a flush in one transaction.
pub async fn write_flush(
    pool: &MySqlPool,
    group: &str,
    topic: &str,
    service: &str,
    parts: &[PartFlush],
) -> Result<FlushOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Owner rows first, then state rows: the same lock order as a restore.
    let epochs = per_partition(&mut tx, "epoch", "aggregator_owner", group, topic, parts).await?;
    let stored = per_partition(
        &mut tx,
        "next_offset",
        "aggregator_state",
        group,
        topic,
        parts,
    )
    .await?;
    let fenced: Vec<i32> = parts
        .iter()
        .filter(|p| {
            epochs.get(&p.partition) != Some(&p.epoch)
                || stored.get(&p.partition).copied() != p.base_offset
        })
        .map(|p| p.partition)
        .collect();
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Ok(FlushOutcome::Fenced(fenced));
    }
    let now = Utc::now().naive_utc();
    let results: Vec<&WindowResult> = parts.iter().flat_map(|p| &p.results).collect();
    upsert_results(&mut tx, &results, now).await?;
    for p in parts {
        insert_late(&mut tx, group, topic, p.partition, &p.late).await?;
        for d in &p.dead {
            sqlx::query(
                "INSERT INTO dead_letters (service, topic, kafka_partition, kafka_offset, message_key, payload, error) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id",
            )
            .bind(service)
            .bind(topic)
            .bind(p.partition)
            .bind(d.offset)
            .bind(d.key.as_deref())
            .bind(d.payload.as_slice())
            .bind(d.error.as_str())
            .execute(&mut *tx)
            .await?;
        }
        if let Some((seq, max_time, bytes)) = &p.seen {
            sqlx::query(
                "INSERT INTO aggregator_seen (consumer_group, topic, kafka_partition, seq, max_time_us, times) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(group)
            .bind(topic)
            .bind(p.partition)
            .bind(seq)
            .bind(max_time)
            .bind(bytes.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND max_time_us < ?",
        )
        .bind(group)
        .bind(topic)
        .bind(p.partition)
        .bind(p.seen_horizon)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO aggregator_state (consumer_group, topic, kafka_partition, next_offset, seen_seq, state, unpublished, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), \
             seen_seq = VALUES(seen_seq), state = VALUES(state), unpublished = VALUES(unpublished), updated_at = VALUES(updated_at)",
        )
        .bind(group)
        .bind(topic)
        .bind(p.partition)
        .bind(p.next_offset)
        .bind(p.seen_seq)
        .bind(p.state.as_slice())
        .bind(p.unpublished.as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(FlushOutcome::Committed)
}

/// `column` of `table` for the flushed partitions, read with a row lock.
async fn per_partition(
    conn: &mut MySqlConnection,
    column: &str,
    table: &str,
    group: &str,
    topic: &str,
    parts: &[PartFlush],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let placeholders = vec!["?"; parts.len()].join(",");
    let sql = format!(
        "SELECT kafka_partition, {column} FROM {table} \
         WHERE consumer_group = ? AND topic = ? AND kafka_partition IN ({placeholders}) FOR UPDATE"
    );
    let mut q = sqlx::query_as::<_, (i32, i64)>(&sql)
        .bind(group)
        .bind(topic);
    for p in parts {
        q = q.bind(p.partition);
    }
    Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
}

async fn upsert_results(
    conn: &mut MySqlConnection,
    results: &[&WindowResult],
    now: NaiveDateTime,
) -> Result<(), sqlx::Error> {
    for chunk in results.chunks(1000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO stream_agg (start_time, end_time, asset_id_base, asset_id_quote, update_count, avg_rate, \
             min_rate, max_rate, sum_rate, first_rate, last_rate, last_event_time, is_final, updated_at) VALUES {values} \
             ON DUPLICATE KEY UPDATE update_count = VALUES(update_count), avg_rate = VALUES(avg_rate), \
             min_rate = VALUES(min_rate), max_rate = VALUES(max_rate), sum_rate = VALUES(sum_rate), \
             first_rate = VALUES(first_rate), last_rate = VALUES(last_rate), last_event_time = VALUES(last_event_time), \
             is_final = VALUES(is_final), updated_at = VALUES(updated_at)"
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.window.start.naive_utc())
                .bind(r.window.end.naive_utc())
                .bind(r.base.as_str())
                .bind(r.quote.as_str())
                .bind(r.update_count as i64)
                .bind(r.avg_rate)
                .bind(r.min_rate)
                .bind(r.max_rate)
                .bind(r.sum_rate)
                .bind(r.first_rate)
                .bind(r.last_rate)
                .bind(r.last_event_time.unwrap_or(r.window.start).naive_utc())
                .bind(r.is_final)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_late(
    conn: &mut MySqlConnection,
    group: &str,
    topic: &str,
    partition: i32,
    rows: &[LateRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(1000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, asset_id_base, asset_id_quote, \
             rate, `time`, watermark, windows_missed, applied) VALUES {values} ON DUPLICATE KEY UPDATE id = id"
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(group)
                .bind(topic)
                .bind(partition)
                .bind(r.offset)
                .bind(r.pair.base.as_str())
                .bind(r.pair.quote.as_str())
                .bind(r.rate)
                .bind(to_datetime(r.time_us))
                .bind(to_datetime(r.watermark_us))
                .bind(r.missed)
                .bind(r.applied);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
