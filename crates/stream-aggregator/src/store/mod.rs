//! The aggregator's MySQL side, and the formats of what it keeps there, both ways: restoring a
//! partition (claiming it, reading its state, duplicate log and outbox) and writing one flush
//! (window rows, late events, dead letters, duplicate log, state, outbox and offsets) in a single
//! transaction.
//!
//! Formats: the state is JSON ([`StoredState`]: the window spec, lateness and the engine's
//! snapshot); the duplicate log is the compact binary of [`seen_codec`]; the outbox (results
//! committed but not confirmed published) is a JSON array of the results' message JSON. Offsets
//! live in `kafka_offsets` ([`OffsetStore`]), like every service's.

mod seen_codec;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use common::{
    consumer::{
        dead_letters::{self, DeadLetter},
        offsets::OffsetStore,
    },
    window::{WindowResult, WindowSpec},
    Pair,
};
use serde::{Deserialize, Serialize};
use sqlx::{MySqlConnection, MySqlPool};

use crate::engine::{PartitionEngine, Snapshot};

/// What is stored per partition besides the offsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredState {
    spec: WindowSpec,
    lateness_us: i64,
    snapshot: Snapshot,
}

/// A partition as restored from MySQL.
#[derive(Debug)]
pub struct Restored {
    /// The ownership epoch this restore claimed (see `aggregator_owner`).
    pub epoch: i64,
    pub engine: PartitionEngine,
    pub next_offset: Option<i64>,
    pub seen_seq: i64,
    /// Results committed before but maybe not published.
    pub unpublished: Vec<WindowResult>,
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

/// `aggregator_state` columns: seen_seq, state, unpublished.
type StateRow = (i64, Vec<u8>, Option<Vec<u8>>);

/// Claims a partition (raising its ownership epoch, which fences every earlier owner's writes)
/// and loads its offset, state and duplicate log, in one transaction; a fresh engine when there
/// is no state.
pub async fn restore(
    pool: &MySqlPool,
    offsets: &OffsetStore,
    partition: i32,
    spec: WindowSpec,
    lateness: i64,
) -> anyhow::Result<Restored> {
    let (group, topic) = (offsets.group(), offsets.topic());
    let mut tx = pool.begin().await?;
    // The claim waits for a flush holding the owner row; the locking reads below then see what
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
    let next_offset = offsets
        .lock(&mut tx, &[partition])
        .await?
        .get(&partition)
        .copied();
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT seen_seq, state, unpublished FROM aggregator_state \
         WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((seen_seq, state, unpublished)) = row else {
        tx.commit().await?;
        return Ok(Restored {
            epoch,
            engine: PartitionEngine::new(spec, lateness),
            next_offset,
            seen_seq: 0,
            unpublished: Vec::new(),
        });
    };
    let logs: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT times FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? ORDER BY seq",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let engine = decode_engine(group, partition, &state, &logs, spec, lateness)?;
    Ok(Restored {
        epoch,
        engine,
        next_offset,
        seen_seq,
        unpublished: decode_outbox(unpublished.as_deref())?,
    })
}

/// Rebuilds an engine from its stored state and duplicate log, checking the spec.
fn decode_engine(
    group: &str,
    partition: i32,
    state: &[u8],
    logs: &[(Vec<u8>,)],
    spec: WindowSpec,
    lateness: i64,
) -> anyhow::Result<PartitionEngine> {
    let stored: StoredState = serde_json::from_slice(state)?;
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
    let mut seen: Vec<(Pair, i64)> = Vec::new();
    for (bytes,) in logs {
        seen.extend(seen_codec::decode(bytes).ok_or_else(|| {
            anyhow::anyhow!("aggregator_seen of partition {partition} is corrupt")
        })?);
    }
    Ok(PartitionEngine::restore(
        spec,
        lateness,
        &stored.snapshot,
        seen,
    )?)
}

/// The outbox: results whose publication was not confirmed.
fn decode_outbox(bytes: Option<&[u8]>) -> anyhow::Result<Vec<WindowResult>> {
    let Some(bytes) = bytes.filter(|b| !b.is_empty()) else {
        return Ok(Vec::new());
    };
    let messages: Vec<String> = serde_json::from_slice(bytes)?;
    Ok(messages
        .iter()
        .filter_map(|m| WindowResult::from_json(m.as_bytes()).ok())
        .collect())
}

fn encode_outbox(results: &[WindowResult]) -> Vec<u8> {
    let messages: Vec<String> = results.iter().map(WindowResult::to_json).collect();
    serde_json::to_vec(&messages).expect("strings always serialize")
}

/// Records the window spec the group runs with, for compare's batch side.
pub async fn record_spec(
    pool: &MySqlPool,
    group: &str,
    config: &crate::Config,
    mode: crate::settings::OutputMode,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stream_agg_spec (consumer_group, window_us, slide_us, watermark_us, mode, updated_at) \
         VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE window_us = VALUES(window_us), \
         slide_us = VALUES(slide_us), watermark_us = VALUES(watermark_us), mode = VALUES(mode), updated_at = VALUES(updated_at)",
    )
    .bind(group)
    .bind(config.spec.size_us)
    .bind(config.spec.slide_us)
    .bind(config.lateness_us)
    .bind(format!("{mode:?}").to_lowercase())
    .execute(pool)
    .await?;
    Ok(())
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

impl LateRow {
    /// The late event at `offset`: `update`, the watermark it missed, the windows it missed and
    /// whether it was applied to the others.
    pub fn of(
        offset: i64,
        update: &common::RateEvent,
        watermark_us: i64,
        missed: u32,
        applied: bool,
    ) -> Self {
        LateRow {
            offset,
            pair: update.pair,
            rate: update.rate,
            time_us: update.time_us,
            watermark_us,
            missed,
            applied,
        }
    }
}

/// Everything one flush writes for one partition.
#[derive(Debug, Clone)]
pub struct PartFlush {
    pub partition: i32,
    /// The ownership epoch claimed when the partition was restored.
    pub epoch: i64,
    /// The offset MySQL must still hold (fencing); `None` for a partition never stored.
    pub base_offset: Option<i64>,
    pub next_offset: i64,
    pub spec: WindowSpec,
    pub lateness_us: i64,
    pub snapshot: Snapshot,
    /// This flush's window results (upserted into `stream_agg`).
    pub results: Vec<WindowResult>,
    pub late: Vec<LateRow>,
    pub dead: Vec<DeadLetter>,
    /// (pair, event time) keys applied since the last flush, for the duplicate log.
    pub new_seen: Vec<(Pair, Vec<i64>)>,
    /// The last duplicate-log entry written.
    pub seen_seq: i64,
    /// Duplicate-log entries older than this are dropped.
    pub seen_horizon: i64,
    /// Results not yet confirmed published: earlier failures and this flush's (the outbox).
    pub unpublished: Vec<WindowResult>,
    /// Dead letters this flush applies (a replay): marked replayed in its transaction.
    pub replayed: Vec<i64>,
}

impl PartFlush {
    /// The last duplicate-log entry once this flush is written.
    pub fn written_seen_seq(&self) -> i64 {
        self.seen_seq + i64::from(!self.new_seen.is_empty())
    }

