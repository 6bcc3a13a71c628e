//! Metrics in Prometheus text format through the `prometheus` crate, with this process's CPU and
//! memory from its process collector. Names follow Prometheus conventions: `coinstream_` prefix,
//! `_total` counters, base units (`_seconds`, `_messages`), histograms for durations; every series
//! carries a `service` label (added when rendering).
//!
//! Each crate names its own series in its `metrics` module (the consumer runtime's, the
//! aggregator's, the producer's; here only what `common` itself counts) as statics that register
//! themselves in one process-wide registry when first touched: services count whether or not an
//! endpoint serves them (an atomic add, no allocation: the stream aggregator observes one latency
//! per update). Each such module has an `init` that touches its series, so they are rendered (at
//! 0) from the start. Running totals kept elsewhere are copied in with [`set_total`].

use std::sync::LazyLock;

use prometheus::{
    core::{Atomic, Collector, GenericCounter},
    proto::LabelPair,
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The process-wide registry every series registers in.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    let _ = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    r
});

/// Registers `metric` (a clone shares its values) and returns it: for the crates' statics.
pub fn registered<C: Collector + Clone + 'static>(metric: C) -> C {
    if let Err(e) = REGISTRY.register(Box::new(metric.clone())) {
        tracing::warn!(error = %e, "registering a metric");
    }
    metric
}

/// A counter with labels, registered.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"))
}

/// A counter without labels, registered.
pub fn plain_counter(name: &str, help: &str) -> IntCounter {
    registered(IntCounter::new(name, help).expect("a valid metric"))
}

/// A histogram of durations in seconds ([`SECONDS_BUCKETS`]), registered.
pub fn seconds(name: &str, help: &str) -> Histogram {
    registered(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()))
            .expect("a valid metric"),
    )
}

/// Failed write attempts (a MySQL transaction), by kind: `transient` (retried with backoff) or
/// `rejected` (the data was refused: the batch is split to find the rows). Counted by
/// [`crate::retry`].
pub static WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = counter(
        "coinstream_write_failures_total",
        "Failed write attempts by kind: transient (retried) or rejected (the data was refused).",
        &["kind"],
    );
    for kind in ["transient", "rejected"] {
        c.with_label_values(&[kind]);
    }
    c
});

/// Touches `common`'s own series, so that they are rendered from the start.
pub fn init() {
    LazyLock::force(&WRITE_FAILURES);
}

/// Histogram buckets (seconds) of the durations.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Sets a counter to a running total kept elsewhere (never lowers it).
pub fn set_total<P: Atomic<T = u64>>(counter: &GenericCounter<P>, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// What `/metrics` renders: every registered series, each with the `service` label.
#[derive(Debug, Clone)]
pub struct Exporter {
    service: &'static str,
}

impl Exporter {
    /// The exporter of `service`.
    pub fn install(service: &'static str) -> anyhow::Result<Self> {
        init();
        Ok(Exporter { service })
    }

    /// The metrics now, in Prometheus text format.
    pub fn render(&self) -> String {
        let mut families = REGISTRY.gather();
        for family in &mut families {
            for metric in family.mut_metric() {
                let mut labels = metric.get_label().to_vec();
                let mut service = LabelPair::default();
                service.set_name("service".to_owned());
                service.set_value(self.service.to_owned());
                labels.push(service);
                metric.set_label(labels);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
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
        WRITE_FAILURES.with_label_values(&["transient"]).inc_by(3);
        let latency = seconds("test_latency_seconds", "t");
        latency.observe(0.02);
        let text = e.render();
        assert!(
            text.contains(
                "coinstream_write_failures_total{kind=\"transient\",service=\"test-service\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "coinstream_write_failures_total{kind=\"rejected\",service=\"test-service\"} 0"
            ),
            "rendered before the first increment: {text}"
        );
        assert!(
            text.contains("test_latency_seconds_bucket{service=\"test-service\",le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        let c = plain_counter("t_total", "t");
        set_total(&c, 5);
        set_total(&c, 3);
        assert_eq!(c.get(), 5);
    }
}
