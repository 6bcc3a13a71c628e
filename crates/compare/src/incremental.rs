//! The one-shot compare's batch side, incrementally. A run over every window stores its batch
//! windows (`compare_batch_windows`) and a mark: the `raw_coin_data` and `late_events` ids it had
//! read up to, when, and a fingerprint of the row at each (`compare_batch_marks`), per aggregator
//! group and window spec. The next such run recomputes only the windows over slide buckets that
//! rows above an earlier mark fall in (found by a range scan of the ids), by range scans of the
//! covering index; the other windows come from the table.
//!
//! Ids are taken in one order and committed in another (the raw consumer's batches, several
//! instances), so a run reads again from the mark taken [`REREAD_MARGIN`] before the previous run:
//! a transaction that had taken its ids by then had committed when the previous run started or
//! is read now (until runs that far apart exist, the last [`REREAD_IDS`] ids are read again).
//!
//! A run recomputes everything, and stores it afresh, when there is no mark yet, when the ids went
//! backwards or the row at a marked id changed (the tables were emptied or recreated), when most
//! rows are new anyway, or with `--full` (needed after rows were deleted). A run narrowed by
//! `--pair`/`--since`/`--until` computes its scope directly and leaves the stored windows alone.
//! Runs are serialized by an advisory lock; one that finds it held computes directly too, and one
//! that lost it (its connection dropped) does not store what it computed. A run reads everything
//! (the ids, the rows, the stored windows, and in a one-shot compare the rest of its report) in
//! one consistent snapshot begun once it holds the lock, and stores the recomputed windows and
//! its mark afterwards, in one transaction: the mark is the snapshot's ids and the database's
//! clock as the snapshot began.

use std::{collections::BTreeMap, collections::BTreeSet, time::Instant};

use chrono::NaiveDateTime;
use common::window::WindowSpec;
use serde::Serialize;
use sqlx::{pool::PoolConnection, Acquire, Connection, MySql, MySqlConnection, MySqlPool};

use crate::{
    accuracy::{Agg, Key},
    batch::{self, Batch, Scope, REREAD_IDS, REREAD_MARGIN},
    queries::Snapshot,
};

/// The advisory lock's name (SQL, the group bound): at most 64 characters (MySQL), so the
/// database and group are hashed.
pub const LOCK_NAME_SQL: &str = "CONCAT('coinstream_compare_', SHA1(CONCAT(DATABASE(), '/', ?)))";

/// How this run's batch side was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum BatchMode {
    /// Every window in scope recomputed.
    Full,
    /// Only windows over new rows recomputed; the rest read from the last run's.
    Incremental { recomputed: usize, stored: usize },
}

/// `raw_coin_data` and `late_events` ids: the high-water marks of a computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    raw: i64,
    late: i64,
}

/// The ids a run had read up to, when (database time), and what the rows at those ids were.
#[derive(Debug, sqlx::FromRow)]
struct Mark {
    taken_at: NaiveDateTime,
    raw_id: i64,
    late_id: i64,
    raw_fp: Option<String>,
    late_fp: Option<String>,
}

impl Mark {
    fn ids(&self) -> Ids {
        Ids {
            raw: self.raw_id,
            late: self.late_id,
        }
    }
}

/// Where a run after the marks `newest_first` reads again from: the newest mark taken at least
/// `margin` before the last one, else the last one less `REREAD_IDS` (no marks: from the start).
fn reread_from(newest_first: &[Mark], margin: chrono::Duration) -> Ids {
    let Some(last) = newest_first.first() else {
        return Ids { raw: 0, late: 0 };
    };
    match newest_first
        .iter()
        .find(|m| m.taken_at <= last.taken_at - margin)
    {
        Some(m) => m.ids(),
        None => Ids {
            raw: (last.raw_id - REREAD_IDS).max(0),
            late: (last.late_id - REREAD_IDS).max(0),
        },
    }
}

/// The marks older than this are no longer needed once `now` is stored: the next run reads
/// again from the newest mark taken `margin` before `now`, or a newer one.
fn prune_before(
    newest_first: &[Mark],
    now: NaiveDateTime,
    margin: chrono::Duration,
) -> Option<NaiveDateTime> {
    newest_first
        .iter()
        .map(|m| m.taken_at)
        .find(|t| *t <= now - margin)
}

