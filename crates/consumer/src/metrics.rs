//! The consumer runtime's Prometheus series (see `common::metrics` for the conventions); the
//! `service` label is added when rendering.
use std::sync::LazyLock;

use common::metrics::{counter, registered, seconds};
use prometheus::{Histogram, IntCounterVec, IntGaugeVec, Opts};

pub use common::metrics::set_total;

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

/// (compaction, transaction markers), passed over with a WARN naming the range.
pub static SKIPPED_OFFSETS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_skipped_offsets_total",
        "Offsets passed over because the broker confirms they hold no message (retention, compaction).",
        &["topic"],
    )
});

/// Messages in the log not yet applied, per partition (MySQL's offset against the high watermark).
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> =
    LazyLock::new(|| {
        registered(IntGaugeVec::new(
        Opts::new(
            "coinstream_consumer_lag_messages",
            "Messages in the log not yet applied: MySQL's offset against the high watermark.",
        ),
        &["topic", "partition"],
    )
    .expect("a valid metric"))
    });

/// Partitions this instance holds.
pub static PARTITIONS_HELD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(
        IntGaugeVec::new(
            Opts::new(
                "coinstream_partitions_held",
                "Partitions this instance holds.",
            ),
            &["topic"],
        )
        .expect("a valid metric"),
    )
});

/// Rejoins of the consumer group by the watchdog.
pub static REJOINS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "coinstream_group_rejoins_total",
        "Rejoins of the consumer group by the watchdog.",
        &["topic"],
    )
});

/// Duration of one write (a batch or a flush: one MySQL transaction, retries included).
pub static WRITE_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    seconds(
        "coinstream_write_duration_seconds",
        "Duration of one write (a MySQL transaction, retries included).",
    )
});

/// The `reason` labels of [`DEAD_LETTERS`] (`dead_letters::Reason`, rendered from the start).
pub const DEAD_LETTER_REASONS: [&str; 3] = ["malformed", "invalid", "rejected"];

/// Touches these series, so that they are rendered (at 0) from the start.
pub fn init() {
    LazyLock::force(&MESSAGES_CONSUMED);
    LazyLock::force(&ROWS_WRITTEN);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&SKIPPED_OFFSETS);
    LazyLock::force(&CONSUMER_LAG);
    LazyLock::force(&PARTITIONS_HELD);
    LazyLock::force(&REJOINS);
    LazyLock::force(&WRITE_DURATION);
    for reason in DEAD_LETTER_REASONS {
        DEAD_LETTERS.with_label_values(&[reason]);
    }
}
