//! Writing one flush: the window rows, late events, dead letters, duplicate log, state and outbox
//! of its partitions and their offsets, in one transaction of the consumers' write protocol
//! (`OffsetTx`), owner rows locked first. A retry that finds its own offsets committed was a
//! COMMIT whose reply was lost ([`Standing::Written`]).

use std::collections::HashMap;

use common::{
    window::{WindowResult, WindowSpec},
    Pair,
};
use consumer::{
    dead_letters::{self, DeadLetter},
    offsets::{OffsetStore, OffsetTx},
};
use sqlx::{MySqlConnection, MySqlPool};

use super::{restore::encode_outbox, seen_codec, to_datetime, StoredState};
use crate::{engine::Snapshot, outbox::Encoded};

/// A late (or partly late) event to record.
#[derive(Debug, Clone)]
pub struct LateRow {
    pub offset: i64,
    /// The spec whose windows it missed (one row per such spec).
    pub spec: WindowSpec,
    pub pair: Pair,
    pub rate: f64,
    pub time_us: i64,
    pub watermark_us: i64,
    pub missed: u32,
    pub applied: bool,
}

impl LateRow {
    /// The late event at `offset`: `update`, the watermark it missed, and of one spec the windows
    /// it missed and whether it was applied to the others.
    pub fn of(
        offset: i64,
        update: &common::RateEvent,
        watermark_us: i64,
        missed: &crate::engine::Missed,
    ) -> Self {
        LateRow {
            offset,
            spec: missed.spec,
            pair: update.pair,
            rate: update.rate,
            time_us: update.time_us,
            watermark_us,
            missed: missed.closed,
            applied: missed.applied(),
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
    pub specs: Vec<WindowSpec>,
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
    /// Duplicate-log entries up to this one are dropped (all behind the engine's horizon).
    pub seen_cut: Option<i64>,
    /// This flush's results as published, encoded by [`write_flush`] (in the background).
    pub encoded: Vec<Encoded>,
    /// Results of earlier flushes not yet confirmed published; with this flush's `encoded`,
    /// the outbox.
    pub unpublished: Vec<Encoded>,
    /// Dead letters this flush applies (a replay): marked replayed in its transaction.
    pub replayed: Vec<i64>,
}

impl PartFlush {
    /// Encodes this flush's results as published (their outbox entries), once.
    fn encode(&mut self) {
        if self.encoded.len() != self.results.len() {
            self.encoded = self.results.iter().map(Encoded::of).collect();
        }
    }

    /// The last duplicate-log entry once this flush is written.
    pub fn written_seen_seq(&self) -> i64 {
        self.seen_seq + i64::from(!self.new_seen.is_empty())
    }

    /// The largest time of this flush's duplicate-log entry (`None`: it writes none).
    pub fn new_seen_max(&self) -> Option<i64> {
        self.new_seen
            .iter()
            .filter_map(|(_, t)| t.last())
            .max()
            .copied()
    }

    fn state(&self) -> anyhow::Result<Vec<u8>> {
        let state = StoredState {
            specs: self.specs.clone(),
            spec: self.specs.first().copied(),
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

/// Writes a flush in one transaction, its results encoded for the outbox first (once: a retry
/// reuses them). Database errors are `sqlx::Error`s (classified by the caller); anything else
/// (state that cannot be encoded) is not worth retrying.
pub async fn write_flush(
    pool: &MySqlPool,
    offsets: &OffsetStore,
    service: &str,
    parts: &mut [PartFlush],
) -> anyhow::Result<FlushOutcome> {
    for p in parts.iter_mut() {
        p.encode();
    }
    let parts = &*parts;
    let (group, topic) = (offsets.group(), offsets.topic());
    let partitions: Vec<i32> = parts.iter().map(|p| p.partition).collect();
    // The consumers' write protocol (`OffsetTx`): owner rows first, then offsets (the same lock
    // order as a restore), write, store offsets, commit.
    let mut tx = OffsetTx::begin(pool, offsets).await?;
    let epochs = owner_epochs(tx.conn(), group, topic, &partitions).await?;
    let stored = tx.lock(&partitions).await?;
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
    write_parts(tx.conn(), offsets, service, &due).await?;
    let next: Vec<(i32, i64)> = due.iter().map(|p| (p.partition, p.next_offset)).collect();
    tx.commit(&next).await?;
    Ok(FlushOutcome::Committed)
}

/// Everything of `parts` but their offsets in the open transaction: results, late events, dead
/// letters, duplicate log, state and outbox, replayed dead letters marked. One statement per
/// table for all partitions where it can be (each round trip is on the path of every update).
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
    upsert_results(&mut *tx, group, &results).await?;
    for p in parts {
        insert_late(&mut *tx, group, topic, p.partition, &p.late).await?;
        let dead: Vec<&DeadLetter> = p.dead.iter().collect();
        dead_letters::insert(&mut *tx, service, group, topic, &dead).await?;
        for &id in &p.replayed {
            dead_letters::mark_replayed(&mut *tx, id).await?;
        }
    }
    write_seen(&mut *tx, group, topic, parts).await?;
    let values = vec!["(?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))"; parts.len()].join(",");
    let sql = format!(
        "INSERT INTO aggregator_state (consumer_group, topic, kafka_partition, seen_seq, state, unpublished, updated_at) \
         VALUES {values} ON DUPLICATE KEY UPDATE seen_seq = VALUES(seen_seq), \
         state = VALUES(state), unpublished = VALUES(unpublished), updated_at = VALUES(updated_at)"
    );
    let mut q = sqlx::query(&sql);
    for (p, state) in parts.iter().zip(&states) {
        q = q
            .bind(group)
            .bind(topic)
            .bind(p.partition)
            .bind(p.written_seen_seq())
            .bind(state.as_slice())
            .bind(encode_outbox(p.unpublished.iter().chain(&p.encoded)));
    }
    q.execute(&mut *tx).await?;
    Ok(())
}

/// Appends each partition's duplicate-log entry of this flush and drops the entries its cut
/// names (by primary key; most flushes have none to drop).
async fn write_seen(
    conn: &mut MySqlConnection,
    group: &str,
    topic: &str,
    parts: &[&PartFlush],
) -> Result<(), sqlx::Error> {
    let logs: Vec<(&PartFlush, (Vec<u8>, i64))> = parts
        .iter()
        .filter(|p| !p.new_seen.is_empty())
        .map(|p| (*p, seen_codec::encode(&p.new_seen)))
        .collect();
    if !logs.is_empty() {
        let values = vec!["(?, ?, ?, ?, ?, ?)"; logs.len()].join(",");
        let sql = format!(
            "INSERT INTO aggregator_seen (consumer_group, topic, kafka_partition, seq, max_time_us, times) VALUES {values} \
             ON DUPLICATE KEY UPDATE max_time_us = VALUES(max_time_us), times = VALUES(times)"
        );
        let mut q = sqlx::query(&sql);
        for (p, (bytes, max_time)) in &logs {
            q = q
                .bind(group)
                .bind(topic)
                .bind(p.partition)
                .bind(p.written_seen_seq())
                .bind(*max_time)
                .bind(bytes.as_slice());
        }
        q.execute(&mut *conn).await?;
    }
    let cuts: Vec<(i32, i64)> = parts
        .iter()
        .filter_map(|p| Some((p.partition, p.seen_cut?)))
        .collect();
    if cuts.is_empty() {
        return Ok(());
    }
    let behind = vec!["(kafka_partition = ? AND seq <= ?)"; cuts.len()].join(" OR ");
    let sql = format!(
        "DELETE FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND ({behind})"
    );
    let mut q = sqlx::query(&sql).bind(group).bind(topic);
    for (p, cut) in cuts {
        q = q.bind(p).bind(cut);
    }
    q.execute(&mut *conn).await?;
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
/// that clock, whatever host the aggregator runs on); `created_at` is set by the first write only.
async fn upsert_results(
    conn: &mut MySqlConnection,
    group: &str,
    results: &[&WindowResult],
) -> Result<(), sqlx::Error> {
    for chunk in results.chunks(1000) {
        let values = vec![
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))";
            chunk.len()
        ]
        .join(",");
        let sql = format!(
            "INSERT INTO stream_agg (consumer_group, window_us, slide_us, start_time, end_time, asset_id_base, asset_id_quote, update_count, avg_rate, \
             min_rate, max_rate, sum_rate, first_rate, last_rate, last_event_time, is_final, revision, updated_at, created_at) VALUES {values} \
             ON DUPLICATE KEY UPDATE update_count = VALUES(update_count), avg_rate = VALUES(avg_rate), \
             min_rate = VALUES(min_rate), max_rate = VALUES(max_rate), sum_rate = VALUES(sum_rate), \
             first_rate = VALUES(first_rate), last_rate = VALUES(last_rate), last_event_time = VALUES(last_event_time), \
             is_final = VALUES(is_final), revision = VALUES(revision), updated_at = VALUES(updated_at)"
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(group)
                .bind(r.spec.size_us)
                .bind(r.spec.slide_us)
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
                .bind(r.revision);
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
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO late_events (consumer_group, topic, kafka_partition, kafka_offset, window_us, slide_us, asset_id_base, asset_id_quote, \
             rate, `time`, watermark, windows_missed, applied) VALUES {values} ON DUPLICATE KEY UPDATE id = id"
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(group)
                .bind(topic)
                .bind(partition)
                .bind(r.offset)
                .bind(r.spec.size_us)
                .bind(r.spec.slide_us)
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
    use crate::engine::{PartitionEngine, Specs};

    fn flush(epoch: i64, base: Option<i64>, next: i64) -> PartFlush {
        PartFlush {
            partition: 0,
            epoch,
            base_offset: base,
            next_offset: next,
            specs: vec![WindowSpec::tumbling(10_000_000)],
            lateness_us: 0,
            snapshot: PartitionEngine::new(Specs::one(WindowSpec::tumbling(10_000_000)), 0)
                .snapshot(),
            results: Vec::new(),
            late: Vec::new(),
            dead: Vec::new(),
            new_seen: Vec::new(),
            seen_seq: 0,
            seen_cut: None,
            encoded: Vec::new(),
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
}
