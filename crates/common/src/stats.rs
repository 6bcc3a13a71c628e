//! Service statistics: this process's CPU time and peak memory, and rows in `service_stats` that
//! `compare` reads to report throughput and resource use per service.

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

/// CPU time and peak resident memory of this process (all threads), from `/proc` on Linux.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Reads the current usage; zeros where `/proc` is not available.
pub fn process_usage() -> ProcessUsage {
    ProcessUsage {
        cpu_seconds: cpu_seconds().unwrap_or(0.0),
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
    }
}

/// Clock ticks per second of `/proc/self/stat` times; 100 on every mainstream Linux platform.
const CLOCK_TICKS: f64 = 100.0;

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Counters a service reports; zero where a figure does not apply to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Messages read (consumers) or fetched/generated (producer).
    pub events_in: u64,
    /// Rows written (consumers) or messages delivered (producer).
    pub events_out: u64,
    pub dead_letters: u64,
    pub late_events: u64,
    pub consumer_lag: Option<i64>,
    /// Service-specific figures.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Writes one `service_stats` row per call, identifying this process as `host:pid:start`.
#[derive(Debug, Clone)]
pub struct StatsRecorder {
    pool: MySqlPool,
    service: &'static str,
    instance: String,
    started_at: DateTime<Utc>,
}

impl StatsRecorder {
    pub fn new(pool: MySqlPool, service: &'static str) -> Self {
        let started_at = Utc::now();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let instance = format!("{host}:{}:{}", std::process::id(), started_at.timestamp());
        StatsRecorder {
            pool,
            service,
            instance,
            started_at,
        }
    }

    /// Like [`StatsRecorder::record`], but a failure to store is only logged (statistics must
    /// never stop a service); returns the process usage either way.
    pub async fn record_or_warn(&self, c: &Counters) -> ProcessUsage {
        match self.record(c).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "could not store statistics");
                process_usage()
            }
        }
    }

    /// Stores the counters with the current process usage; returns the usage recorded.
    pub async fn record(&self, c: &Counters) -> Result<ProcessUsage, sqlx::Error> {
        let usage = process_usage();
        let details = (!c.details.is_empty())
            .then(|| serde_json::Value::Object(c.details.clone()).to_string());
        sqlx::query(
            "INSERT INTO service_stats (service, instance, recorded_at, started_at, events_in, events_out, \
             dead_letters, late_events, consumer_lag, cpu_seconds, peak_rss_bytes, details) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(self.service)
        .bind(&self.instance)
        .bind(Utc::now().naive_utc())
        .bind(self.started_at.naive_utc())
        .bind(c.events_in as i64)
        .bind(c.events_out as i64)
        .bind(c.dead_letters as i64)
        .bind(c.late_events as i64)
        .bind(c.consumer_lag)
        .bind(usage.cpu_seconds)
        .bind(usage.peak_rss_bytes as i64)
        .bind(details)
        .execute(&self.pool)
        .await?;
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let before = process_usage();
        assert!(before.peak_rss_bytes > 1024 * 1024, "{before:?}");
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = process_usage();
        assert!(after.cpu_seconds >= before.cpu_seconds);
    }
}
