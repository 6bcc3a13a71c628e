//! Batch ingestion of one topic into MySQL, shared by raw-consumer and update-counter: a
//! [`Processor`] for the consumer runtime (`crate::consumer`) over a service's [`Sink`], which
//! only parses messages and writes rows.
//!
//! Messages are parsed into rows (or dead letters) and gathered into batches bounded by size and
//! time. One MySQL transaction per batch locks the partitions' offsets in `kafka_offsets`, skips
//! what they show applied already (a former owner of the partition wrote it, or an attempt whose
//! COMMIT reply was lost), writes the rows and dead letters and stores the new offsets. So even
//! writes that are not idempotent by themselves are applied once. How a failed write goes on
//! ([`write`]): a transient database error is retried with backoff; a batch the database refuses
//! for its data is split until the refused rows are found, and exactly those are kept as dead
//! letters (reason `rejected`) while the rest is written. [`replay`] applies dead letters again
//! after a fix.

mod replay;
mod write;

use crate::ConsumerArgs;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use sqlx::MySqlPool;

use crate::{
    dead_letters::{self, DeadLetter, Refusal, ReplayArgs},
    fetch::Fetcher,
    metrics as m,
    offsets::OffsetStore,
    probe::Probe,
    Msg, Processor, Target, WriteOutcome, WriteTask,
};
use common::{
    config::{parse_duration, KafkaArgs, MySqlArgs},
    figures::{ConsumerFigures, Figures, FiguresRecorder, IngestFigures, SpecificFigures},
    observe::Health,
    retention::{self, Prune, RetentionArgs},
    Context,
};

pub use write::Written;

/// Batching settings of an ingesting service, and the shared consumer settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Ingestion")]
pub struct IngestArgs {
    /// Most messages in one database transaction.
    #[arg(long = "batch-size", env = "BATCH_SIZE", value_name = "BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,
    /// Longest a message waits in a batch before the batch is written.
    #[arg(long = "batch-timeout", env = "BATCH_TIMEOUT", value_name = "BATCH_TIMEOUT", default_value = "200ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub replay: ReplayArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp (milliseconds since the epoch), when the broker gave one.
    pub published_ms: Option<i64>,
}

/// What a service does with its messages: parse them, and say in SQL how to write a batch of
/// rows. Both are pure; the ingest runs the statements in the batch's transaction.
pub trait Sink: Send + Sync + 'static {
    type Row: Send + Sync + 'static;

    /// The table the rows go to (the `table` label of the rows-written metric).
    const TABLE: &'static str;

    /// Parses one message; a refusal sends it to the dead-letter table with its reason and text.
    /// Whatever it accepts must be storable (values in the columns' ranges).
    fn parse(&self, meta: Meta, payload: &[u8]) -> Result<Self::Row, Refusal>;

    /// The statements that write `rows`, run in order in the batch's transaction. They are text
    /// (the text protocol skips a prepare per statement shape), so every value in them must be
    /// a validated type formatted by the service (asset ids, numbers, times), never raw input.
    fn statements(&self, rows: &[&Self::Row]) -> Statements;

    /// The service's own table as retention prunes it (`--retention`); its statistics and dead
    /// letters are pruned besides.
    fn retained(&self) -> Vec<Prune>;
}

/// SQL that writes a batch's rows, and how many table rows it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statements {
    pub sql: Vec<String>,
    pub rows: u64,
}

enum Content<R> {
    Row(R),
    Dead(DeadLetter),
}

struct Item<R> {
    meta: Meta,
    content: Content<R>,
}

/// What every write of a service shares.
struct Writer<S> {
    sink: S,
    pool: MySqlPool,
    service: &'static str,
    store: OffsetStore,
    health: Arc<Health>,
    /// Reads a refused row's message again (to keep it whole as a dead letter).
    fetcher: Fetcher,
}

/// The ingestion processor: batches of a [`Sink`]'s rows.
pub struct Ingest<S: Sink> {
    writer: Arc<Writer<S>>,
    batch: Vec<Item<S::Row>>,
    batch_started: Option<Instant>,
    batch_size: usize,
    batch_timeout: Duration,
    figures: IngestFigures,
}

impl<S: Sink> std::fmt::Debug for Ingest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("service", &self.writer.service)
            .field("store", &self.writer.store)
            .field("pending", &self.batch.len())
            .finish()
    }
}

/// An ingesting service's identity and connections.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    pub name: &'static str,
    pub topic: &'a str,
    pub group: &'a str,
    pub kafka: &'a KafkaArgs,
    pub mysql: &'a MySqlArgs,
}

/// A whole ingesting service: MySQL migrated and the topic present, then [`run`] until shutdown
/// or drained; the totals are logged at the end. With `--replay-dead-letters` (or
/// `--list-dead-letters`) it does that instead and exits.
pub async fn serve<S: Sink>(
    sink: S,
    service: Service<'_>,
    args: &IngestArgs,
    ctx: Context,
) -> anyhow::Result<()> {
    if args.replay.any() {
        let pool = common::prepare(service.mysql, None).await?;
        let store = OffsetStore::new(service.group, service.topic);
        let result = if args.replay.list {
            dead_letters::list(&pool, service.name, service.group, &args.replay).await
        } else {
            replay::replay(&sink, &pool, service.name, &store, &args.replay, &ctx).await
        };
        common::db::close(&pool).await;
        return result;
    }
    let pool = common::prepare(service.mysql, Some((service.kafka, &[service.topic]))).await?;
    let target = Target::new(
        service.name,
        service.topic,
        service.group,
        service.kafka,
        &args.consumer,
        &[],
    )?;
    let mut pruned = sink.retained();
    pruned.extend(crate::own_rows(service.name, service.group));
    let pruner = retention::spawn(pool.clone(), &args.retention, pruned, ctx.shutdown.clone());
    let result = run(sink, &pool, &target, args, &ctx).await;
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    if let Ok((consumer, ingest)) = &result {
        tracing::info!(?consumer, ?ingest, "{} stopped", service.name);
    }
    common::db::close(&pool).await;
    result.map(|_| ())
}

