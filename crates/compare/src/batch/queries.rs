//! Reading from MySQL what compare sets beside the batch side ([`crate::batch`]): the specs an
//! aggregator group recorded, its stream results and update counts (of one group and spec,
//! never another's), and the batch-side latency; and the [`Snapshot`] every read of one verdict
//! goes through. The services' figures are [`crate::services`]'.

use std::collections::BTreeMap;

use common::window::WindowSpec;
use sqlx::{pool::PoolConnection, Executor, MySql, MySqlConnection, MySqlPool};

use crate::{
    accuracy::{Agg, Key, StreamWindow},
    batch::{bind_all, us, Bind, Scope},
};

/// One consistent view of the database: a read-only transaction started `WITH CONSISTENT
/// SNAPSHOT` (repeatable read, both MySQL 8 and MariaDB), on one connection: every query on it
/// sees the rows committed when it began, and none committed after. Both sides of a verdict, the
/// late events and the consumers' offsets are read in one, so a consumer committing between two
/// reads cannot make them disagree. A snapshot not ended (an error on the way) closes its
/// connection rather than return it to the pool inside the transaction.
#[derive(Debug)]
pub struct Snapshot {
    conn: PoolConnection<MySql>,
    open: bool,
}

impl Snapshot {
    pub async fn begin(pool: &MySqlPool) -> anyhow::Result<Self> {
        let mut s = Snapshot {
            conn: pool.acquire().await?,
            open: true,
        };
        s.conn
            .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        s.conn
            .execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        Ok(s)
    }

    pub fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }

    /// Ends the transaction; the connection goes back to the pool.
    pub async fn end(mut self) -> anyhow::Result<()> {
        self.conn.execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// The database's clock now, µs since the epoch (what `updated_at` and the marks are written by).
pub async fn db_now_us(conn: &mut MySqlConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT CAST({} AS SIGNED)",
        us("UTC_TIMESTAMP(6)")
    ))
    .fetch_one(conn)
    .await?)
}

/// A window spec an aggregator group recorded (`stream_agg_specs`), with its watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedSpec {
    pub spec: WindowSpec,
    pub watermark_us: i64,
}

/// The specs the aggregator group recorded, in [`WindowSpec`]'s order (size, then slide): none
/// when it has not run yet. Each is checked like a configured one.
pub async fn recorded_specs(
    conn: &mut MySqlConnection,
    group: &str,
) -> anyhow::Result<Vec<RecordedSpec>> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT window_us, slide_us, watermark_us FROM stream_agg_specs WHERE consumer_group = ? \
         ORDER BY window_us, slide_us",
    )
    .bind(group)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (window_us, slide_us, watermark_us) in rows {
        out.push(RecordedSpec {
            spec: WindowSpec::checked(window_us, slide_us)?,
            watermark_us,
        });
    }
    Ok(out)
}

/// base, quote, start µs, count, sum, min, max, avg, first, last, final, written late (0/1).
#[rustfmt::skip]
pub type StreamRow = (String, String, i64, i64, f64, f64, f64, f64, f64, f64, bool, i64);

/// The columns of a stream window, in [`StreamRow`]'s order.
pub fn stream_columns() -> String {
    format!(
        "asset_id_base, asset_id_quote, CAST({} AS SIGNED), update_count, sum_rate, min_rate, max_rate, \
         avg_rate, first_rate, last_rate, is_final, \
         CAST(created_at IS NOT NULL AND created_at > end_time + INTERVAL 1 MINUTE AS SIGNED)",
        us("start_time")
    )
}

/// A row of [`stream_columns`] as a window.
pub fn stream_window(
    (b, q, s, n, sum, min, max, avg, first, last, is_final, late): StreamRow,
) -> (Key, StreamWindow) {
    (
        (b, q, s),
        StreamWindow {
            agg: Agg {
                count: n,
                sum,
                min,
                max,
                avg,
            },
            is_final,
            first,
            last,
            written_late: late != 0,
        },
    )
}

