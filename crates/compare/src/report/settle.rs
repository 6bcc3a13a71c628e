//! Pending: which windows a live pipeline has not settled yet, so that a difference there is no
//! verdict. Everything here is read in the same consistent snapshot as both sides
//! ([`crate::queries::Snapshot`]), and every consumer stores its next offsets in `kafka_offsets`
//! in the transaction that holds its effect: in the snapshot, `raw_coin_data` holds exactly the
//! messages below the raw consumer's offsets (`R_p` per partition `p`, group `RAW_CONSUMER_GROUP`)
//! and `stream_agg` and `late_events` exactly those below the aggregator's (`A_p`, group
//! `AGGREGATOR_GROUP`), on their common topic.
//!
//! **Raw consumer behind** (`R_p < A_p`): the aggregator has applied messages `[R_p, A_p)` that
//! the batch side cannot see. Its watermark on `p` only grows (it is restored with its state) and,
//! when it read such a message, was at least `M_p - watermark`, where `M_p` is the largest event
//! time among the raw rows of `p` (all below `R_p`, so read before by the aggregator too) and
//! `watermark` the one the group recorded for the spec (`stream_agg_specs.watermark_us`; one
//! aggregator group runs several specs on the same offsets, each with its watermark). A message is applied
//! only to windows still open, i.e. ending after the watermark; so windows ending at or before
//! `M_p - watermark` cannot hold one, and are **settled**. Any other window of a pair of `p` that
//! is in the stream but not the batch (extra) or differs is **pending**. A pair's partition is
//! that of its latest raw row (a pair is keyed to one partition); a pair without raw rows (or
//! without partition) may be on any lagging partition, so its windows are settled only up to
//! the smallest such bound. Without a recorded watermark, or with no raw row on `p`, nothing of
//! `p` is settled.
//!
//! **Aggregator behind** (`A_p < R_p`): the batch side holds rows the aggregator has not read. A
//! window they fall in may differ (their window is final: they will be late, and recorded) or be
//! missing from the stream; such a window is pending when it holds a raw row of `p` at an offset
//! at or above `A_p` (looked up by the `(pair, time)` index, for the windows that would fail only,
//! at most [`UNREAD_CHECKS`]).
//!
//! When both groups have not stored offsets on one common topic (e.g. `RAW_CONSUMER_GROUP` is not
//! the raw consumer's group) nothing is pending for this reason: the verdict is strict, and the
//! report says why. Open windows (not final) stay open, matching windows match.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::window::WindowSpec;
use serde::Serialize;
use sqlx::MySqlConnection;

use crate::{
    accuracy::{Key, Status},
    batch::{queries::RecordedSpec, us},
};

/// At most this many windows are looked up for rows the aggregator has not read (the others
/// keep their verdict).
pub const UNREAD_CHECKS: usize = 500;

/// One partition of the raw topic as both groups stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    /// The raw consumer's next offset (0: none stored).
    pub raw_next_offset: i64,
    /// The aggregator's next offset (0: none stored).
    pub aggregator_next_offset: i64,
    /// Raw consumer behind: windows of this partition's pairs ending at or before this time (µs)
    /// are settled; `None`: none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_until_us: Option<i64>,
}

/// What the report says about the rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SettlementInfo {
    /// Whether pending windows were derived from the groups' offsets.
    pub derived: bool,
    pub raw_group: String,
    /// Why not, or what was left unchecked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub partitions: Vec<PartitionProgress>,
}

/// Which windows are not settled (pure once read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    /// Partitions the raw consumer is behind on: windows ending at or before the time are settled.
    raw_behind: BTreeMap<i32, Option<i64>>,
    /// Each pair's partition (its latest raw row's).
    pairs: HashMap<(String, String), i32>,
    /// Partitions the aggregator is behind on, with its next offset.
    aggregator_behind: Vec<(i32, i64)>,
    /// Windows holding raw rows the aggregator has not read.
    unread: BTreeSet<Key>,
    pub info: SettlementInfo,
}

/// A stored offset: group, topic, partition, next offset.
type Offset = (String, String, i32, i64);

