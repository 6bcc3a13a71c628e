//! stream-aggregator: event-time windowed aggregation of `raw_coin_data` into table `stream_agg`
//! and topic `aggregated_data`, exactly once in MySQL.
//!
//! The consume loop is the shared consumer runtime (`common::consumer`: offsets, rebalances,
//! watchdog, drained exit); the aggregator is its [`aggregator::Aggregator`] processor:
//!
//! - [`engine`]: the pure window engine, one per Kafka partition (a pair lives on one
//!   partition); semantics in its docs and the README.
//! - [`partitions`]: ownership. An assigned partition is restored from MySQL, which also claims
//!   it (an ownership epoch that fences every earlier owner's writes, including one in flight).
//!   Its flushes (`aggregator::flush`): every `--flush-interval` one transaction holds the
//!   `stream_agg` upserts, late events, dead letters, the duplicate log, each touched partition's
//!   open-window state, its next offset and the emissions as an outbox; written in the background.
//! - [`outbox`]: after the commit the emissions are published to the output topic (at least
//!   once: the outbox is re-published after a crash).
//! - [`probation`]: a flush the database refused, narrowed down to the messages behind it.
//! - [`replay`]: `--replay-dead-letters`, the partition's letters applied to its stored state.
//! - [`store`]: the MySQL side and the stored formats; [`figures`]: figures and latency;
//!   [`metrics`]: the aggregator's own Prometheus series.

pub mod aggregator;
pub mod engine;
pub mod figures;
pub mod metrics;
pub mod outbox;
pub mod partitions;
pub mod probation;
pub mod replay;
mod seen_times;
pub mod settings;
pub mod store;

use std::time::Duration;

use common::{
    retention::{self, Prune},
    Context,
};
use consumer::{offsets::OffsetStore, Target};
use rdkafka::producer::FutureProducer;

pub use settings::Settings;

use crate::{
    aggregator::Aggregator,
    engine::{Mode, Specs},
    outbox::Outbox,
};

const SERVICE: &str = "stream-aggregator";

/// How long a stop waits for the deliveries of published results (those not confirmed are
/// published again from the outbox at the next start).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Consumer settings of the aggregator, over the shared ones (which bound the prefetch to 2 MB and
/// return an empty fetch within 10 ms). Memory: librdkafka keeps a ~200-byte operation per
/// prefetched message besides the message, and up to 100,000 messages per partition by default;
/// fewer (re-filled every 5 ms) keep the aggregator under 50 MB at full speed
/// (docs/benchmarks.md).
const TUNING: [(&str, &str); 2] = [
    ("queued.min.messages", "20000"),
    ("fetch.queue.backoff.ms", "5"),
];

/// What the aggregator's parts need of the settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The consumer group: the key of the state, and of every row and message written.
    pub group: std::sync::Arc<str>,
    pub specs: Specs,
    pub lateness_us: i64,
    /// Allowed lateness (µs): closed windows take updates this long after the watermark.
    pub allowed_us: i64,
    pub mode: Mode,
    pub idle_timeout: Duration,
    pub flush_interval: Duration,
}

/// Runs the aggregator until `shutdown` (or drained, `--exit-idle`).
pub async fn run(settings: Settings, ctx: Context) -> anyhow::Result<()> {
    metrics::init();
    let config = Config {
        group: settings.group.as_str().into(),
        specs: settings.specs()?,
        lateness_us: settings.lateness_us(),
        allowed_us: settings.allowed_lateness_us(),
        mode: settings.engine_mode(),
        idle_timeout: settings.idle_timeout,
        flush_interval: settings.flush_interval,
    };
    if settings.replay.any() {
        return replay::command(&settings, &config, &ctx).await;
    }
    let topics = [settings.topic.as_str(), settings.output_topic.as_str()];
    let pool = common::prepare(&settings.mysql, Some((&settings.kafka, &topics))).await?;
    store::record_specs(&pool, &config, settings.mode).await?;
    let target = Target::new(
        SERVICE,
        &settings.topic,
        &settings.group,
        &settings.kafka,
        &settings.consumer,
        &TUNING,
    )?;
    let producer: FutureProducer = settings.kafka.producer_config()?.create()?;
    tracing::info!(
        output = %settings.output_topic,
        windows = %config.specs.list().iter().map(|s| s.label()).collect::<Vec<_>>().join(","),
        watermark = ?settings.watermark, allowed_lateness = ?settings.allowed_lateness, mode = ?settings.mode,
        flush_interval = ?settings.flush_interval, "aggregating"
    );
    let offsets = OffsetStore::new(&settings.group, &settings.topic);
    let outbox = Outbox::new(producer, &settings.output_topic);
    let pruner = retention::spawn(
        pool.clone(),
        &settings.retention,
        retained(&settings.group),
        ctx.shutdown.clone(),
    );
    let mut aggregator =
        Aggregator::new(config, pool.clone(), offsets, outbox, ctx.health.clone())?;
    let result = consumer::run(&mut aggregator, &target, &pool, &settings.consumer, &ctx).await;
    aggregator.settle(SETTLE_LIMIT);
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    tracing::info!(figures = ?aggregator.figures(), "stream-aggregator stopped");
    common::db::close(&pool).await;
    result.map(|_| ())
}

/// What retention prunes of the group's rows: windows that ended before the cutoff, late events
/// recorded before it, and its statistics and dead letters.
fn retained(group: &str) -> Vec<Prune> {
    let mut jobs = vec![
        Prune::new("stream_agg", "end_time").scoped("consumer_group", group),
        Prune::new("late_events", "recorded_at").scoped("consumer_group", group),
    ];
    jobs.extend(consumer::own_rows(SERVICE, group));
    jobs
}