/// The batch side of `scope` for aggregator group `group`, incremental where it can be, in a
/// snapshot of its own, and stored for the next run (a one-shot compare reads the rest of its
/// report in the same snapshot instead: [`Lock`], [`batch_in`], [`store`]).
pub async fn batch(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    scope: &Scope,
    full: bool,
) -> anyhow::Result<(Batch, BatchMode)> {
    let lock = if *scope == Scope::default() {
        Lock::try_acquire(pool, group).await?
    } else {
        None
    };
    let result = async {
        let mut snapshot = Snapshot::begin(pool).await?;
        let (b, mode, update) =
            batch_in(snapshot.conn(), spec, group, scope, full, lock.as_ref()).await?;
        snapshot.end().await?;
        if let (Some(lock), Some(update)) = (&lock, update) {
            store(pool, spec, lock, update).await?;
        }
        anyhow::Ok((b, mode))
    }
    .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

/// The advisory lock over a group's stored batch side, held by a connection of its own (outside
/// the pool the work uses: a pool of one would otherwise wait on itself).
#[derive(Debug)]
pub struct Lock {
    conn: MySqlConnection,
    group: String,
    holder: i64,
}

impl Lock {
    /// The lock of `group` if no other run holds it (`None`: this run computes directly).
    pub async fn try_acquire(pool: &MySqlPool, group: &str) -> anyhow::Result<Option<Lock>> {
        let mut conn = MySqlConnection::connect_with(&pool.connect_options()).await?;
        let (locked, holder): (Option<i64>, i64) = sqlx::query_as(&format!(
            "SELECT GET_LOCK({LOCK_NAME_SQL}, 0), CAST(CONNECTION_ID() AS SIGNED)"
        ))
        .bind(group)
        .fetch_one(&mut conn)
        .await?;
        if locked != Some(1) {
            tracing::info!(
                "another compare is updating the stored batch side: computing this run's directly"
            );
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Lock {
            conn,
            group: group.to_owned(),
            holder,
        }))
    }

    pub async fn release(mut self) {
        let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({LOCK_NAME_SQL})"))
            .bind(&self.group)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }

    /// Fails unless the lock is still held (its connection may have dropped meanwhile).
    async fn check(&self, conn: &mut MySqlConnection) -> anyhow::Result<()> {
        let holder: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CAST(IS_USED_LOCK({LOCK_NAME_SQL}) AS SIGNED)"
        ))
        .bind(&self.group)
        .fetch_one(&mut *conn)
        .await?;
        anyhow::ensure!(
            holder == Some(self.holder),
            "compare's lock on the stored batch side was lost (its connection dropped): not storing"
        );
        Ok(())
    }
}

/// What a run stores once its snapshot is read: the windows it recomputed over `ranges` (every
/// window when `None`), its mark, and which marks to drop.
#[derive(Debug)]
pub struct Update {
    ranges: Option<Vec<Scope>>,
    windows: BTreeMap<Key, Agg>,
    mark: Mark,
    prune: Option<NaiveDateTime>,
}

