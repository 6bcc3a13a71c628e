//! Metrics in Prometheus text format through the `prometheus` crate, with this process's CPU and
//! memory from its process collector. One place names them all, by Prometheus conventions:
//! `coinstream_` prefix, `_total` counters, base units (`_seconds`, `_messages`), histograms for
//! durations; every series carries a `service` label (added by the registry).
//!
//! The handles are statics: services count whether or not an endpoint serves them (an atomic add,
//! no allocation: the stream aggregator observes one latency per update), and
//! [`Exporter::install`] registers them once for `/metrics`. Running totals kept elsewhere are
//! copied in with [`set_total`] at the runtime's probe (every second).

use std::{collections::HashMap, sync::LazyLock};

use prometheus::{
    core::{Atomic, GenericCounter},
    Encoder as _, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

fn plain_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("a valid metric")
}

fn seconds(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()))
        .expect("a valid metric")
}

/// Messages received and new to the consumer group (label `topic`).
pub static MESSAGES_CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_messages_consumed_total",
        "Messages received and new to the consumer group.",
        &["topic"],
    )
});
/// Rows written to MySQL (label `table`).
pub static ROWS_WRITTEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_rows_written_total",
        "Rows written to MySQL.",
        &["table"],
    )
});
/// Messages kept in `dead_letters`, by reason (`malformed`, `invalid`, `rejected`).
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_dead_letters_total",
        "Messages kept in dead_letters, by reason (malformed, invalid, rejected).",
        &["reason"],
    )
});
/// Failed write attempts (a MySQL transaction), by kind: `transient` (retried with backoff) or
/// `rejected` (the data was refused: the batch is split to find the rows).
pub static WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_write_failures_total",
        "Failed write attempts by kind: transient (retried) or rejected (the data was refused).",
        &["kind"],
    )
});
/// Offsets the broker no longer holds (deleted by retention) or never held as messages
/// (compaction, transaction markers), passed over with a WARN naming the range.
pub static SKIPPED_OFFSETS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_skipped_offsets_total",
        "Offsets passed over because the broker confirms they hold no message (retention, compaction).",
        &["topic"],
    )
});
/// Events later than the watermark for all (`applied="false"`) or some of their windows.
pub static LATE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_late_events_total",
        "Events later than the watermark for all (applied=false) or some of their windows.",
        &["applied"],
    )
});
/// Events whose (pair, time) was seen before.
pub static DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "coinstream_duplicates_total",
        "Events whose (pair, time) was seen before.",
    )
});
/// Window results written and published.
pub static WINDOWS_EMITTED: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "coinstream_windows_emitted_total",
        "Window results written and published.",
    )
});
/// Messages in the log not yet applied, per partition (MySQL's offset against the high watermark).
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "coinstream_consumer_lag_messages",
            "Messages in the log not yet applied: MySQL's offset against the high watermark.",
        ),
        &["topic", "partition"],
    )
    .expect("a valid metric")
});
/// Partitions this instance holds.
pub static PARTITIONS_HELD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "coinstream_partitions_held",
            "Partitions this instance holds.",
        ),
        &["topic"],
    )
    .expect("a valid metric")
});
/// Rejoins of the consumer group by the watchdog.
pub static REJOINS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_group_rejoins_total",
        "Rejoins of the consumer group by the watchdog.",
        &["topic"],
    )
});
/// Largest distance of a held partition's watermark behind the wall clock (the aggregator's
/// only: rendered once set, like the other gauges a service may not have).
pub static WATERMARK_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    GaugeVec::new(
        Opts::new(
            "coinstream_watermark_lag_seconds",
            "Largest distance of a held partition's watermark behind the wall clock.",
        ),
        &["topic"],
    )
    .expect("a valid metric")
});
/// Duration of one write (a batch or a flush: one MySQL transaction, retries included).
pub static WRITE_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    seconds(
        "coinstream_write_duration_seconds",
        "Duration of one write (a MySQL transaction, retries included).",
    )
});
/// From the producer receiving an update to the commit of the transaction that applied it.
pub static END_TO_END_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    seconds(
        "coinstream_end_to_end_latency_seconds",
        "From the producer receiving an update to the commit that applied it.",
    )
});
/// CoinAPI requests by outcome (label `status`: the HTTP status, or `error`).
pub static COINAPI_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_coinapi_requests_total",
        "CoinAPI requests by HTTP status (or error).",
        &["status"],
    )
});
/// CoinAPI WebSocket connections opened again, by reason (`lost`: closed, failed or silent;
/// `requested`: the server's `reconnect` message).
pub static COINAPI_WS_RECONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_coinapi_ws_reconnects_total",
        "CoinAPI WebSocket reconnections by reason.",
        &["reason"],
    )
});
/// CoinAPI's `X-RateLimit-Remaining` as last seen (rendered once seen).
pub static COINAPI_QUOTA_REMAINING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "coinstream_coinapi_quota_remaining",
            "CoinAPI's X-RateLimit-Remaining as last seen.",
        ),
        &[],
    )
    .expect("a valid metric")
});

