//! Reading both sides from MySQL: the batch recomputation (SQL over `raw_coin_data`), the stream
//! results, the update counts, and the services' statistics.

use std::{collections::BTreeMap, time::Instant};

use common::{stats::Details, window::WindowSpec};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::accuracy::{Agg, Key, StreamWindow};

/// Microseconds since the epoch of a `DATETIME(6)` column, in SQL both servers accept.
const US: &str = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {})";

fn us(col: &str) -> String {
    US.replace("{}", col)
}

/// The spec the aggregator group recorded, if any (checked like a configured one).
pub async fn recorded_spec(pool: &MySqlPool, group: &str) -> anyhow::Result<Option<WindowSpec>> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT window_us, slide_us FROM stream_agg_spec WHERE consumer_group = ?")
            .bind(group)
            .fetch_optional(pool)
            .await?;
    Ok(row
        .map(|(window_us, slide_us)| WindowSpec::checked(window_us, slide_us))
        .transpose()?)
}

/// The batch recomputation and how long it took.
#[derive(Debug)]
pub struct Batch {
    pub windows: BTreeMap<Key, Agg>,
    pub seconds: f64,
    pub raw_rows: i64,
}

/// Recomputes every window from `raw_coin_data` in MySQL. Events the aggregator recorded as late
/// (same Kafka partition and offset in `late_events`) are left out of exactly the windows they
/// missed: all of them when not applied, those ending at or before the recorded watermark when
/// applied to the others (sliding windows).
pub async fn batch(pool: &MySqlPool, spec: WindowSpec, group: &str) -> anyhow::Result<Batch> {
    let k = spec.windows_per_event();
    let numbers = (0..k)
        .map(|j| format!("SELECT {j} AS j"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let start = format!("(FLOOR(r.us / {s}) - n.j) * {s}", s = spec.slide_us);
    let sql = format!(
        "SELECT r.asset_id_base, r.asset_id_quote, CAST({start} AS SIGNED) AS start_us, \
                COUNT(*) AS n, SUM(r.rate), MIN(r.rate), MAX(r.rate) \
         FROM (SELECT asset_id_base, asset_id_quote, rate, kafka_partition, kafka_offset, {t} AS us FROM raw_coin_data) r \
         CROSS JOIN ({numbers}) n \
         LEFT JOIN late_events l ON l.consumer_group = ? AND l.kafka_partition = r.kafka_partition \
                                 AND l.kafka_offset = r.kafka_offset \
         WHERE l.id IS NULL OR (l.applied AND {w} < {start} + {size}) \
         GROUP BY r.asset_id_base, r.asset_id_quote, start_us",
        t = us("`time`"),
        w = us("l.watermark"),
        size = spec.size_us,
    );
    let started = Instant::now();
    let rows: Vec<(String, String, i64, i64, f64, f64, f64)> =
        sqlx::query_as(&sql).bind(group).fetch_all(pool).await?;
    let raw_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM raw_coin_data")
        .fetch_one(pool)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let windows = rows
        .into_iter()
        .map(|(b, q, s, n, sum, min, max)| {
            (
                (b, q, s),
                Agg {
                    count: n,
                    sum,
                    min,
                    max,
                    avg: sum / n as f64,
                },
            )
        })
        .collect();
    Ok(Batch {
        windows,
        seconds,
        raw_rows,
    })
}

/// base, quote, start µs, count, sum, min, max, avg, final.
type StreamRow = (String, String, i64, i64, f64, f64, f64, f64, bool);
/// service, events in, events out, dead letters, late, running s, CPU s, peak RSS, details.
type StatsRow = (String, i64, i64, i64, i64, f64, f64, i64, Option<String>);

/// Every `stream_agg` row.
pub async fn stream(pool: &MySqlPool) -> anyhow::Result<BTreeMap<Key, StreamWindow>> {
    let sql = format!(
        "SELECT asset_id_base, asset_id_quote, CAST({} AS SIGNED), update_count, sum_rate, min_rate, max_rate, avg_rate, is_final FROM stream_agg",
        us("start_time")
    );
    let rows: Vec<StreamRow> = sqlx::query_as(&sql).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(b, q, s, n, sum, min, max, avg, is_final)| {
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
        })
        .collect())
}

/// `coin_update_count` rows: count and finality per window.
pub async fn update_counts(pool: &MySqlPool) -> anyhow::Result<BTreeMap<Key, (i64, bool)>> {
    let sql = format!(
        "SELECT asset_id_base, asset_id_quote, CAST({} AS SIGNED), update_count, is_final FROM coin_update_count",
        us("start_time")
    );
    let rows: Vec<(String, String, i64, i64, bool)> = sqlx::query_as(&sql).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(b, q, s, n, f)| ((b, q, s), (n, f)))
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
    pub details: Details,
}

/// Figures per service from `service_stats` (each instance's latest row).
pub async fn services(pool: &MySqlPool) -> anyhow::Result<Vec<ServiceFigures>> {
    let rows: Vec<StatsRow> = sqlx::query_as(&format!(
        "SELECT s.service, s.events_in, s.events_out, s.dead_letters, s.late_events, \
                CAST({} - {} AS DOUBLE) / 1e6, s.cpu_seconds, s.peak_rss_bytes, s.details \
         FROM service_stats s JOIN (SELECT instance, MAX(id) AS id FROM service_stats GROUP BY instance) last \
           ON last.id = s.id ORDER BY s.service, s.id",
        us("s.recorded_at"),
        us("s.started_at")
    ))
    .fetch_all(pool)
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
            f.details = Details::from_json(&d);
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

/// Batch-side latency: the age of each raw update when this batch run saw it, plus the query time
/// (p50, p95, p99, max in ms). `None` without data.
pub async fn batch_latency(
    pool: &MySqlPool,
    query_seconds: f64,
) -> anyhow::Result<Option<[f64; 4]>> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM raw_coin_data WHERE received_at IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if n == 0 {
        return Ok(None);
    }
    let mut out = [0.0; 4];
    for (i, q) in [0.5, 0.95, 0.99, 1.0].iter().enumerate() {
        // The q-quantile of age is the (1 - q)-quantile of received_at.
        let offset = (((1.0 - q) * (n - 1) as f64).round() as i64).max(0);
        let age_us: f64 = sqlx::query_scalar(&format!(
            "SELECT CAST({} - {} AS DOUBLE) FROM raw_coin_data WHERE received_at IS NOT NULL \
             ORDER BY received_at ASC LIMIT 1 OFFSET {offset}",
            us("UTC_TIMESTAMP(6)"),
            us("received_at")
        ))
        .fetch_one(pool)
        .await?;
        out[i] = age_us / 1000.0 + query_seconds * 1000.0;
    }
    Ok(Some(out))
}