/// `WHERE` conditions on a window table (columns prefixed with `t`): the rows of aggregator
/// group `group` and `spec` (never another group's or spec's), in `scope`; and their values, to
/// bind in order.
fn window_conditions(group: &str, spec: WindowSpec, scope: &Scope, t: &str) -> (String, Vec<Bind>) {
    let mut sql = format!(" WHERE {t}consumer_group = ? AND {t}window_us = ? AND {t}slide_us = ?");
    let mut binds = vec![
        Bind::Text(group.to_owned()),
        Bind::Int(spec.size_us),
        Bind::Int(spec.slide_us),
    ];
    if let Some(p) = scope.pair {
        sql.push_str(&format!(
            " AND {t}asset_id_base = ? AND {t}asset_id_quote = ?"
        ));
        binds.push(Bind::Text(p.base.to_string()));
        binds.push(Bind::Text(p.quote.to_string()));
    }
    if let Some(s) = scope.since {
        sql.push_str(&format!(" AND {t}start_time >= ?"));
        binds.push(Bind::Time(s));
    }
    if let Some(u) = scope.until {
        sql.push_str(&format!(" AND {t}start_time < ?"));
        binds.push(Bind::Time(u));
    }
    (sql, binds)
}

/// The `stream_agg` rows of aggregator group `group` and `spec` in a scope.
pub async fn stream(
    conn: &mut MySqlConnection,
    group: &str,
    spec: WindowSpec,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<Key, StreamWindow>> {
    let (conditions, binds) = window_conditions(group, spec, scope, "");
    let sql = format!("SELECT {} FROM stream_agg{conditions}", stream_columns());
    let q = bind_all(sqlx::query_as::<_, StreamRow>(&sql), &binds);
    Ok(q.fetch_all(conn)
        .await?
        .into_iter()
        .map(stream_window)
        .collect())
}

/// A final stream window against its `coin_update_count` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountCheck {
    /// The counter's count and finality (`None`: no row yet).
    pub counter: Option<(i64, bool)>,
    /// How long ago the stream row was written, by the database's clock (µs).
    pub age_us: i64,
}

/// The final `stream_agg` windows of aggregator group `group` and `spec` in a scope, with their
/// `coin_update_count` rows (of the same group and spec).
pub async fn update_counts(
    conn: &mut MySqlConnection,
    group: &str,
    spec: WindowSpec,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<Key, CountCheck>> {
    let (conditions, binds) = window_conditions(group, spec, scope, "s.");
    let sql = format!(
        "SELECT s.asset_id_base, s.asset_id_quote, CAST({} AS SIGNED), c.update_count, c.is_final, \
                CAST({} - {} AS SIGNED) \
         FROM stream_agg s LEFT JOIN coin_update_count c ON c.consumer_group = s.consumer_group \
              AND c.window_us = s.window_us AND c.slide_us = s.slide_us \
              AND c.asset_id_base = s.asset_id_base AND c.asset_id_quote = s.asset_id_quote \
              AND c.start_time = s.start_time AND c.end_time = s.end_time\
         {conditions} AND s.is_final",
        us("s.start_time"),
        us("UTC_TIMESTAMP(6)"),
        us("s.updated_at"),
    );
    type Row = (String, String, i64, Option<i64>, Option<bool>, i64);
    let q = bind_all(sqlx::query_as::<_, Row>(&sql), &binds);
    Ok(q.fetch_all(conn)
        .await?
        .into_iter()
        .map(|(b, q, s, n, f, age_us)| {
            let counter = n.map(|n| (n, f.unwrap_or(false)));
            ((b, q, s), CountCheck { counter, age_us })
        })
        .collect())
}

/// Batch-side latency: the age of the raw updates when this batch run saw them, plus the query
/// time (p50, p95, p99, max in ms); `None` without data. Ages are read at id quantiles (rows are
/// inserted in the order they were received, near enough): four primary-key lookups, not a sort
/// of the table.
pub async fn batch_latency(
    conn: &mut MySqlConnection,
    query_seconds: f64,
) -> anyhow::Result<Option<[f64; 4]>> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(id), MAX(id) FROM raw_coin_data")
            .fetch_one(&mut *conn)
            .await?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT CAST({} - {} AS DOUBLE) FROM raw_coin_data WHERE id >= ? AND received_at IS NOT NULL ORDER BY id LIMIT 1",
        us("UTC_TIMESTAMP(6)"),
        us("received_at")
    );
    let mut out = [0.0; 4];
    for (i, q) in [0.5, 0.95, 0.99, 1.0].iter().enumerate() {
        // The q-quantile of age is the (1 - q)-quantile of the receive order.
        let id = lo + ((1.0 - q) * (hi - lo) as f64).round() as i64;
        let age_us: Option<f64> = sqlx::query_scalar(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(age_us) = age_us else {
            return Ok(None);
        };
        out[i] = age_us / 1000.0 + query_seconds * 1000.0;
    }
    Ok(Some(out))
}
