//! The producer's Prometheus series (see `common::metrics` for the conventions).
use std::sync::LazyLock;

use common::metrics::{counter, plain_counter, registered};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

pub use common::metrics::set_total;

/// The one series of a family without labels (families of gauges a service may never set, so
/// that they are rendered only once set).
pub const NO_LABELS: &[&str] = &[];

/// CoinAPI requests by outcome (label `status`: the HTTP status, or `error`).
pub static COINAPI_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_coinapi_requests_total",
        "CoinAPI requests by HTTP status (or error).",
        &["status"],
    )
});

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
    registered(
        IntGaugeVec::new(
            Opts::new(
                "coinstream_coinapi_quota_remaining",
                "CoinAPI's X-RateLimit-Remaining as last seen.",
            ),
            &[],
        )
        .expect("a valid metric"),
    )
});

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

/// Touches these series, so that they are rendered (at 0) from the start.
pub fn init() {
    LazyLock::force(&COINAPI_REQUESTS);
    LazyLock::force(&COINAPI_WS_RECONNECTS);
    LazyLock::force(&COINAPI_QUOTA_REMAINING);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&UPDATES_PRODUCED);
}
