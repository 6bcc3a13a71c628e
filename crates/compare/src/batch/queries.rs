//! Reading from MySQL what compare sets beside the batch side ([`crate::batch`]): the stream
//! results, the update counts, the services' statistics, and the batch-side latency; and the
//! [`Snapshot`] every read of one verdict goes through.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use common::{figures::SpecificFigures, window::WindowSpec};
use serde::Serialize;
use sqlx::{pool::PoolConnection, Executor, MySql, MySqlConnection, MySqlPool};

use crate::{
    accuracy::{Agg, Key, StreamWindow},
    batch::{us, Scope},
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

/// The spec the aggregator group recorded, if any (checked like a configured one).
pub async fn recorded_spec(
    conn: &mut MySqlConnection,
    group: &str,
) -> anyhow::Result<Option<WindowSpec>> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT window_us, slide_us FROM stream_agg_spec WHERE consumer_group = ?")
            .bind(group)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .map(|(window_us, slide_us)| WindowSpec::checked(window_us, slide_us))
        .transpose()?)
}

/// base, quote, start µs, count, sum, min, max, avg, final.
pub type StreamRow = (String, String, i64, i64, f64, f64, f64, f64, bool);
/// service, events in, events out, dead letters, late, running s, CPU s, peak RSS, details.
type StatsRow = (String, i64, i64, i64, i64, f64, f64, i64, Option<String>);

/// The columns of a stream window, in [`StreamRow`]'s order.
pub fn stream_columns() -> String {
    format!(
        "asset_id_base, asset_id_quote, CAST({} AS SIGNED), update_count, sum_rate, min_rate, max_rate, avg_rate, is_final",
        us("start_time")
    )
}

/// A row of [`stream_columns`] as a window.
pub fn stream_window((b, q, s, n, sum, min, max, avg, is_final): StreamRow) -> (Key, StreamWindow) {
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
        },
    )
}

/// `WHERE` conditions on a window table's pair and `start_time` (columns prefixed with `t`) for
/// `scope` (values bound).
fn window_conditions(scope: &Scope, t: &str) -> (String, Vec<String>, Vec<NaiveDateTime>) {
    let mut sql = String::from(" WHERE TRUE");
    let mut texts = Vec::new();
    let mut times = Vec::new();
    if let Some(p) = scope.pair {
        sql.push_str(&format!(
            " AND {t}asset_id_base = ? AND {t}asset_id_quote = ?"
        ));
        texts.push(p.base.to_string());
        texts.push(p.quote.to_string());
    }
    if let Some(s) = scope.since {
        sql.push_str(&format!(" AND {t}start_time >= ?"));
        times.push(s.naive_utc());
    }
    if let Some(u) = scope.until {
        sql.push_str(&format!(" AND {t}start_time < ?"));
        times.push(u.naive_utc());
    }
    (sql, texts, times)
}

/// Binds [`window_conditions`]' values, in their order.
fn bind_window<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments>,
    texts: &'q [String],
    times: &'q [NaiveDateTime],
) -> sqlx::query::QueryAs<'q, sqlx::MySql, O, sqlx::mysql::MySqlArguments> {
    for t in texts {
        q = q.bind(t.as_str());
    }
    for t in times {
        q = q.bind(*t);
    }
    q
}

/// The `stream_agg` rows of a scope.
pub async fn stream(
    conn: &mut MySqlConnection,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<Key, StreamWindow>> {
    let (conditions, texts, times) = window_conditions(scope, "");
    let sql = format!("SELECT {} FROM stream_agg{conditions}", stream_columns());
    let q = bind_window(sqlx::query_as::<_, StreamRow>(&sql), &texts, &times);
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

/// The final `stream_agg` windows of a scope with their `coin_update_count` rows.
pub async fn update_counts(
    conn: &mut MySqlConnection,
    scope: &Scope,
) -> anyhow::Result<BTreeMap<Key, CountCheck>> {
    let (conditions, texts, times) = window_conditions(scope, "s.");
    let sql = format!(
        "SELECT s.asset_id_base, s.asset_id_quote, CAST({} AS SIGNED), c.update_count, c.is_final, \
                CAST({} - {} AS SIGNED) \
         FROM stream_agg s LEFT JOIN coin_update_count c ON c.asset_id_base = s.asset_id_base \
              AND c.asset_id_quote = s.asset_id_quote AND c.start_time = s.start_time AND c.end_time = s.end_time\
         {conditions} AND s.is_final",
        us("s.start_time"),
        us("UTC_TIMESTAMP(6)"),
        us("s.updated_at"),
    );
    type Row = (String, String, i64, Option<i64>, Option<bool>, i64);
    let q = bind_window(sqlx::query_as::<_, Row>(&sql), &texts, &times);
    Ok(q.fetch_all(conn)
        .await?
        .into_iter()
        .map(|(b, q, s, n, f, age_us)| {
            let counter = n.map(|n| (n, f.unwrap_or(false)));
            ((b, q, s), CountCheck { counter, age_us })
        })
        .collect())
}

/// One service's figures, summed over its instances' latest statistics rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceFigures {
    pub service: String,
    pub instances: i64,
    pub events_in: i64,
    pub events_out: i64,
    pub dead_letters: i64,
    pub late_events: i64,
    pub running_seconds: f64,
    pub events_per_second: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// The latest service-specific figures (the aggregator's latency among them).
    pub details: SpecificFigures,
}

/// Figures per service from `service_stats` (each instance's latest row).
pub async fn services(conn: &mut MySqlConnection) -> anyhow::Result<Vec<ServiceFigures>> {
    let rows: Vec<StatsRow> = sqlx::query_as(&format!(
        "SELECT s.service, s.events_in, s.events_out, s.dead_letters, s.late_events, \
                CAST({} - {} AS DOUBLE) / 1e6, s.cpu_seconds, s.peak_rss_bytes, s.details \
         FROM service_stats s JOIN (SELECT instance, MAX(id) AS id FROM service_stats GROUP BY instance) last \
           ON last.id = s.id ORDER BY s.service, s.id",
        us("s.recorded_at"),
        us("s.started_at")
    ))
    .fetch_all(conn)
    .await?;
    let mut by: BTreeMap<String, ServiceFigures> = BTreeMap::new();
    for (service, ein, eout, dead, late, secs, cpu, rss, details) in rows {
        let f = by.entry(service.clone()).or_insert_with(|| ServiceFigures {
            service,
            ..Default::default()
        });
        f.instances += 1;
        f.events_in += ein;
        f.events_out += eout;
        f.dead_letters += dead;
        f.late_events += late;
        f.running_seconds = f.running_seconds.max(secs);
        f.cpu_seconds += cpu;
        f.peak_rss_mb = f.peak_rss_mb.max(rss as f64 / 1_048_576.0);
        if let Some(d) = details {
            f.details = SpecificFigures::from_json(&d);
        }
    }
    let mut out: Vec<ServiceFigures> = by.into_values().collect();
    for f in &mut out {
        if f.running_seconds > 0.0 {
            f.events_per_second = f.events_in as f64 / f.running_seconds;
        }
    }
    Ok(out)
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
