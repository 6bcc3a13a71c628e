//! Metrics in Prometheus text format, through the `metrics` facade and its Prometheus exporter,
//! with this process's CPU and memory from `metrics-process`. One place names them all, by
//! Prometheus conventions: `coinstream_` prefix, `_total` counters, base units (`_seconds`,
//! `_bytes`, `_messages`), histograms for durations; every series carries a `service` label.
//!
//! Nothing here is on a message's path: services add to counters per batch or flush, and copy
//! running totals into them at the runtime's probe (every second).

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Messages received and new to the consumer group (label `topic`).
pub const MESSAGES_CONSUMED: &str = "coinstream_messages_consumed_total";
/// Rows written to MySQL (label `table`).
pub const ROWS_WRITTEN: &str = "coinstream_rows_written_total";
/// Messages kept in `dead_letters`.
pub const DEAD_LETTERS: &str = "coinstream_dead_letters_total";
/// Events later than the watermark for all (`applied="false"`) or some of their windows.
pub const LATE_EVENTS: &str = "coinstream_late_events_total";
/// Events whose (pair, time) was seen before.
pub const DUPLICATES: &str = "coinstream_duplicates_total";
/// Window results written and published.
pub const WINDOWS_EMITTED: &str = "coinstream_windows_emitted_total";
/// Messages in the log not yet applied, per partition (MySQL's offset against the high watermark).
pub const CONSUMER_LAG: &str = "coinstream_consumer_lag_messages";
/// Partitions this instance holds.
pub const PARTITIONS_HELD: &str = "coinstream_partitions_held";
/// Rejoins of the consumer group by the watchdog.
pub const REJOINS: &str = "coinstream_group_rejoins_total";
/// Largest distance of a held partition's watermark behind the wall clock.
pub const WATERMARK_LAG: &str = "coinstream_watermark_lag_seconds";
/// Duration of one write (a batch or a flush: one MySQL transaction, retries included).
pub const WRITE_DURATION: &str = "coinstream_write_duration_seconds";
/// From the producer receiving an update to the commit of the transaction that applied it.
pub const END_TO_END_LATENCY: &str = "coinstream_end_to_end_latency_seconds";
/// CoinAPI requests by outcome (label `status`: the HTTP status, or `error`).
pub const COINAPI_REQUESTS: &str = "coinstream_coinapi_requests_total";
/// CoinAPI's `X-RateLimit-Remaining` as last seen.
pub const COINAPI_QUOTA_REMAINING: &str = "coinstream_coinapi_quota_remaining";
/// Deliveries to the broker by result (label `result`: `delivered` or `failed`).
pub const DELIVERIES: &str = "coinstream_deliveries_total";
/// Updates fetched, generated or read by the producer.
pub const UPDATES_PRODUCED: &str = "coinstream_updates_produced_total";

/// Histogram buckets (seconds) of the durations.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets (bounds the memory they take).
const UPKEEP: Duration = Duration::from_millis(100);

/// The installed exporter: renders `/metrics`.
#[derive(Debug, Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Exporter {
    /// Installs the global recorder for `service` and starts the upkeep task. Call once, inside
    /// the runtime.
    pub fn install(service: &'static str) -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .add_global_label("service", service)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
            .install_recorder()?;
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Exporter { handle, process })
    }

    /// The metrics now, in Prometheus text format.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }
}

fn describe() {
    describe_counter!(
        MESSAGES_CONSUMED,
        Unit::Count,
        "Messages received and new to the consumer group."
    );
    describe_counter!(ROWS_WRITTEN, Unit::Count, "Rows written to MySQL.");
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Malformed messages kept in dead_letters."
    );
    describe_counter!(
        LATE_EVENTS,
        Unit::Count,
        "Events later than the watermark for all (applied=false) or some of their windows."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Events whose (pair, time) was seen before."
    );
    describe_counter!(
        WINDOWS_EMITTED,
        Unit::Count,
        "Window results written and published."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Messages in the log not yet applied: MySQL's offset against the high watermark."
    );
    describe_gauge!(
        PARTITIONS_HELD,
        Unit::Count,
        "Partitions this instance holds."
    );
    describe_counter!(
        REJOINS,
        Unit::Count,
        "Rejoins of the consumer group by the watchdog."
    );
    describe_gauge!(
        WATERMARK_LAG,
        Unit::Seconds,
        "Largest distance of a held partition's watermark behind the wall clock."
    );
    describe_histogram!(
        WRITE_DURATION,
        Unit::Seconds,
        "Duration of one write (a MySQL transaction, retries included)."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "From the producer receiving an update to the commit that applied it."
    );
    describe_counter!(
        COINAPI_REQUESTS,
        Unit::Count,
        "CoinAPI requests by HTTP status (or error)."
    );
    describe_gauge!(
        COINAPI_QUOTA_REMAINING,
        Unit::Count,
        "CoinAPI's X-RateLimit-Remaining as last seen."
    );
    describe_counter!(
        DELIVERIES,
        Unit::Count,
        "Deliveries to the broker by result."
    );
    describe_counter!(
        UPDATES_PRODUCED,
        Unit::Count,
        "Updates fetched, generated or read by the producer."
    );
}
