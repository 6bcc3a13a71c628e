//! What changed since the poller's previous tick, read in the tick's snapshot and routed to the
//! window specs shown:
//! - the group's `stream_agg` rows by `updated_at` (its index), each to its spec;
//! - `raw_coin_data` and the group's `late_events` by id (primary key, [`IdCursor`]): a new raw
//!   row marks its pair's slide bucket in every spec, a new late event in the spec it was late
//!   for.
//!
//! No upper id bound (ids have gaps: every replayed duplicate and rolled-back insert uses one
//! up); the limit covers the rows read again in the margin and a batch of new ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use chrono::{DateTime, NaiveDateTime};
use common::window::WindowSpec;
use sqlx::{MySqlConnection, Row};

use super::cursor::IdCursor;
use crate::{
    accuracy::{Key, StreamWindow},
    batch::{us, Scope},
    queries::{self, StreamRow},
};

/// New rows read per tick.
const ROW_BATCH: i64 = 50_000;

/// Per spec shown: the slide buckets `(base, quote, bucket)` whose windows need the batch side
/// again.
pub(super) type Dirty = BTreeMap<WindowSpec, BTreeSet<Key>>;

/// The group's `stream_agg` rows changed at or after `from_us` (the database's clock), in scope,
/// of the specs shown.
pub(super) async fn stream_rows(
    conn: &mut MySqlConnection,
    group: &str,
    specs: &BTreeSet<WindowSpec>,
    from_us: i64,
    scope: &Scope,
) -> anyhow::Result<Vec<(WindowSpec, Key, StreamWindow)>> {
    let from: NaiveDateTime = DateTime::from_timestamp_micros(from_us)
        .unwrap_or_default()
        .naive_utc();
    // The stream columns, then the spec's: a [`StreamRow`] read from the front of each row.
    let rows = sqlx::query(&format!(
        "SELECT {}, window_us, slide_us FROM stream_agg WHERE consumer_group = ? AND updated_at >= ?",
        queries::stream_columns()
    ))
    .bind(group)
    .bind(from)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let (window_us, slide_us): (i64, i64) = (row.try_get(12)?, row.try_get(13)?);
        let Some(spec) = specs
            .iter()
            .find(|x| x.size_us == window_us && x.slide_us == slide_us)
        else {
            continue;
        };
        let stream: StreamRow = sqlx::FromRow::from_row(&row)?;
        if !scope.contains(&stream.0, &stream.1, stream.2) {
            continue;
        }
        let (key, w) = queries::stream_window(stream);
        out.push((*spec, key, w));
    }
    Ok(out)
}

/// Marks, in every spec, the slide buckets of the raw rows new since the previous tick.
pub(super) async fn raw_buckets(
    conn: &mut MySqlConnection,
    cursor: &mut IdCursor,
    now: Instant,
    dirty: &mut Dirty,
) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT id, asset_id_base, asset_id_quote, CAST({} AS SIGNED), CAST(0 AS SIGNED), \
                CAST(0 AS SIGNED) \
         FROM raw_coin_data WHERE id > ? ORDER BY id LIMIT ?",
        us("`time`")
    );
    for (b, q, time_us, _, _) in fresh_rows(conn, cursor, now, &sql, None).await? {
        for (spec, buckets) in dirty.iter_mut() {
            buckets.insert((b.clone(), q.clone(), time_us.div_euclid(spec.slide_us)));
        }
    }
    Ok(())
}

/// Marks the slide buckets of the group's late events new since the previous tick, each in the
/// spec it was late for (if shown).
pub(super) async fn late_buckets(
    conn: &mut MySqlConnection,
    cursor: &mut IdCursor,
    now: Instant,
    group: &str,
    dirty: &mut Dirty,
) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT id, asset_id_base, asset_id_quote, CAST({} AS SIGNED), window_us, slide_us \
         FROM late_events WHERE id > ? AND consumer_group = ? ORDER BY id LIMIT ?",
        us("`time`")
    );
    for (b, q, time_us, window_us, slide_us) in
        fresh_rows(conn, cursor, now, &sql, Some(group)).await?
    {
        let found = dirty
            .iter_mut()
            .find(|(s, _)| s.size_us == window_us && s.slide_us == slide_us);
        if let Some((spec, buckets)) = found {
            buckets.insert((b, q, time_us.div_euclid(spec.slide_us)));
        }
    }
    Ok(())
}

/// The rows of `sql` (id, base, quote, time µs, window µs, slide µs; placeholders: the id to
/// read from, the group if any, the limit) that `cursor` has not reported before.
async fn fresh_rows(
    conn: &mut MySqlConnection,
    cursor: &mut IdCursor,
    now: Instant,
    sql: &str,
    group: Option<&str>,
) -> anyhow::Result<Vec<(String, String, i64, i64, i64)>> {
    let from = cursor.from(now);
    let mut query = sqlx::query_as::<_, (i64, String, String, i64, i64, i64)>(sql).bind(from);
    if let Some(group) = group {
        query = query.bind(group);
    }
    let rows = query
        .bind(cursor.reread(from) + ROW_BATCH)
        .fetch_all(conn)
        .await?;
    let fresh = rows
        .into_iter()
        .filter(|r| cursor.fresh(r.0))
        .map(|(_, b, q, t, w, s)| (b, q, t, w, s))
        .collect();
    cursor.tick_done(now);
    Ok(fresh)
}