/// The batch side of `scope`, every read in the snapshot `conn` (begun after `lock` was taken,
/// so that it sees what the previous run stored). With the lock and no narrowing it is
/// incremental and says what to [`store`]; otherwise it is computed directly.
pub async fn batch_in(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    scope: &Scope,
    full: bool,
    lock: Option<&Lock>,
) -> anyhow::Result<(Batch, BatchMode, Option<Update>)> {
    if *scope != Scope::default() || lock.is_none() {
        let b = batch::compute(conn, spec, group, scope).await?;
        return Ok((b, BatchMode::Full, None));
    }
    let started = Instant::now();
    // Read first: rows committed after the snapshot are above it, read next time.
    let (now, min_raw) = high_water(conn).await?;
    let marks = marks(conn, spec, group).await?;
    let consistent = match marks.first() {
        Some(last) => consistent(conn, last, &now).await?,
        None => false,
    };
    let margin = chrono::Duration::from_std(REREAD_MARGIN)?;
    // Marks of the same rows stay, whatever this run does: the next one reads again from them.
    // Marks of other rows (the tables emptied) all go.
    let prune = if consistent {
        prune_before(&marks, now.taken_at, margin)
    } else {
        Some(now.taken_at)
    };
    // Most rows new anyway: recomputing everything is cheaper.
    let most_new =
        (now.raw_id - marks.first().map_or(0, |m| m.raw_id)) > (now.raw_id - min_raw) / 2;
    if full || !consistent || most_new {
        let b = batch::compute(conn, spec, group, &Scope::default()).await?;
        let update = Update {
            ranges: None,
            windows: b.windows.clone(),
            mark: now,
            prune,
        };
        return Ok((b, BatchMode::Full, Some(update)));
    }
    let dirty = dirty_buckets(conn, spec, group, reread_from(&marks, margin)).await?;
    let ranges = batch::dirty_ranges(spec, &Scope::default(), &dirty);
    // The last run's windows, as stored (visible to this snapshot: stored under the lock).
    let mut windows = stored(conn, spec, group).await?;
    let mut recomputed = BTreeMap::new();
    let mut raw_rows = 0;
    for range in &ranges {
        let b = batch::compute(conn, spec, group, range).await?;
        raw_rows += b.raw_rows;
        recomputed.extend(b.windows);
    }
    for range in &ranges {
        for key in keys_in(&windows, range) {
            windows.remove(&key);
        }
    }
    let n = recomputed.len();
    windows.extend(recomputed.iter().map(|(k, a)| (k.clone(), *a)));
    let mode = BatchMode::Incremental {
        recomputed: n,
        stored: windows.len() - n.min(windows.len()),
    };
    let b = Batch {
        windows,
        seconds: started.elapsed().as_secs_f64(),
        raw_rows,
    };
    let update = Update {
        ranges: Some(ranges),
        windows: recomputed,
        mark: now,
        prune,
    };
    Ok((b, mode, Some(update)))
}

/// The keys of `windows` in a recomputed range (one pair, `[since, until)`).
fn keys_in(windows: &BTreeMap<Key, Agg>, range: &Scope) -> Vec<Key> {
    let (Some(pair), Some(since), Some(until)) = (range.pair, range.since, range.until) else {
        return Vec::new();
    };
    let (b, q) = (pair.base.to_string(), pair.quote.to_string());
    let from = (b.clone(), q.clone(), since.timestamp_micros());
    let to = (b, q, until.timestamp_micros());
    windows.range(from..to).map(|(k, _)| k.clone()).collect()
}

/// Stores what [`batch_in`] computed, if `lock` is still held: the recomputed windows replace
/// those of their ranges (or all), and the mark is added, in one transaction.
pub async fn store(
    pool: &MySqlPool,
    spec: WindowSpec,
    lock: &Lock,
    update: Update,
) -> anyhow::Result<()> {
    let group = lock.group.as_str();
    let mut conn: PoolConnection<MySql> = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    match &update.ranges {
        None => {
            sqlx::query(
                "DELETE FROM compare_batch_windows WHERE consumer_group = ? AND window_us = ? AND slide_us = ?",
            )
            .bind(group)
            .bind(spec.size_us)
            .bind(spec.slide_us)
            .execute(&mut *tx)
            .await?;
        }
        Some(ranges) => delete_ranges(&mut tx, spec, group, ranges).await?,
    }
    let all: Vec<_> = update.windows.iter().collect();
    insert(&mut tx, spec, group, &all).await?;
    add_mark(&mut tx, spec, group, &update.mark, update.prune).await?;
    lock.check(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether the stored windows and marks are of the rows there now: the ids have not gone
/// backwards and the rows at the last mark's ids are the ones it saw.
async fn consistent(conn: &mut MySqlConnection, last: &Mark, now: &Mark) -> anyhow::Result<bool> {
    if last.raw_id > now.raw_id || last.late_id > now.late_id {
        return Ok(false);
    }
    let (raw_fp, late_fp) = fingerprints(conn, last.ids()).await?;
    Ok(raw_fp == last.raw_fp && late_fp == last.late_fp)
}

/// The mark now (the snapshot's: its ids, and the database's clock as it began), and the lowest
/// raw id (how many rows there are, near enough).
async fn high_water(conn: &mut MySqlConnection) -> anyhow::Result<(Mark, i64)> {
    let (raw, late, min_raw, taken_at): (Option<i64>, Option<i64>, Option<i64>, NaiveDateTime) =
        sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM raw_coin_data), (SELECT MAX(id) FROM late_events), \
                    (SELECT MIN(id) FROM raw_coin_data), UTC_TIMESTAMP(6)",
        )
        .fetch_one(&mut *conn)
        .await?;
    let ids = Ids {
        raw: raw.unwrap_or(0),
        late: late.unwrap_or(0),
    };
    let (raw_fp, late_fp) = fingerprints(conn, ids).await?;
    let mark = Mark {
        taken_at,
        raw_id: ids.raw,
        late_id: ids.late,
        raw_fp,
        late_fp,
    };
    Ok((mark, min_raw.unwrap_or(0)))
}