/// Consumes `target.topic` into MySQL through `sink` until shutdown or drained (`--exit-idle`).
pub async fn run<S: Sink>(
    sink: S,
    pool: &MySqlPool,
    target: &Target,
    args: &IngestArgs,
    ctx: &Context,
) -> anyhow::Result<(ConsumerFigures, IngestFigures)> {
    tracing::info!(batch_size = args.batch_size, batch_timeout = ?args.batch_timeout, "ingesting");
    let mut ingest = Ingest {
        writer: Arc::new(Writer {
            sink,
            pool: pool.clone(),
            service: target.service,
            store: OffsetStore::new(&target.group, &target.topic),
            health: ctx.health.clone(),
            fetcher: Fetcher::new(&target.client, &target.topic),
        }),
        batch: Vec::with_capacity(args.batch_size as usize),
        batch_started: None,
        batch_size: args.batch_size as usize,
        batch_timeout: args.batch_timeout,
        figures: IngestFigures::default(),
    };
    let figures = crate::run(&mut ingest, target, pool, &args.consumer, ctx).await?;
    Ok((figures, ingest.figures))
}

impl<S: Sink> Processor for Ingest<S> {
    type Written = Written;

    async fn assigned(&mut self, _offsets: &mut BTreeMap<i32, Option<i64>>) -> anyhow::Result<()> {
        Ok(())
    }

    fn revoked(&mut self, partitions: &[i32]) {
        let before = self.batch.len();
        self.batch
            .retain(|i| !partitions.contains(&i.meta.partition));
        if self.batch.len() < before {
            tracing::info!(abandoned = before - self.batch.len(), "pending messages of revoked partitions abandoned; their new owner reads them again");
        }
        if self.batch.is_empty() {
            self.batch_started = None;
        }
    }

    fn handle(&mut self, msg: Msg<'_>) {
        let meta = Meta {
            partition: msg.partition,
            offset: msg.offset,
            published_ms: msg.published_ms,
        };
        let content = match self.writer.sink.parse(meta, msg.payload) {
            Ok(row) => Content::Row(row),
            Err(refusal) => Content::Dead(DeadLetter::found(
                msg.source(self.writer.store.topic()),
                refusal,
            )),
        };
        self.batch.push(Item { meta, content });
        self.batch_started.get_or_insert(msg.received);
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.batch_started.map(|s| s + self.batch_timeout)
    }

    fn write_due(&self) -> bool {
        self.batch.len() >= self.batch_size
    }

    fn start_write(
        &mut self,
        _probe: Option<&Probe>,
    ) -> anyhow::Result<Option<WriteTask<Written>>> {
        self.batch_started = None;
        if self.batch.is_empty() {
            return Ok(None);
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        let writer = self.writer.clone();
        Ok(Some(Box::pin(async move { writer.write_all(batch).await })))
    }

    async fn write_done(&mut self, w: Written) -> anyhow::Result<WriteOutcome> {
        m::ROWS_WRITTEN
            .with_label_values(&[S::TABLE])
            .inc_by(w.rows);
        m::WRITE_DURATION.observe(w.db_seconds);
        let f = &mut self.figures;
        f.rows_written += w.rows;
        f.dead_letters += w.dead;
        f.rejected += w.rejected;
        f.fenced += w.fenced;
        f.db_retries += w.retries;
        f.db_seconds += w.db_seconds;
        Ok(WriteOutcome::committed(w.next_offsets))
    }

    fn report(&self, recorder: &FiguresRecorder, runtime: &ConsumerFigures) {
        let f = &self.figures;
        let counters = Figures {
            events_in: runtime.messages,
            events_out: f.rows_written,
            dead_letters: f.dead_letters,
            consumer_lag: runtime.lag,
            details: SpecificFigures {
                consumer: Some(runtime.clone()),
                ingest: Some(f.clone()),
                ..SpecificFigures::default()
            },
            ..Figures::default()
        };
        let usage = recorder.submit(counters);
        let active = runtime.active_seconds;
        tracing::info!(
            messages = runtime.messages,
            rows_written = f.rows_written,
            dead_letters = f.dead_letters,
            rejected = f.rejected,
            already_applied = runtime.already_applied + f.fenced,
            db_retries = f.db_retries,
            lag = ?runtime.lag,
            partitions = runtime.partitions_held,
            rejoins = runtime.rejoins,
            active_seconds = active,
            db_seconds = f.db_seconds,
            rows_per_second = if active > 0.0 { (f.rows_written as f64 / active).round() } else { 0.0 },
            cpu_seconds = usage.cpu_seconds,
            peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
            "{} statistics", self.writer.service
        );
    }
}
