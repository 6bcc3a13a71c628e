//! Retention: rows older than `--retention` are pruned from the tables a service writes, in the
//! background, so a pipeline that runs for months does not grow without bound.
//!
//! Each service names its tables and the rows that are its own ([`Prune`]: a time column and
//! equality conditions such as its consumer group). A pass deletes, per table, at most
//! [`BATCH`] rows per statement (`DELETE ... WHERE ... < cutoff LIMIT n`, on an index of the
//! time column), each statement its own short transaction at READ COMMITTED on a connection of
//! its own (no gap locks: the writers' inserts of recent rows never wait on it), and rests
//! between statements three times as long as the statement took, so pruning uses at most a
//! quarter of one connection. The first pass runs soon after start-up ([`first_pass`]), then one
//! every `--retention-interval`. What was pruned is
//! logged and counted (`coinstream_rows_pruned_total{table}`); a failed pass is logged (WARN)
//! and the next one tries again: pruning never stops a service.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use clap::Args;
use prometheus::IntCounterVec;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::config::parse_duration;

/// Rows per DELETE statement: small enough that each holds its locks for milliseconds.
pub const BATCH: u32 = 1000;

/// The rest after each statement, in multiples of the statement's own time: pruning takes at
/// most a quarter of one connection, and leaves the server to the writers (a raw consumer at
/// full speed loses under 20% to it: docs/benchmarks.md). 1,000 rows a statement still prunes
/// tens of thousands of rows a second, far above what any table here gains.
const REST: u32 = 3;

/// Rows pruned, by table.
pub static ROWS_PRUNED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter(
        "coinstream_rows_pruned_total",
        "Rows deleted by retention (--retention), by table.",
        &["table"],
    )
});

/// Retention settings, shared by every service.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// How long rows are kept in the tables this service writes (`30d`, `12h`); older ones are
    /// pruned in the background. `0` keeps everything (the default).
    #[arg(long = "retention", env = "RETENTION", value_name = "RETENTION", default_value = "0s", value_parser = parse_duration)]
    pub retention: Duration,
    /// How often retention prunes (the first pass runs soon after start-up).
    #[arg(long = "retention-interval", env = "RETENTION_INTERVAL", value_name = "RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub prune_interval: Duration,
}

/// The rows of one table a service prunes: those of its `scope` whose `column` is older than the
/// cutoff.
#[derive(Debug, Clone)]
pub struct Prune {
    pub table: &'static str,
    /// A DATETIME(6) column (UTC), or microseconds since the epoch with [`Prune::micros`].
    pub column: &'static str,
    micros: bool,
    /// Equality conditions: this service's or group's rows only.
    scope: Vec<(&'static str, String)>,
}

impl Prune {
    pub fn new(table: &'static str, column: &'static str) -> Self {
        Prune {
            table,
            column,
            micros: false,
            scope: Vec::new(),
        }
    }

    /// The column holds microseconds since the epoch.
    pub fn micros(mut self) -> Self {
        self.micros = true;
        self
    }

    /// Only rows whose `column` equals `value`.
    pub fn scoped(mut self, column: &'static str, value: impl Into<String>) -> Self {
        self.scope.push((column, value.into()));
        self
    }

    /// The DELETE statement: the scope's values, then the cutoff, are its parameters.
    fn sql(&self) -> String {
        let mut conditions: Vec<String> = self
            .scope
            .iter()
            .map(|(c, _)| format!("`{c}` = ?"))
            .collect();
        conditions.push(format!("`{}` < ?", self.column));
        format!(
            "DELETE FROM `{}` WHERE {} LIMIT {BATCH}",
            self.table,
            conditions.join(" AND ")
        )
    }

    /// Deletes one batch older than `cutoff`; the rows deleted.
    async fn batch(&self, pool: &MySqlPool, cutoff: DateTime<Utc>) -> sqlx::Result<u64> {
        let sql = self.sql();
        let mut q = sqlx::query(&sql);
        for (_, v) in &self.scope {
            q = q.bind(v);
        }
        let q = if self.micros {
            q.bind(cutoff.timestamp_micros())
        } else {
            q.bind(cutoff.naive_utc())
        };
        Ok(q.execute(pool).await?.rows_affected())
    }
}

/// The pruner's own connection, at READ COMMITTED: a range DELETE takes no gap locks, so
/// writers' inserts never wait on it (and the setting never reaches the service's connections).
pub fn pruning_pool(pool: &MySqlPool) -> MySqlPool {
    let options = (*pool.connect_options()).clone();
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options)
}

/// When the first pass runs: soon after start-up, but not before the service is under way.
pub fn first_pass(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(10))
}

/// Starts pruning `jobs` in the background (nothing when retention is off); stops with
/// `shutdown`.
pub fn spawn(
    pool: MySqlPool,
    args: &RetentionArgs,
    jobs: Vec<Prune>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if args.retention.is_zero() || jobs.is_empty() {
        return None;
    }
    let (retention, interval) = (
        args.retention,
        args.prune_interval.max(Duration::from_secs(1)),
    );
    let pool = pruning_pool(&pool);
    tracing::info!(retention = %humantime::format_duration(retention), interval = %humantime::format_duration(interval), tables = ?jobs.iter().map(|j| j.table).collect::<Vec<_>>(), "retention: pruning older rows in the background");
    Some(tokio::spawn(async move {
        let mut wait = first_pass(interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = interval;
            let cutoff = Utc::now() - retention;
            if let Err(e) = pass(&pool, &jobs, cutoff, &shutdown).await {
                tracing::warn!(error = %e, "retention: pruning failed; the next pass tries again");
            }
        }
    }))
}

/// One pass: every job's rows older than `cutoff`, batch by batch; the rows deleted per table.
pub async fn pass(
    pool: &MySqlPool,
    jobs: &[Prune],
    cutoff: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> sqlx::Result<Vec<(&'static str, u64)>> {
    let mut pruned = Vec::with_capacity(jobs.len());
    for job in jobs {
        let started = Instant::now();
        let mut total = 0;
        loop {
            if shutdown.is_cancelled() {
                return Ok(pruned);
            }
            let t = Instant::now();
            let n = job.batch(pool, cutoff).await?;
            total += n;
            ROWS_PRUNED.with_label_values(&[job.table]).inc_by(n);
            if n < u64::from(BATCH) {
                break;
            }
            tokio::time::sleep((t.elapsed() * REST).max(Duration::from_millis(5))).await;
        }
        if total > 0 {
            tracing::info!(table = job.table, rows = total, older_than = %cutoff, took = ?started.elapsed(), "retention: pruned");
        }
        pruned.push((job.table, total));
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_scoped_and_bounded() {
        let p = Prune::new("dead_letters", "recorded_at")
            .scoped("service", "raw-consumer")
            .scoped("consumer_group", "g");
        assert_eq!(
            p.sql(),
            format!("DELETE FROM `dead_letters` WHERE `service` = ? AND `consumer_group` = ? AND `recorded_at` < ? LIMIT {BATCH}")
        );
        assert_eq!(
            Prune::new("raw_coin_data", "time").sql(),
            format!("DELETE FROM `raw_coin_data` WHERE `time` < ? LIMIT {BATCH}")
        );
    }

    #[test]
    fn the_first_pass_comes_soon() {
        assert_eq!(
            first_pass(Duration::from_secs(600)),
            Duration::from_secs(10)
        );
        assert_eq!(first_pass(Duration::from_secs(2)), Duration::from_secs(2));
    }
}