/// What the rows at these ids are (hashed): a table emptied and refilled has other rows there.
async fn fingerprints(
    conn: &mut MySqlConnection,
    ids: Ids,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let fp: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT SHA1(CONCAT_WS('|', asset_id_base, asset_id_quote, `time`, rate, ingested_at)) \
                 FROM raw_coin_data WHERE id = ?), \
                (SELECT SHA1(CONCAT_WS('|', consumer_group, asset_id_base, asset_id_quote, `time`, recorded_at)) \
                 FROM late_events WHERE id = ?)",
    )
    .bind(ids.raw)
    .bind(ids.late)
    .fetch_one(conn)
    .await?;
    Ok(fp)
}

/// The group's marks for the spec, newest first (a few: older ones are pruned).
async fn marks(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
) -> anyhow::Result<Vec<Mark>> {
    Ok(sqlx::query_as(
        "SELECT taken_at, raw_id, late_id, raw_fp, late_fp FROM compare_batch_marks \
         WHERE consumer_group = ? AND window_us = ? AND slide_us = ? ORDER BY taken_at DESC",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_all(conn)
    .await?)
}

/// Slide buckets of the raw rows and the group's late events above `from`: one range scan of
/// each primary key.
async fn dirty_buckets(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    from: Ids,
) -> anyhow::Result<BTreeSet<Key>> {
    let bucket = batch::bucket_sql(spec);
    let raw: Vec<Key> = sqlx::query_as(&format!(
        "SELECT DISTINCT asset_id_base, asset_id_quote, {bucket} FROM raw_coin_data r WHERE id > ?"
    ))
    .bind(from.raw)
    .fetch_all(&mut *conn)
    .await?;
    let late: Vec<Key> = sqlx::query_as(&format!(
        "SELECT DISTINCT asset_id_base, asset_id_quote, {bucket} FROM late_events r \
         WHERE id > ? AND consumer_group = ?"
    ))
    .bind(from.late)
    .bind(group)
    .fetch_all(&mut *conn)
    .await?;
    Ok(raw.into_iter().chain(late).collect())
}

/// The stored windows of the group and spec.
async fn stored(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
) -> anyhow::Result<BTreeMap<Key, Agg>> {
    let rows: Vec<(String, String, i64, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT asset_id_base, asset_id_quote, start_us, update_count, sum_rate, min_rate, max_rate \
         FROM compare_batch_windows WHERE consumer_group = ? AND window_us = ? AND slide_us = ?",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(b, q, s, count, sum, min, max)| {
            let agg = batch::Partial {
                count,
                sum,
                min,
                max,
            }
            .agg();
            ((b, q, s), agg)
        })
        .collect())
}

