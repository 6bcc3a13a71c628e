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

mod marks;
mod stored;

use crate::{
    accuracy::{Agg, Key},
    batch::{self, Batch, Scope, REREAD_MARGIN},
    queries::Snapshot,
};
use marks::{add_mark, consistent, high_water, marks, prune_before, reread_from, Ids, Mark};
use stored::{delete_ranges, insert, stored};

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

/// Slide buckets of the raw rows and the group's late events for `spec` above `from`: one range
/// scan of each primary key.
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
         WHERE id > ? AND consumer_group = ? AND window_us = ? AND slide_us = ?"
    ))
    .bind(from.late)
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_all(&mut *conn)
    .await?;
    Ok(raw.into_iter().chain(late).collect())
}