    fn state(&self) -> anyhow::Result<Vec<u8>> {
        let state = StoredState {
            spec: self.spec,
            lateness_us: self.lateness_us,
            snapshot: self.snapshot.clone(),
        };
        Ok(serde_json::to_vec(&state)?)
    }
}

/// Outcome of a flush transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Written now, or found written by an earlier attempt whose COMMIT reply was lost.
    Committed,
    /// Another instance claimed these partitions since we restored them (or their stored offsets
    /// moved under us): nothing was written.
    Fenced(Vec<i32>),
}

/// Where a partition's flush stands against what MySQL holds, under the row locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// MySQL holds the flush's base: write it.
    Due,
    /// MySQL holds its next offset under our epoch: an earlier attempt committed it (its
    /// COMMIT reply was lost). Nothing to write.
    Written,
    /// Another instance claimed the partition, or its offset moved under us.
    Fenced,
}

/// Compares a flush with the locked epoch and stored offset of its partition.
pub fn standing(f: &PartFlush, epoch: Option<i64>, stored: Option<i64>) -> Standing {
    if epoch != Some(f.epoch) {
        return Standing::Fenced;
    }
    if stored == f.base_offset {
        Standing::Due
    } else if stored == Some(f.next_offset) {
        Standing::Written
    } else {
        Standing::Fenced
    }
}