/// Deletes the stored windows of each recomputed range.
async fn delete_ranges(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    ranges: &[Scope],
) -> anyhow::Result<()> {
    for range in ranges {
        let (Some(pair), Some(since), Some(until)) = (range.pair, range.since, range.until) else {
            anyhow::bail!("a recomputed range without pair and bounds: {range:?}");
        };
        sqlx::query(
            "DELETE FROM compare_batch_windows WHERE consumer_group = ? AND window_us = ? AND slide_us = ? \
             AND asset_id_base = ? AND asset_id_quote = ? AND start_us >= ? AND start_us < ?",
        )
        .bind(group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(pair.base.as_str())
        .bind(pair.quote.as_str())
        .bind(since.timestamp_micros())
        .bind(until.timestamp_micros())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    windows: &[(&Key, &Agg)],
) -> anyhow::Result<()> {
    for chunk in windows.chunks(1000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO compare_batch_windows (consumer_group, window_us, slide_us, asset_id_base, \
             asset_id_quote, start_us, update_count, sum_rate, min_rate, max_rate) VALUES {values}"
        );
        let mut q = sqlx::query(&sql);
        for ((b, qt, s), a) in chunk {
            q = q
                .bind(group)
                .bind(spec.size_us)
                .bind(spec.slide_us)
                .bind(b.as_str())
                .bind(qt.as_str())
                .bind(*s)
                .bind(a.count)
                .bind(a.sum)
                .bind(a.min)
                .bind(a.max);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Stores the mark `now`, and drops the marks taken before `prune`.
async fn add_mark(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    now: &Mark,
    prune: Option<NaiveDateTime>,
) -> anyhow::Result<()> {
    if let Some(before) = prune {
        sqlx::query(
            "DELETE FROM compare_batch_marks WHERE consumer_group = ? AND window_us = ? \
             AND slide_us = ? AND taken_at < ?",
        )
        .bind(group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(before)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO compare_batch_marks (consumer_group, window_us, slide_us, taken_at, raw_id, \
         late_id, raw_fp, late_fp) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE raw_id = VALUES(raw_id), late_id = VALUES(late_id), \
         raw_fp = VALUES(raw_fp), late_fp = VALUES(late_fp)",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(now.taken_at)
    .bind(now.raw_id)
    .bind(now.late_id)
    .bind(now.raw_fp.as_deref())
    .bind(now.late_fp.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(secs: i64, raw_id: i64) -> Mark {
        Mark {
            taken_at: chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0)
                .unwrap()
                .naive_utc(),
            raw_id,
            late_id: raw_id / 10,
            raw_fp: None,
            late_fp: None,
        }
    }

    #[test]
    fn reads_again_from_the_mark_a_margin_before_the_last_run() {
        let margin = chrono::Duration::seconds(10);
        // Runs at 0, 5, 12 and 14 s: the last at 14, so the newest mark at or before 4 s.
        let marks = [
            mark(14, 900_000),
            mark(12, 800_000),
            mark(5, 500_000),
            mark(0, 100_000),
        ];
        assert_eq!(reread_from(&marks, margin), mark(0, 100_000).ids());
        // However many ids lie between (no cap: a transaction open then may commit now).
        let marks = [mark(30, 5_000_000), mark(20, 100_000)];
        assert_eq!(reread_from(&marks, margin), mark(20, 100_000).ids());
        // No mark that old: the last one less REREAD_IDS, not below 0.
        let marks = [mark(3, 900_000), mark(0, 100_000)];
        assert_eq!(reread_from(&[mark(0, 5)], margin), Ids { raw: 0, late: 0 });
        assert_eq!(reread_from(&[], margin), Ids { raw: 0, late: 0 });
        assert_eq!(
            reread_from(&marks, margin),
            Ids {
                raw: 900_000 - REREAD_IDS,
                late: 90_000 - REREAD_IDS
            }
        );
    }

    #[test]
    fn keeps_the_mark_the_next_run_reads_again_from() {
        let margin = chrono::Duration::seconds(10);
        let marks = [mark(14, 9), mark(12, 8), mark(5, 5), mark(0, 1)];
        // Stored now at 20 s: the next run reads again from the newest mark at or before 10 s.
        let now = mark(20, 10).taken_at;
        let before = prune_before(&marks, now, margin).unwrap();
        assert_eq!(before, mark(5, 5).taken_at);
        let next = [mark(20, 10), mark(14, 9), mark(12, 8), mark(5, 5)];
        assert_eq!(reread_from(&next, margin), mark(5, 5).ids());
        // All within the margin: nothing pruned.
        let recent = [mark(14, 9), mark(12, 8)];
        assert_eq!(prune_before(&recent, mark(20, 10).taken_at, margin), None);
    }
}