/// The one series of a family without labels (families of gauges a service may never set, so
/// that they are rendered only once set).
pub const NO_LABELS: &[&str] = &[];
/// Deliveries to the broker by result (label `result`: `delivered` or `failed`).
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_deliveries_total",
        "Deliveries to the broker by result.",
        &["result"],
    )
});
/// Updates fetched, generated or read by the producer.
pub static UPDATES_PRODUCED: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "coinstream_updates_produced_total",
        "Updates fetched, generated or read by the producer.",
    )
});

/// Histogram buckets (seconds) of the durations.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Sets a counter to a running total kept elsewhere (never lowers it).
pub fn set_total<P: Atomic<T = u64>>(counter: &GenericCounter<P>, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// The registry `/metrics` renders: every metric above and the process collector, labelled with
/// the service.
#[derive(Clone)]
pub struct Exporter {
    registry: Registry,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// The registry for `service`.
    pub fn install(service: &'static str) -> anyhow::Result<Self> {
        // Labelled counters whose label values are known: rendered (at 0) from the start, so a
        // rate over them has a series before the first increment.
        for reason in ["malformed", "invalid", "rejected"] {
            DEAD_LETTERS.with_label_values(&[reason]);
        }
        for kind in ["transient", "rejected"] {
            WRITE_FAILURES.with_label_values(&[kind]);
        }
        let labels = HashMap::from([("service".to_string(), service.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(MESSAGES_CONSUMED.clone()))?;
        registry.register(Box::new(ROWS_WRITTEN.clone()))?;
        registry.register(Box::new(DEAD_LETTERS.clone()))?;
        registry.register(Box::new(WRITE_FAILURES.clone()))?;
        registry.register(Box::new(SKIPPED_OFFSETS.clone()))?;
        registry.register(Box::new(LATE_EVENTS.clone()))?;
        registry.register(Box::new(DUPLICATES.clone()))?;
        registry.register(Box::new(WINDOWS_EMITTED.clone()))?;
        registry.register(Box::new(CONSUMER_LAG.clone()))?;
        registry.register(Box::new(PARTITIONS_HELD.clone()))?;
        registry.register(Box::new(REJOINS.clone()))?;
        registry.register(Box::new(WATERMARK_LAG.clone()))?;
        registry.register(Box::new(WRITE_DURATION.clone()))?;
        registry.register(Box::new(END_TO_END_LATENCY.clone()))?;
        registry.register(Box::new(COINAPI_REQUESTS.clone()))?;
        registry.register(Box::new(COINAPI_QUOTA_REMAINING.clone()))?;
        registry.register(Box::new(COINAPI_WS_RECONNECTS.clone()))?;
        registry.register(Box::new(DELIVERIES.clone()))?;
        registry.register(Box::new(UPDATES_PRODUCED.clone()))?;
        Ok(Exporter { registry })
    }

    /// The metrics now, in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "rendering the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_service_label() {
        let e = Exporter::install("test-service").unwrap();
        ROWS_WRITTEN.with_label_values(&["raw_coin_data"]).inc_by(3);
        END_TO_END_LATENCY.observe(0.02);
        let text = e.render();
        assert!(
            text.contains(
                "coinstream_rows_written_total{table=\"raw_coin_data\",service=\"test-service\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("coinstream_end_to_end_latency_seconds_bucket{service=\"test-service\",le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        let c = plain_counter("t_total", "t");
        set_total(&c, 5);
        set_total(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
