//! A service's figures, the one name for what it reports about itself: this process's CPU time
//! and peak memory, the [`Figures`] it stores in `service_stats` (which `compare` reads to report
//! throughput and resource use per service), and each service's own figures, typed
//! ([`SpecificFigures`]: the consumer runtime's, ingestion's, the aggregator's, the producer's),
//! stored as JSON and read back by compare through the same types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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

/// Figures of the consumer runtime (`common::consumer`), the same for every consuming service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerFigures {
    /// Messages received and new to the group.
    pub messages: u64,
    /// Messages skipped because MySQL's offsets show them applied already.
    pub already_applied: u64,
    /// Messages of partitions this instance did not hold any more (left to their owner).
    pub not_owned: u64,
    /// Writes committed.
    pub writes: u64,
    /// Rejoins of the group (the watchdog, a seek that kept failing, partitions lost).
    pub rejoins: u64,
    /// Offsets passed over because the broker confirmed they hold no message.
    pub skipped_offsets: u64,
    /// Messages in the topic not yet applied (MySQL's offsets against the high watermarks).
    pub lag: Option<i64>,
    /// Partitions held now.
    pub partitions_held: usize,
    /// Seconds from the first message received to the last write committed.
    pub active_seconds: f64,
}

/// Figures of raw-consumer and update-counter (`common::ingest`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestFigures {
    pub rows_written: u64,
    pub dead_letters: u64,
    /// Messages whose rows the database refused (kept in dead_letters, reason `rejected`).
    pub rejected: u64,
    /// Messages found applied already by a write's locked offsets (a former owner wrote them).
    pub fenced: u64,
    pub db_retries: u64,
    /// Seconds spent writing batches to MySQL (successful attempts and retries).
    pub db_seconds: f64,
}

/// Latency of the stream aggregator: producer received to the commit of the window row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyFigures {
    pub samples: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Log-spaced buckets: (upper bound in ms, updates).
    pub histogram_ms: Vec<(f64, u64)>,
}

/// Figures of the stream aggregator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AggregatorFigures {
    pub events: u64,
    pub applied: u64,
    pub late: u64,
    pub partly_late: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    /// Messages the database refused (pinned by narrowing a refused flush down; dead letters).
    pub rejected: u64,
    pub windows_emitted: u64,
    /// The state held: slices (and windows from before slicing) of every partition.
    pub open_windows: usize,
    pub db_retries: u64,
    /// Largest distance of a partition's watermark behind the wall clock.
    pub watermark_lag_seconds: Option<f64>,
    /// Seconds from the first to the latest event applied.
    pub processing_seconds: f64,
    pub latency: LatencyFigures,
}

/// Figures of the producer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProducerFigures {
    pub unchanged: u64,
    pub malformed: u64,
    pub failed_requests: u64,
    pub retried_deliveries: u64,
    pub sent: u64,
    pub quota_remaining: Option<i64>,
    /// CoinAPI WebSocket connections opened again (lost, or asked for by the server).
    pub reconnects: u64,
}

/// The service-specific part of a `service_stats` row (column `details`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecificFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<AggregatorFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerFigures>,
}

impl SpecificFigures {
    /// Reads a stored `details` column; rows of older versions (other shapes) read as empty.
    pub fn from_json(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("statistics always serialize")
    }
}

/// Figures a service reports; zero where a figure does not apply to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Messages read (consumers) or fetched/generated (producer).
    pub events_in: u64,
    /// Rows written (consumers) or messages delivered (producer).
    pub events_out: u64,
    pub dead_letters: u64,
    pub late_events: u64,
    pub consumer_lag: Option<i64>,
    /// Service-specific figures.
    pub details: SpecificFigures,
}

/// Writes `service_stats` rows, identifying this process as `host:pid:start`. [`submit`]
/// writes in the background (a consume loop never waits for the database for its statistics;
/// one insert at a time, the newest figures win); [`flush`] waits for the last one.
///
/// [`submit`]: FiguresRecorder::submit
/// [`flush`]: FiguresRecorder::flush
#[derive(Debug, Clone)]
pub struct FiguresRecorder {
    pool: MySqlPool,
    service: &'static str,
    instance: String,
    /// The consumer group the service runs in (none for the producer).
    group: Option<String>,
    started_at: DateTime<Utc>,
    background: std::sync::Arc<std::sync::Mutex<Background>>,
}