/// What the rule is derived from (read in the snapshot).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `(group, topic, partition, next offset)` of both groups.
    pub offsets: Vec<Offset>,
    pub raw_group: String,
    pub aggregator_group: String,
    /// Per pair: base, quote, partition of its latest raw row, its largest event time (µs).
    pub pairs: Vec<(String, String, Option<i32>, i64)>,
    /// `stream_agg_specs.watermark_us` of the aggregator group's spec.
    pub watermark_us: Option<i64>,
    pub raw_empty: bool,
    pub stream_empty: bool,
}

impl Settlement {
    /// Nothing pending for lag: the verdict is strict.
    pub fn strict(raw_group: &str, note: Option<String>) -> Self {
        Settlement {
            info: SettlementInfo {
                raw_group: raw_group.to_owned(),
                note,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The one topic both groups stored offsets of, or why the verdict stays strict (`Err`:
    /// `None` when there is nothing to judge).
    fn topic(i: &Inputs, raw: &[&Offset], agg: &[&Offset]) -> Result<String, Option<String>> {
        let topics =
            |rows: &[&Offset]| -> BTreeSet<String> { rows.iter().map(|o| o.1.clone()).collect() };
        if agg.is_empty() {
            return Err((!i.stream_empty).then(|| {
                format!(
                    "pending not derived: aggregator group {:?} has no stored offsets",
                    i.aggregator_group
                )
            }));
        }
        if raw.is_empty() && !i.raw_empty {
            return Err(Some(format!(
                "pending not derived: raw-consumer group {:?} has no stored offsets \
                 (is RAW_CONSUMER_GROUP the raw consumer's group?)",
                i.raw_group
            )));
        }
        let mut common = topics(agg);
        if !raw.is_empty() {
            common = common.intersection(&topics(raw)).cloned().collect();
        }
        let groups = format!("groups {:?} and {:?}", i.raw_group, i.aggregator_group);
        match common.len() {
            1 => Ok(common.into_iter().next().unwrap_or_default()),
            0 => Err(Some(format!(
                "pending not derived: {groups} stored offsets of no common topic"
            ))),
            _ => Err(Some(format!(
                "pending not derived: {groups} stored offsets of several topics ({})",
                common.into_iter().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The rule from what was read.
    pub fn derive(i: &Inputs) -> Self {
        let (raw, agg): (Vec<&Offset>, Vec<&Offset>) = i
            .offsets
            .iter()
            .filter(|o| o.0 == i.raw_group || o.0 == i.aggregator_group)
            .partition(|o| o.0 == i.raw_group);
        let topic = match Settlement::topic(i, &raw, &agg) {
            Ok(t) => t,
            Err(why) => return Settlement::strict(&i.raw_group, why),
        };
        // Next offsets per partition: (raw consumer's, aggregator's); 0 where none is stored.
        let mut next: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for (rows, raw_side) in [(&raw, true), (&agg, false)] {
            for (_, _, p, o) in rows.iter().filter(|o| o.1 == topic) {
                let e = next.entry(*p).or_default();
                if raw_side {
                    e.0 = *o;
                } else {
                    e.1 = *o;
                }
            }
        }
        let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
        let mut s = Settlement::strict(&i.raw_group, None);
        s.info.derived = true;
        for (b, q, p, max_us) in &i.pairs {
            if let Some(p) = p {
                s.pairs.insert((b.clone(), q.clone()), *p);
                let e = latest.entry(*p).or_insert(*max_us);
                *e = (*e).max(*max_us);
            }
        }
        for (p, (r, a)) in next {
            let mut progress = PartitionProgress {
                topic: topic.clone(),
                partition: p,
                raw_next_offset: r,
                aggregator_next_offset: a,
                settled_until_us: None,
            };
            if r < a {
                let until = latest
                    .get(&p)
                    .zip(i.watermark_us)
                    .map(|(m, w)| m.saturating_sub(w));
                progress.settled_until_us = until;
                s.raw_behind.insert(p, until);
            } else if a < r {
                s.aggregator_behind.push((p, a));
            }
            s.info.partitions.push(progress);
        }
        s
    }

    /// Raw consumer behind on the pair's partition: that partition (`None`: unknown) and the end
    /// up to which its windows are settled (`None`: none). `None` when no lag can touch the pair.
    fn raw_lag(&self, base: &str, quote: &str) -> Option<(Option<i32>, Option<i64>)> {
        if self.raw_behind.is_empty() {
            return None;
        }
        match self.pairs.get(&(base.to_owned(), quote.to_owned())) {
            Some(p) => self.raw_behind.get(p).map(|u| (Some(*p), *u)),
            // Unknown partition: any lagging one; settled up to the smallest bound.
            None => Some((
                None,
                self.raw_behind
                    .values()
                    .try_fold(i64::MAX, |m, u| u.map(|u| m.min(u))),
            )),
        }
    }

    /// Why a window that would otherwise have `status` is pending instead, if it is.
    pub fn pending(&self, key: &Key, end_us: i64, status: Status) -> Option<String> {
        if matches!(status, Status::Extra | Status::Differs) {
            if let Some((p, until)) = self.raw_lag(&key.0, &key.1) {
                if until.is_none_or(|u| end_us > u) {
                    return Some(match p {
                        Some(p) => format!(
                            "not settled: the raw consumer is behind the aggregator on partition {p}"
                        ),
                        None => "not settled: the raw consumer is behind the aggregator \
                                 (and has no row of this pair's partition)"
                            .into(),
                    });
                }
            }
        }
        if matches!(status, Status::Differs | Status::Missing) && self.unread.contains(key) {
            return Some("not settled: the aggregator has not read all of its raw rows yet".into());
        }
        None
    }

    /// Whether some partition's aggregator is behind the raw consumer (windows may hold rows it
    /// has not read).
    pub fn aggregator_behind(&self) -> bool {
        !self.aggregator_behind.is_empty()
    }

    pub fn unread(&self) -> &BTreeSet<Key> {
        &self.unread
    }

    /// Whether `other` decides every window as `self` does (only the offsets shown differ).
    pub fn same_rule(&self, other: &Settlement) -> bool {
        self.raw_behind == other.raw_behind
            && self.pairs == other.pairs
            && self.unread == other.unread
    }

    /// The windows of `base/quote` that a change of the rule from `old` to `self` may move
    /// between pending and a verdict end after the returned time (`None`: none moves). Windows
    /// whose unread mark changed move too ([`Settlement::unread`]).
    pub fn moved_after(&self, old: &Settlement, base: &str, quote: &str) -> Option<i64> {
        let (a, b) = (self.raw_lag(base, quote), old.raw_lag(base, quote));
        if a == b {
            return None;
        }
        let bound = |l: Option<(Option<i32>, Option<i64>)>| match l {
            None => i64::MAX,
            Some((_, u)) => u.unwrap_or(i64::MIN),
        };
        Some(bound(a).min(bound(b)))
    }
}

/// Reads what the rule needs for one spec of the aggregator group (its watermark, whether it has
/// stream rows), in the snapshot `conn`, and derives it.
pub async fn read(
    conn: &mut MySqlConnection,
    raw_group: &str,
    aggregator_group: &str,
    recorded: RecordedSpec,
) -> anyhow::Result<Settlement> {
    let offsets: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT consumer_group, topic, kafka_partition, next_offset FROM kafka_offsets \
         WHERE consumer_group IN (?, ?)",
    )
    .bind(raw_group)
    .bind(aggregator_group)
    .fetch_all(&mut *conn)
    .await?;
    let (stream_empty, raw_empty): (bool, bool) = sqlx::query_as(
        "SELECT NOT EXISTS (SELECT 1 FROM stream_agg WHERE consumer_group = ? AND window_us = ? \
                            AND slide_us = ?), \
                NOT EXISTS (SELECT 1 FROM raw_coin_data)",
    )
    .bind(aggregator_group)
    .bind(recorded.spec.size_us)
    .bind(recorded.spec.slide_us)
    .fetch_one(&mut *conn)
    .await?;
    let watermark_us = Some(recorded.watermark_us);
    let mut inputs = Inputs {
        offsets,
        raw_group: raw_group.to_owned(),
        aggregator_group: aggregator_group.to_owned(),
        pairs: Vec::new(),
        watermark_us,
        raw_empty,
        stream_empty,
    };
    // Only needed when the raw consumer is behind somewhere.
    if !Settlement::derive(&inputs).raw_behind.is_empty() {
        inputs.pairs = pair_partitions(conn).await?;
    }
    Ok(Settlement::derive(&inputs))
}

/// Per pair: the partition of its latest raw row and that row's event time (µs): a loose scan of
/// the pair index, then one index lookup per pair.
async fn pair_partitions(
    conn: &mut MySqlConnection,
) -> anyhow::Result<Vec<(String, String, Option<i32>, i64)>> {
    let pairs: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT asset_id_base, asset_id_quote FROM raw_coin_data")
            .fetch_all(&mut *conn)
            .await?;
    let sql = format!(
        "SELECT kafka_partition, CAST({} AS SIGNED) FROM raw_coin_data \
         WHERE asset_id_base = ? AND asset_id_quote = ? ORDER BY `time` DESC LIMIT 1",
        us("`time`")
    );
    let mut out = Vec::with_capacity(pairs.len());
    for (b, q) in pairs {
        let row: Option<(Option<i32>, i64)> = sqlx::query_as(&sql)
            .bind(&b)
            .bind(&q)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((p, t)) = row {
            out.push((b, q, p, t));
        }
    }
    Ok(out)
}

/// Marks the `candidates` (windows that would differ or be missing) that hold a raw row the
/// aggregator has not read yet, looking up at most [`UNREAD_CHECKS`] of them in the snapshot.
pub async fn check_unread(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    settlement: &mut Settlement,
    candidates: impl IntoIterator<Item = Key>,
) -> anyhow::Result<()> {
    settlement.unread.clear();
    if settlement.aggregator_behind.is_empty() {
        return Ok(());
    }
    let behind =
        vec!["(kafka_partition = ? AND kafka_offset >= ?)"; settlement.aggregator_behind.len()];
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM raw_coin_data WHERE asset_id_base = ? AND asset_id_quote = ? \
         AND `time` >= ? AND `time` < ? AND ({}))",
        behind.join(" OR ")
    );
    let mut left_out = 0usize;
    for (n, key) in candidates.into_iter().enumerate() {
        if n >= UNREAD_CHECKS {
            left_out += 1;
            continue;
        }
        let (Some(from), Some(to)) = (
            chrono::DateTime::from_timestamp_micros(key.2),
            chrono::DateTime::from_timestamp_micros(key.2 + spec.size_us),
        ) else {
            continue;
        };
        let mut q = sqlx::query_scalar::<_, bool>(&sql)
            .bind(&key.0)
            .bind(&key.1)
            .bind(from.naive_utc())
            .bind(to.naive_utc());
        for (p, a) in &settlement.aggregator_behind {
            q = q.bind(*p).bind(*a);
        }
        if q.fetch_one(&mut *conn).await? {
            settlement.unread.insert(key);
        }
    }
    if left_out > 0 {
        settlement.info.note = Some(format!(
            "{left_out} differing windows not checked for rows the aggregator has not read \
             (at most {UNREAD_CHECKS} are)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &str, s: i64) -> Key {
        (b.into(), "USD".into(), s)
    }

    fn inputs(raw: &[(i32, i64)], agg: &[(i32, i64)]) -> Inputs {
        let rows = |g: &str, v: &[(i32, i64)]| {
            v.iter()
                .map(|(p, o)| (g.to_string(), "t".to_string(), *p, *o))
                .collect::<Vec<_>>()
        };
        let mut offsets = rows("raw", raw);
        offsets.extend(rows("agg", agg));
        Inputs {
            offsets,
            raw_group: "raw".into(),
            aggregator_group: "agg".into(),
            // BTC on 0 up to 1000 µs, ETH on 1 up to 500 µs.
            pairs: vec![
                ("BTC".into(), "USD".into(), Some(0), 1000),
                ("ETH".into(), "USD".into(), Some(1), 500),
            ],
            watermark_us: Some(100),
            raw_empty: false,
            stream_empty: false,
        }
    }

    #[test]
    fn raw_behind_makes_windows_after_its_bound_pending() {
        // Partition 0: raw at 10, aggregator at 20. Partition 1: even.
        let s = Settlement::derive(&inputs(&[(0, 10), (1, 5)], &[(0, 20), (1, 5)]));
        assert!(s.info.derived);
        assert_eq!(s.info.partitions[0].settled_until_us, Some(900));
        // Ends at 900: settled, the verdict stands; ends after: pending.
        assert_eq!(s.pending(&key("BTC", 800), 900, Status::Extra), None);
        assert!(s.pending(&key("BTC", 850), 950, Status::Extra).is_some());
        assert!(s.pending(&key("BTC", 850), 950, Status::Differs).is_some());
        // Missing is not explained by the raw side lagging; open and match are kept.
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Missing), None);
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Open), None);
        // Partition 1 is even: strict.
        assert_eq!(s.pending(&key("ETH", 850), 950, Status::Extra), None);
        // A pair the raw side has not seen may be on partition 0: up to its bound.
        assert!(s.pending(&key("SOL", 850), 950, Status::Extra).is_some());
        assert_eq!(s.pending(&key("SOL", 0), 900, Status::Extra), None);
    }

    #[test]
    fn without_a_bound_nothing_of_the_partition_is_settled() {
        let mut i = inputs(&[(0, 10)], &[(0, 20), (2, 7)]);
        i.watermark_us = None;
        let s = Settlement::derive(&i);
        assert!(s.pending(&key("BTC", -1000), -900, Status::Extra).is_some());
        // Partition 2: the raw consumer stored nothing there (offset 0 < 7), and has no row of
        // it: an unknown pair is never settled.
        let i = inputs(&[(0, 20)], &[(0, 20), (2, 7)]);
        let s = Settlement::derive(&i);
        assert_eq!(s.info.partitions[1].raw_next_offset, 0);
        assert!(s.pending(&key("SOL", -1000), -900, Status::Extra).is_some());
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Extra), None);
    }

    #[test]
    fn strict_when_the_groups_cannot_be_matched() {
        // No raw offsets, but raw rows: a wrong RAW_CONSUMER_GROUP.
        let s = Settlement::derive(&inputs(&[], &[(0, 20)]));
        assert!(!s.info.derived);
        assert!(s
            .info
            .note
            .as_deref()
            .unwrap()
            .contains("RAW_CONSUMER_GROUP"));
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Extra), None);
        // No raw offsets and no raw rows: the raw consumer has read nothing yet.
        let mut i = inputs(&[], &[(0, 20)]);
        i.raw_empty = true;
        i.pairs.clear();
        let s = Settlement::derive(&i);
        assert!(s.info.derived);
        assert!(s.pending(&key("BTC", 850), 950, Status::Extra).is_some());
        // Different topics.
        let mut i = inputs(&[(0, 10)], &[(0, 20)]);
        i.offsets[0].1 = "other".into();
        assert!(!Settlement::derive(&i).info.derived);
    }