/// Writes a flush in one transaction. Database errors are `sqlx::Error`s (classified by the
/// caller); anything else (state that cannot be encoded) is not worth retrying.
pub async fn write_flush(
    pool: &MySqlPool,
    offsets: &OffsetStore,
    service: &str,
    parts: &[PartFlush],
) -> anyhow::Result<FlushOutcome> {
    let (group, topic) = (offsets.group(), offsets.topic());
    let partitions: Vec<i32> = parts.iter().map(|p| p.partition).collect();
    let mut tx = pool.begin().await?;
    // Owner rows first, then offsets: the same lock order as a restore.
    let epochs = owner_epochs(&mut tx, group, topic, &partitions).await?;
    let stored = offsets.lock(&mut tx, &partitions).await?;
    let standings: Vec<Standing> = parts
        .iter()
        .map(|p| {
            let s = stored.get(&p.partition).copied();
            standing(p, epochs.get(&p.partition).copied(), s)
        })
        .collect();
    let fenced: Vec<i32> = parts
        .iter()
        .zip(&standings)
        .filter(|(_, s)| **s == Standing::Fenced)
        .map(|(p, _)| p.partition)
        .collect();
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Ok(FlushOutcome::Fenced(fenced));
    }
    let due: Vec<&PartFlush> = parts
        .iter()
        .zip(&standings)
        .filter(|(_, s)| **s == Standing::Due)
        .map(|(p, _)| p)
        .collect();
    if due.is_empty() {
        tx.rollback().await?;
        tracing::info!(partitions = ?partitions, "the flush was found committed by an earlier attempt (its COMMIT reply was lost)");
        return Ok(FlushOutcome::Committed);
    }
    write_parts(&mut tx, offsets, service, &due).await?;
    tx.commit().await?;
    Ok(FlushOutcome::Committed)
}

/// Everything of `parts` in the open transaction: results, late events, dead letters, duplicate
/// log, state and outbox, replayed dead letters marked, offsets.
async fn write_parts(
    tx: &mut MySqlConnection,
    offsets: &OffsetStore,
    service: &str,
    parts: &[&PartFlush],
) -> anyhow::Result<()> {
    let (group, topic) = (offsets.group(), offsets.topic());
    let states: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| p.state())
        .collect::<anyhow::Result<_>>()?;
    let results: Vec<&WindowResult> = parts.iter().flat_map(|p| &p.results).collect();
    upsert_results(&mut *tx, &results).await?;
    for (p, state) in parts.iter().zip(&states) {
        insert_late(&mut *tx, group, topic, p.partition, &p.late).await?;
        let dead: Vec<&DeadLetter> = p.dead.iter().collect();
        dead_letters::insert(&mut *tx, service, group, topic, &dead).await?;
        for &id in &p.replayed {
            dead_letters::mark_replayed(&mut *tx, id).await?;
        }
        write_seen(&mut *tx, group, topic, p).await?;
        sqlx::query(
            "INSERT INTO aggregator_state (consumer_group, topic, kafka_partition, seen_seq, state, unpublished, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE seen_seq = VALUES(seen_seq), \
             state = VALUES(state), unpublished = VALUES(unpublished), updated_at = VALUES(updated_at)",
        )
        .bind(group)
        .bind(topic)
        .bind(p.partition)
        .bind(p.written_seen_seq())
        .bind(state.as_slice())
        .bind(encode_outbox(&p.unpublished))
        .execute(&mut *tx)
        .await?;
    }
    let next: Vec<(i32, i64)> = parts.iter().map(|p| (p.partition, p.next_offset)).collect();
    offsets.store(&mut *tx, &next).await?;
    Ok(())
}

