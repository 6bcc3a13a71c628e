//! The stream aggregator's own Prometheus series (see `common::metrics` for the conventions).
use std::sync::LazyLock;

use common::metrics::{counter, plain_counter, registered, seconds};
use prometheus::{GaugeVec, Histogram, IntCounter, IntCounterVec, Opts};

pub use common::metrics::set_total;
/// The consumer runtime's write series, which the aggregator's flushes feed too.
pub use consumer::metrics::{ROWS_WRITTEN, WRITE_DURATION};

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

/// only: rendered once set, like the other gauges a service may not have).
pub static WATERMARK_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    registered(
        GaugeVec::new(
            Opts::new(
                "coinstream_watermark_lag_seconds",
                "Largest distance of a held partition's watermark behind the wall clock.",
            ),
            &["topic"],
        )
        .expect("a valid metric"),
    )
});

/// From the producer receiving an update to the commit of the transaction that applied it.
pub static END_TO_END_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    seconds(
        "coinstream_end_to_end_latency_seconds",
        "From the producer receiving an update to the commit that applied it.",
    )
});

/// Touches these series, so that they are rendered (at 0) from the start.
pub fn init() {
    LazyLock::force(&LATE_EVENTS);
    LazyLock::force(&DUPLICATES);
    LazyLock::force(&WINDOWS_EMITTED);
    LazyLock::force(&WATERMARK_LAG);
    LazyLock::force(&END_TO_END_LATENCY);
}
