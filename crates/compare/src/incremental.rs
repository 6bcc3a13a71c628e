//! The one-shot compare's batch side, incrementally. A run over every window stores its batch
//! windows (`compare_batch_windows`) with the `raw_coin_data` and `late_events` ids it had read up
//! to (`compare_batch_checkpoint`), per aggregator group and window spec. The next such run
//! recomputes only the windows over slide buckets that rows added since then fall in (found by a
//! range scan of the ids above the checkpoint, a margin read again for transactions that
//! committed late), by range scans of the covering index; the other windows come from the table.
//!
//! A run recomputes everything, and stores it afresh, when there is no checkpoint yet, when the
//! ids went backwards (the tables were emptied or recreated), when most rows are new anyway, or
//! with `--full`. A run narrowed by `--pair`/`--since`/`--until` computes its scope directly and
//! leaves the stored windows alone. Runs are serialized by an advisory lock; one that finds it
//! held computes directly too. The stored windows and the checkpoint change in one transaction.

use std::{collections::BTreeMap, collections::BTreeSet, time::Instant};

use chrono::Utc;
use common::window::WindowSpec;
use serde::Serialize;
use sqlx::{pool::PoolConnection, Acquire, Connection, MySql, MySqlConnection, MySqlPool};

use crate::{
    accuracy::{Agg, Key},
    batch::{self, Batch, Scope, REREAD_IDS},
};

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

/// The batch side of `scope` for aggregator group `group`; incremental where it can be.
pub async fn batch(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    scope: &Scope,
    full: bool,
) -> anyhow::Result<(Batch, BatchMode)> {
    if *scope != Scope::default() {
        return Ok((
            batch::compute(pool, spec, group, scope).await?,
            BatchMode::Full,
        ));
    }
    // The lock lives on a connection of its own, outside the pool the work uses (a pool of one
    // would otherwise wait on itself).
    let mut lock = MySqlConnection::connect_with(&pool.connect_options()).await?;
    // Lock names are at most 64 characters (MySQL): the database and group, hashed.
    const NAME: &str = "CONCAT('coinstream_compare_', SHA1(CONCAT(DATABASE(), '/', ?)))";
    let locked: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({NAME}, 0)"))
        .bind(group)
        .fetch_one(&mut lock)
        .await?;
    if locked != Some(1) {
        tracing::info!(
            "another compare is updating the stored batch side: computing this run's directly"
        );
        return Ok((
            batch::compute(pool, spec, group, scope).await?,
            BatchMode::Full,
        ));
    }
    let result = locked_batch(pool, spec, group, full).await;
    let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({NAME})"))
        .bind(group)
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
    result
}

async fn locked_batch(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    full: bool,
) -> anyhow::Result<(Batch, BatchMode)> {
    let started = Instant::now();
    // Read before anything is computed: rows committed meanwhile are above it, read next time.
    let (now, min_raw) = high_water(pool).await?;
    let last = if full {
        None
    } else {
        checkpoint(pool, spec, group).await?
    };
    let usable = last.filter(|l| {
        l.raw <= now.raw && l.late <= now.late && (now.raw - l.raw) <= (now.raw - min_raw) / 2
    });
    let Some(last) = usable else {
        let b = batch::compute(pool, spec, group, &Scope::default()).await?;
        replace_all(pool, spec, group, &b.windows, now).await?;
        return Ok((b, BatchMode::Full));
    };
    let dirty = dirty_buckets(pool, spec, group, last).await?;
    let ranges = batch::dirty_ranges(spec, &Scope::default(), &dirty);
    let mut recomputed = Vec::with_capacity(ranges.len());
    let mut raw_rows = 0;
    for range in ranges {
        let b = batch::compute(pool, spec, group, &range).await?;
        raw_rows += b.raw_rows;
        recomputed.push((range, b.windows));
    }
    let n: usize = recomputed.iter().map(|(_, w)| w.len()).sum();
    replace_ranges(pool, spec, group, &recomputed, now).await?;
    let windows = stored(pool, spec, group).await?;
    let stored = windows.len() - n.min(windows.len());
    let b = Batch {
        windows,
        seconds: started.elapsed().as_secs_f64(),
        raw_rows,
    };
    Ok((
        b,
        BatchMode::Incremental {
            recomputed: n,
            stored,
        },
    ))
}

/// The ids now, and the lowest raw id (how many rows there are, near enough).
async fn high_water(pool: &MySqlPool) -> anyhow::Result<(Ids, i64)> {
    let (raw, late, min_raw): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT MAX(id) FROM raw_coin_data), (SELECT MAX(id) FROM late_events), \
                (SELECT MIN(id) FROM raw_coin_data)",
    )
    .fetch_one(pool)
    .await?;
    let ids = Ids {
        raw: raw.unwrap_or(0),
        late: late.unwrap_or(0),
    };
    Ok((ids, min_raw.unwrap_or(0)))
}

async fn checkpoint(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
) -> anyhow::Result<Option<Ids>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT raw_id, late_id FROM compare_batch_checkpoint \
         WHERE consumer_group = ? AND window_us = ? AND slide_us = ?",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(raw, late)| Ids { raw, late }))
}

/// Slide buckets of the raw rows and the group's late events above the checkpoint (less the
/// margin): one range scan of each primary key.
async fn dirty_buckets(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    last: Ids,
) -> anyhow::Result<BTreeSet<Key>> {
    let bucket = batch::bucket_sql(spec);
    let raw: Vec<Key> = sqlx::query_as(&format!(
        "SELECT DISTINCT asset_id_base, asset_id_quote, {bucket} FROM raw_coin_data r WHERE id > ?"
    ))
    .bind(last.raw - REREAD_IDS)
    .fetch_all(pool)
    .await?;
    let late: Vec<Key> = sqlx::query_as(&format!(
        "SELECT DISTINCT asset_id_base, asset_id_quote, {bucket} FROM late_events r \
         WHERE id > ? AND consumer_group = ?"
    ))
    .bind(last.late - REREAD_IDS)
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(raw.into_iter().chain(late).collect())
}

/// The stored windows of the group and spec.
async fn stored(
    pool: &MySqlPool,
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
    .fetch_all(pool)
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

/// Replaces every stored window of the group and spec, and the checkpoint.
async fn replace_all(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    windows: &BTreeMap<Key, Agg>,
    now: Ids,
) -> anyhow::Result<()> {
    let mut conn: PoolConnection<MySql> = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "DELETE FROM compare_batch_windows WHERE consumer_group = ? AND window_us = ? AND slide_us = ?",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .execute(&mut *tx)
    .await?;
    let all: Vec<_> = windows.iter().collect();
    insert(&mut tx, spec, group, &all).await?;
    set_checkpoint(&mut tx, spec, group, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces the stored windows of each recomputed range, and moves the checkpoint.
async fn replace_ranges(
    pool: &MySqlPool,
    spec: WindowSpec,
    group: &str,
    recomputed: &[(Scope, BTreeMap<Key, Agg>)],
    now: Ids,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    for (range, windows) in recomputed {
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
        .execute(&mut *tx)
        .await?;
        let rows: Vec<_> = windows.iter().collect();
        insert(&mut tx, spec, group, &rows).await?;
    }
    set_checkpoint(&mut tx, spec, group, now).await?;
    tx.commit().await?;
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

async fn set_checkpoint(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    now: Ids,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO compare_batch_checkpoint (consumer_group, window_us, slide_us, raw_id, late_id, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE raw_id = VALUES(raw_id), \
         late_id = VALUES(late_id), updated_at = VALUES(updated_at)",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(now.raw)
    .bind(now.late)
    .bind(Utc::now().naive_utc())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
