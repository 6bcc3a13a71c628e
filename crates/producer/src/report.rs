//! The producer's figures and where they go: a statistics line, the metrics, the readiness, and
//! a `service_stats` row when MySQL is there (the producer does not need it otherwise).

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use common::{
    figures::{Figures, FiguresRecorder, ProducerFigures, SpecificFigures},
    observe::Health,
    retention::{self, Prune, RetentionArgs},
};

use crate::{metrics as m, publisher::Publisher};

/// Running totals of a producer run.
#[derive(Debug, Default, Clone)]
pub struct SourceFigures {
    /// Updates fetched, generated or read.
    pub produced: u64,
    pub unchanged: u64,
    pub malformed: u64,
    pub failed_requests: u64,
    pub skipped: u64,
    pub quota_remaining: Option<i64>,
    pub reconnects: u64,
    /// When the source loop started (for the run's wall-clock rate).
    pub started: Option<Instant>,
}

/// Reports the producer's figures: a statistics line, the metrics, the readiness, and a
/// `service_stats` row when MySQL is there (the producer does not need it otherwise).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// Set once MySQL is reachable (connected in the background).
    pub recorder: Arc<OnceLock<FiguresRecorder>>,
    pub runtime: tokio::runtime::Handle,
    pub health: Arc<Health>,
}

impl Reporter {
    /// For the blocking sources (simulate, replay), which run on a blocking thread.
    pub fn report(&self, totals: &SourceFigures, publisher: &Publisher, last: bool) {
        self.runtime
            .block_on(self.report_async(totals, publisher, last));
    }

    /// The loop turned: liveness, readiness and metrics (cheap; call it every few hundred
    /// updates or seconds).
    pub fn observe(&self, totals: &SourceFigures, publisher: &Publisher) {
        self.health.turn();
        let failing = publisher.failing();
        self.health.set_ready(if failing == 0 {
            Ok(())
        } else {
            Err(format!(
                "{failing} messages wait to be re-sent after failed deliveries"
            ))
        });
        m::set_total(&m::UPDATES_PRODUCED, totals.produced);
        m::set_total(
            &m::DELIVERIES.with_label_values(&["delivered"]),
            publisher.delivered(),
        );
        m::set_total(
            &m::DELIVERIES.with_label_values(&["failed"]),
            publisher.failed(),
        );
    }

    pub async fn report_async(&self, totals: &SourceFigures, publisher: &Publisher, last: bool) {
        self.observe(totals, publisher);
        let counters = Figures {
            events_in: totals.produced,
            events_out: publisher.delivered(),
            dead_letters: totals.malformed,
            details: SpecificFigures {
                producer: Some(ProducerFigures {
                    unchanged: totals.unchanged,
                    malformed: totals.malformed,
                    failed_requests: totals.failed_requests,
                    retried_deliveries: publisher.retried(),
                    sent: publisher.sent(),
                    quota_remaining: totals.quota_remaining,
                    reconnects: totals.reconnects,
                }),
                ..SpecificFigures::default()
            },
            ..Figures::default()
        };
        let usage = match self.recorder.get() {
            Some(recorder) => recorder.record_or_warn(&counters).await,
            None => common::figures::process_usage(),
        };
        let elapsed = totals
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        tracing::info!(
            produced = totals.produced,
            sent = publisher.sent(),
            delivered = publisher.delivered(),
            retried = publisher.retried(),
            unchanged = totals.unchanged,
            malformed = totals.malformed,
            failed_requests = totals.failed_requests,
            quota_remaining = ?totals.quota_remaining,
            reconnects = totals.reconnects,
            cpu_seconds = usage.cpu_seconds,
            peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
            elapsed_seconds = elapsed,
            delivered_per_second = if elapsed > 0.0 { (publisher.delivered() as f64 / elapsed).round() } else { 0.0 },
            "{}",
            if last { "producer finished" } else { "producer statistics" }
        );
    }
}

/// Connects MySQL in the background for the statistics rows; the producer does not wait for it.
/// A bad `DATABASE_URL` is still a configuration error at start-up.
pub fn connect_statistics(
    mysql: &common::config::MySqlArgs,
    retention: &RetentionArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Arc<OnceLock<FiguresRecorder>>> {
    mysql.connect_options()?;
    let cell = Arc::new(OnceLock::new());
    let (set, mysql, retention) = (cell.clone(), mysql.clone(), retention.clone());
    tokio::spawn(async move {
        match common::db::connect_and_migrate(&mysql).await {
            Ok(pool) => {
                // Retention: the producer's own statistics (it writes nothing else).
                let own = Prune::new("service_stats", "recorded_at").scoped("service", "producer");
                drop(retention::spawn(
                    pool.clone(),
                    &retention,
                    vec![own],
                    shutdown,
                ));
                let _ = set.set(FiguresRecorder::new(pool, "producer"));
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "no MySQL: statistics go to the log and the metrics only"
            ),
        }
    });
    Ok(cell)
}