    #[test]
    fn aggregator_behind_marks_only_checked_windows() {
        let mut s = Settlement::derive(&inputs(&[(0, 30)], &[(0, 20)]));
        assert!(s.aggregator_behind());
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Differs), None);
        s.unread.insert(key("BTC", 850));
        assert!(s.pending(&key("BTC", 850), 950, Status::Differs).is_some());
        assert!(s.pending(&key("BTC", 850), 950, Status::Missing).is_some());
        assert_eq!(s.pending(&key("BTC", 850), 950, Status::Extra), None);
    }

    #[test]
    fn moved_windows_are_those_past_the_smaller_bound() {
        let old = Settlement::derive(&inputs(&[(0, 10)], &[(0, 20)]));
        let mut i = inputs(&[(0, 10)], &[(0, 20)]);
        i.pairs[0].3 = 2000;
        let new = Settlement::derive(&i);
        assert!(!new.same_rule(&old));
        // BTC's bound moved from 900 to 1900: windows ending after 900 may move.
        assert_eq!(new.moved_after(&old, "BTC", "USD"), Some(900));
        assert_eq!(
            new.moved_after(&old, "ETH", "USD"),
            None,
            "ETH is not behind"
        );
        // Caught up: no bound any more, everything after the old one may move.
        let caught_up = Settlement::derive(&inputs(&[(0, 20)], &[(0, 20)]));
        assert_eq!(caught_up.moved_after(&old, "BTC", "USD"), Some(900));
        // Only the offsets moved: the same rule.
        let later = Settlement::derive(&inputs(&[(0, 11)], &[(0, 21)]));
        assert!(later.same_rule(&old) && later != old);
    }
}