/// Appends this flush's duplicate-log entry and drops entries behind the horizon.
async fn write_seen(
    conn: &mut MySqlConnection,
    group: &str,
    topic: &str,
    p: &PartFlush,
) -> Result<(), sqlx::Error> {
    if !p.new_seen.is_empty() {
        let (bytes, max_time) = seen_codec::encode(&p.new_seen);
        sqlx::query(
            "INSERT INTO aggregator_seen (consumer_group, topic, kafka_partition, seq, max_time_us, times) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(group)
        .bind(topic)
        .bind(p.partition)
        .bind(p.written_seen_seq())
        .bind(max_time)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "DELETE FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND max_time_us < ?",
    )
    .bind(group)
    .bind(topic)
    .bind(p.partition)
    .bind(p.seen_horizon)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The ownership epochs of `partitions`, read with a row lock.
async fn owner_epochs(
    conn: &mut MySqlConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let placeholders = vec!["?"; partitions.len()].join(",");
    let sql = format!(
        "SELECT kafka_partition, epoch FROM aggregator_owner \
         WHERE consumer_group = ? AND topic = ? AND kafka_partition IN ({placeholders}) FOR UPDATE"
    );
    let mut q = sqlx::query_as::<_, (i32, i64)>(&sql)
        .bind(group)
        .bind(topic);
    for p in partitions {
        q = q.bind(*p);
    }
    Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
}

/// Upserts window rows; `updated_at` is the database server's clock (compare reads it against
/// that clock, whatever host the aggregator runs on).
async fn upsert_results(
    conn: &mut MySqlConnection,
    results: &[&WindowResult],
) -> Result<(), sqlx::Error> {
    for chunk in results.chunks(1000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))"; chunk.len()]
            .join(",");
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
                .bind(r.is_final);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(epoch: i64, base: Option<i64>, next: i64) -> PartFlush {
        PartFlush {
            partition: 0,
            epoch,
            base_offset: base,
            next_offset: next,
            spec: WindowSpec::tumbling(10_000_000),
            lateness_us: 0,
            snapshot: PartitionEngine::new(WindowSpec::tumbling(10_000_000), 0).snapshot(),
            results: Vec::new(),
            late: Vec::new(),
            dead: Vec::new(),
            new_seen: Vec::new(),
            seen_seq: 0,
            seen_horizon: 0,
            unpublished: Vec::new(),
            replayed: Vec::new(),
        }
    }

    #[test]
    fn a_retry_finds_its_own_lost_commit_and_never_fences_itself() {
        let f = flush(7, Some(100), 150);
        assert_eq!(standing(&f, Some(7), Some(100)), Standing::Due);
        // The earlier attempt committed; its reply was lost.
        assert_eq!(standing(&f, Some(7), Some(150)), Standing::Written);
        // Another instance claimed the partition: a real fence, whatever the offset.
        assert_eq!(standing(&f, Some(8), Some(100)), Standing::Fenced);
        assert_eq!(standing(&f, Some(8), Some(150)), Standing::Fenced);
        // The offset moved elsewhere under our epoch (reset by the runtime): not ours to write.
        assert_eq!(standing(&f, Some(7), Some(120)), Standing::Fenced);
        // Never stored before: written once the offset exists.
        let first = flush(1, None, 10);
        assert_eq!(standing(&first, Some(1), None), Standing::Due);
        assert_eq!(standing(&first, Some(1), Some(10)), Standing::Written);
        // Nothing new (an idle advance): rewriting is idempotent, so it is simply due.
        let idle = flush(1, Some(10), 10);
        assert_eq!(standing(&idle, Some(1), Some(10)), Standing::Due);
    }

    #[test]
    fn the_outbox_round_trips_and_tolerates_absence() {
        let r = WindowResult::from_json(br#"{"window":{"start":"2024-08-05T13:35:00Z","end":"2024-08-05T13:40:00Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":3,"avg_rate":2.0,"min_rate":1.0,"max_rate":3.0,"sum_rate":6.0,"is_final":true}"#).unwrap();
        let bytes = encode_outbox(&[r.clone(), r.clone()]);
        assert_eq!(decode_outbox(Some(&bytes)).unwrap(), vec![r.clone(), r]);
        assert!(decode_outbox(None).unwrap().is_empty());
        assert!(decode_outbox(Some(b"")).unwrap().is_empty());
        assert!(decode_outbox(Some(b"{")).is_err());
    }
}