/// The background insert and figures that waited for it.
#[derive(Debug, Default)]
struct Background {
    running: Option<tokio::task::JoinHandle<()>>,
    waiting: Option<Figures>,
}

impl FiguresRecorder {
    pub fn new(pool: MySqlPool, service: &'static str) -> Self {
        let started_at = Utc::now();
        let host = crate::config::hostname();
        let instance = format!("{host}:{}:{}", std::process::id(), started_at.timestamp());
        FiguresRecorder {
            pool,
            service,
            instance,
            group: None,
            started_at,
            background: Default::default(),
        }
    }

    /// The recorder of a service consuming in `group`: its rows say so, and compare reads only
    /// its own group's services.
    pub fn with_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// Stores the counters in the background (after the insert still running, if any: only the
    /// newest figures wait); returns the process usage now, for the log line.
    pub fn submit(&self, c: Figures) -> ProcessUsage {
        let mut bg = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if bg.running.as_ref().is_some_and(|h| !h.is_finished()) {
            bg.waiting = Some(c);
        } else {
            let this = self.clone();
            bg.running = Some(tokio::spawn(async move { this.store_newest(c).await }));
        }
        process_usage()
    }

    /// Inserts `c`, then whatever was submitted meanwhile.
    async fn store_newest(&self, mut c: Figures) {
        loop {
            if let Err(e) = self.record(&c).await {
                tracing::warn!(error = %e, "could not store statistics");
            }
            let next = self
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waiting
                .take();
            match next {
                Some(n) => c = n,
                None => return,
            }
        }
    }

    /// Waits (at most `limit`) for the submitted figures to be stored.
    pub async fn flush(&self, limit: std::time::Duration) {
        let running = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .take();
        let started = std::time::Instant::now();
        if let Some(h) = running {
            if tokio::time::timeout(limit, h).await.is_err() {
                tracing::warn!(?limit, "the last statistics row was not stored in time");
                return;
            }
        }
        // Figures submitted as the last insert was finishing.
        let waiting = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .take();
        if let Some(c) = waiting {
            let left = limit.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.record(&c)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not store statistics"),
                Err(_) => tracing::warn!(?limit, "the last statistics row was not stored in time"),
            }
        }
    }

    /// Closes the recorder's pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Like [`FiguresRecorder::record`], but a failure to store is only logged (statistics must
    /// never stop a service); returns the process usage either way.
    pub async fn record_or_warn(&self, c: &Figures) -> ProcessUsage {
        match self.record(c).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "could not store statistics");
                process_usage()
            }
        }
    }

    /// Stores the counters with the current process usage; returns the usage recorded.
    pub async fn record(&self, c: &Figures) -> Result<ProcessUsage, sqlx::Error> {
        let usage = process_usage();
        let details = (c.details != SpecificFigures::default()).then(|| c.details.to_json());
        sqlx::query(
            "INSERT INTO service_stats (service, instance, consumer_group, recorded_at, started_at, events_in, \
             events_out, dead_letters, late_events, consumer_lag, cpu_seconds, peak_rss_bytes, details) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(self.service)
        .bind(&self.instance)
        .bind(self.group.as_deref())
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
    fn details_round_trip_and_tolerate_old_rows() {
        let d = SpecificFigures {
            aggregator: Some(AggregatorFigures {
                events: 7,
                latency: LatencyFigures {
                    p99_ms: 12.5,
                    histogram_ms: vec![(1.0, 3), (2.0, 4)],
                    ..LatencyFigures::default()
                },
                ..AggregatorFigures::default()
            }),
            ..SpecificFigures::default()
        };
        assert_eq!(SpecificFigures::from_json(&d.to_json()), d);
        assert!(!d.to_json().contains("producer"));
        // A row written before the figures were typed (string keys at the top level).
        let old = SpecificFigures::from_json(r#"{"latency_p50_ms": 3.0, "batches": 2}"#);
        assert_eq!(old, SpecificFigures::default());
        assert_eq!(
            SpecificFigures::from_json("not json"),
            SpecificFigures::default()
        );
    }

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
