//! The stored batch windows of the incremental compare (`compare_batch_windows`).

use std::collections::BTreeMap;

use common::window::WindowSpec;
use sqlx::MySqlConnection;

use crate::{
    accuracy::{Agg, Key},
    batch::{self, Scope},
};

/// The stored windows of the group and spec.
pub(super) async fn stored(
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
pub(super) async fn delete_ranges(
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

pub(super) async fn insert(
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
