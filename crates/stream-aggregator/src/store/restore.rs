//! Restoring a partition: claiming it (its ownership epoch) and reading its offset, state,
//! duplicate log and outbox in one transaction.

use common::{
    window::{WindowResult, WindowSpec},
    Pair,
};
use consumer::offsets::OffsetStore;
use sqlx::MySqlPool;

use super::{seen_codec, StoredState};
use crate::{
    engine::{PartitionEngine, Specs},
    outbox::Encoded,
};

/// A partition as restored from MySQL.
#[derive(Debug)]
pub struct Restored {
    /// The ownership epoch this restore claimed (see `aggregator_owner`).
    pub epoch: i64,
    pub engine: PartitionEngine,
    pub next_offset: Option<i64>,
    pub seen_seq: i64,
    /// The duplicate log's entries as (seq, largest time), in sequence order.
    pub seen_entries: Vec<(i64, i64)>,
    /// Results committed before but maybe not published.
    pub unpublished: Vec<Encoded>,
}

/// The stored spec differs from the configured one.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} of group {group} holds state built with windows {} and a {stored_lateness} µs watermark; this run has windows {} and {configured_lateness} µs. Use another AGGREGATOR_GROUP (or delete its aggregator_state rows) to change the windows.", labels(.stored), labels(.configured))]
pub struct SpecMismatch {
    pub group: String,
    pub partition: i32,
    pub stored: Vec<WindowSpec>,
    pub stored_lateness: i64,
    pub configured: Vec<WindowSpec>,
    pub configured_lateness: i64,
}

fn labels(specs: &[WindowSpec]) -> String {
    specs
        .iter()
        .map(WindowSpec::label)
        .collect::<Vec<_>>()
        .join(",")
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
    specs: &Specs,
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
            engine: PartitionEngine::new(specs.clone(), lateness),
            next_offset,
            seen_seq: 0,
            seen_entries: Vec::new(),
            unpublished: Vec::new(),
        });
    };
    let logs: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, max_time_us, times FROM aggregator_seen WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? ORDER BY seq",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let engine = decode_engine(group, partition, &state, &logs, specs, lateness)?;
    Ok(Restored {
        epoch,
        engine,
        next_offset,
        seen_seq,
        seen_entries: logs.iter().map(|(seq, max, _)| (*seq, *max)).collect(),
        unpublished: decode_outbox(unpublished.as_deref())?
            .iter()
            .map(Encoded::of)
            .collect(),
    })
}

/// Rebuilds an engine from its stored state and duplicate log, checking the spec.
fn decode_engine(
    group: &str,
    partition: i32,
    state: &[u8],
    logs: &[(i64, i64, Vec<u8>)],
    specs: &Specs,
    lateness: i64,
) -> anyhow::Result<PartitionEngine> {
    let stored: StoredState = serde_json::from_slice(state)?;
    if stored.specs() != specs.list() || stored.lateness_us != lateness {
        return Err(SpecMismatch {
            group: group.to_owned(),
            partition,
            stored: stored.specs(),
            stored_lateness: stored.lateness_us,
            configured: specs.list().to_vec(),
            configured_lateness: lateness,
        }
        .into());
    }
    let mut seen: Vec<(Pair, i64)> = Vec::new();
    for (_, _, bytes) in logs {
        seen.extend(seen_codec::decode(bytes).ok_or_else(|| {
            anyhow::anyhow!("aggregator_seen of partition {partition} is corrupt")
        })?);
    }
    Ok(PartitionEngine::restore(
        specs.clone(),
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
    // A JSON array of the messages themselves; an outbox written before was an array of the
    // messages as strings.
    let first = bytes.iter().skip(1).find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'"') {
        let messages: Vec<String> = serde_json::from_slice(bytes)?;
        return Ok(messages
            .iter()
            .filter_map(|m| WindowResult::from_json(m.as_bytes()).ok())
            .collect());
    }
    let messages: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes)?;
    Ok(messages
        .iter()
        .filter_map(|m| WindowResult::from_json(m.get().as_bytes()).ok())
        .collect())
}

/// The outbox as a JSON array of the messages (each already JSON: nothing to escape).
pub(super) fn encode_outbox<'a>(results: impl Iterator<Item = &'a Encoded>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (i, r) in results.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.json().as_bytes());
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_round_trips_and_tolerates_absence() {
        let r = WindowResult::from_json(br#"{"window":{"start":"2024-08-05T13:35:00Z","end":"2024-08-05T13:40:00Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":3,"avg_rate":2.0,"min_rate":1.0,"max_rate":3.0,"sum_rate":6.0,"is_final":true}"#).unwrap();
        let bytes = encode_outbox([Encoded::of(&r), Encoded::of(&r)].iter());
        assert_eq!(
            decode_outbox(Some(&bytes)).unwrap(),
            vec![r.clone(), r.clone()]
        );
        assert!(decode_outbox(None).unwrap().is_empty());
        assert!(decode_outbox(Some(b"")).unwrap().is_empty());
        assert!(decode_outbox(Some(b"{")).is_err());
        // An outbox written before: the messages as strings.
        let old = serde_json::to_vec(&vec![r.to_json()]).unwrap();
        assert_eq!(decode_outbox(Some(&old)).unwrap(), vec![r]);
    }
}
