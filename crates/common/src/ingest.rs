//! Batch ingestion of one topic into MySQL, shared by raw-consumer and update-counter: a
//! [`Processor`] for the consumer runtime (`crate::consumer`) over a service's [`Sink`], which
//! only parses messages and writes rows.
//!
//! Messages are parsed into rows (or dead letters) and gathered into batches bounded by size and
//! time. One MySQL transaction per batch locks the partitions' offsets in `kafka_offsets`, skips
//! what they show applied already (a former owner of the partition wrote it), writes the rows and
//! dead letters and stores the new offsets. So even writes that are not idempotent by themselves
//! are applied once. A database error rolls the batch back and it is retried with backoff.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use sqlx::{Executor, MySqlPool};

use crate::{
    backoff::Backoff,
    config::{parse_duration, ConsumerArgs, KafkaArgs, MySqlArgs},
    consumer::{
        dead_letters::{self, DeadLetter},
        offsets::OffsetStore,
        probe::Probe,
        Msg, Processor, Target, WriteTask,
    },
    metrics as m,
    stats::{ConsumerFigures, Counters, Details, IngestFigures, StatsRecorder},
    Context,
};

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
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub partition: i32,
    pub offset: i64,
}

/// What a service does with its messages: parse them, and say in SQL how to write a batch of
/// rows. Both are pure; the ingest runs the statements in the batch's transaction.
pub trait Sink: Send + Sync + 'static {
    type Row: Send + Sync + 'static;

    /// The table the rows go to (the `table` label of the rows-written metric).
    const TABLE: &'static str;

    /// Parses one message; an error sends it to the dead-letter table with this text.
    fn parse(&self, meta: Meta, payload: &[u8]) -> Result<Self::Row, String>;

    /// The statements that write `rows`, run in order in the batch's transaction. They are text
    /// (the text protocol skips a prepare per statement shape), so every value in them must be
    /// a validated type formatted by the service (asset ids, numbers, times), never raw input.
    fn statements(&self, rows: &[&Self::Row]) -> Statements;
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

/// What one batch's transaction did.
#[derive(Debug)]
pub struct Written {
    rows: u64,
    dead: u64,
    /// Messages the locked offsets showed applied already.
    fenced: u64,
    next_offsets: Vec<(i32, i64)>,
    retries: u64,
    db_seconds: f64,
}

/// The ingestion processor: batches of a [`Sink`]'s rows.
pub struct Ingest<S: Sink> {
    sink: Arc<S>,
    pool: MySqlPool,
    service: &'static str,
    store: OffsetStore,
    batch: Vec<Item<S::Row>>,
    batch_started: Option<Instant>,
    batch_size: usize,
    batch_timeout: Duration,
    figures: IngestFigures,
}

impl<S: Sink> std::fmt::Debug for Ingest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("service", &self.service)
            .field("store", &self.store)
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
/// or drained; the totals are logged at the end.
pub async fn serve<S: Sink>(
    sink: S,
    service: Service<'_>,
    args: &IngestArgs,
    ctx: Context,
) -> anyhow::Result<()> {
    let pool = crate::prepare(service.mysql, Some((service.kafka, &[service.topic]))).await?;
    let target = Target::new(
        service.name,
        service.topic,
        service.group,
        service.kafka,
        &args.consumer,
        &[],
    )?;
    let result = run(sink, &pool, &target, args, &ctx).await;
    if let Ok((consumer, ingest)) = &result {
        tracing::info!(?consumer, ?ingest, "{} stopped", service.name);
    }
    pool.close().await;
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
        sink: Arc::new(sink),
        pool: pool.clone(),
        service: target.service,
        store: OffsetStore::new(&target.group, &target.topic),
        batch: Vec::with_capacity(args.batch_size as usize),
        batch_started: None,
        batch_size: args.batch_size as usize,
        batch_timeout: args.batch_timeout,
        figures: IngestFigures::default(),
    };
    let figures = crate::consumer::run(&mut ingest, target, pool, &args.consumer, ctx).await?;
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
        };
        let content = match self.sink.parse(meta, msg.payload) {
            Ok(row) => Content::Row(row),
            Err(error) => Content::Dead(DeadLetter::found(
                self.store.topic(),
                msg.partition,
                msg.offset,
                msg.key,
                msg.payload,
                error,
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
        let (sink, pool, store) = (self.sink.clone(), self.pool.clone(), self.store.clone());
        let service = self.service;
        Ok(Some(Box::pin(async move {
            Ok(write_with_retry(&*sink, &pool, service, &store, batch).await)
        })))
    }

    async fn write_done(&mut self, w: Written) -> anyhow::Result<Vec<(i32, i64)>> {
        m::ROWS_WRITTEN
            .with_label_values(&[S::TABLE])
            .inc_by(w.rows);
        m::DEAD_LETTERS.inc_by(w.dead);
        m::WRITE_DURATION.observe(w.db_seconds);
        let f = &mut self.figures;
        f.rows_written += w.rows;
        f.dead_letters += w.dead;
        f.fenced += w.fenced;
        f.db_retries += w.retries;
        f.db_seconds += w.db_seconds;
        Ok(w.next_offsets)
    }

    async fn report(&self, recorder: &StatsRecorder, runtime: &ConsumerFigures) {
        let f = &self.figures;
        let counters = Counters {
            events_in: runtime.messages,
            events_out: f.rows_written,
            dead_letters: f.dead_letters,
            consumer_lag: runtime.lag,
            details: Details {
                consumer: Some(runtime.clone()),
                ingest: Some(f.clone()),
                ..Details::default()
            },
            ..Counters::default()
        };
        let usage = recorder.record_or_warn(&counters).await;
        let active = runtime.active_seconds;
        tracing::info!(
            messages = runtime.messages,
            rows_written = f.rows_written,
            dead_letters = f.dead_letters,
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
            "{} statistics", self.service
        );
    }
}

/// Writes a batch, retrying database errors with backoff until it commits. Offsets are not
/// committed meanwhile; a second signal exits at once if the database never comes back.
async fn write_with_retry<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    service: &str,
    store: &OffsetStore,
    batch: Vec<Item<S::Row>>,
) -> Written {
    let mut backoff = Backoff::database();
    let mut retries = 0;
    let mut db_seconds = 0.0;
    loop {
        let started = Instant::now();
        let result = write_batch(sink, pool, service, store, &batch).await;
        db_seconds += started.elapsed().as_secs_f64();
        match result {
            Ok(mut w) => {
                w.retries = retries;
                w.db_seconds = db_seconds;
                return w;
            }
            Err(e) => {
                retries += 1;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, messages = batch.len(), "writing the batch failed; retrying (offsets not committed)");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One transaction: lock the partitions' offsets, skip what they show applied, write rows and
/// dead letters, store the new offsets, commit.
async fn write_batch<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    service: &str,
    store: &OffsetStore,
    batch: &[Item<S::Row>],
) -> Result<Written, sqlx::Error> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for i in batch {
        let n = next.entry(i.meta.partition).or_insert(i.meta.offset + 1);
        *n = (*n).max(i.meta.offset + 1);
    }
    let mut tx = pool.begin().await?;
    let partitions: Vec<i32> = next.keys().copied().collect();
    let stored = store.lock(&mut tx, &partitions).await?;
    let new: Vec<&Item<S::Row>> = batch
        .iter()
        .filter(|i| {
            stored
                .get(&i.meta.partition)
                .is_none_or(|s| i.meta.offset >= *s)
        })
        .collect();
    let rows: Vec<&S::Row> = new
        .iter()
        .filter_map(|i| match &i.content {
            Content::Row(r) => Some(r),
            Content::Dead(_) => None,
        })
        .collect();
    let dead: Vec<&DeadLetter> = new
        .iter()
        .filter_map(|i| match &i.content {
            Content::Dead(d) => Some(d),
            Content::Row(_) => None,
        })
        .collect();
    let statements = if rows.is_empty() {
        Statements::default()
    } else {
        sink.statements(&rows)
    };
    for sql in &statements.sql {
        // Through `Executor`: the future of `RawSql::execute` is not provably `Send`.
        tx.execute(sqlx::raw_sql(sql)).await?;
    }
    dead_letters::insert(&mut tx, service, store.topic(), &dead).await?;
    let next_offsets: Vec<(i32, i64)> = next
        .into_iter()
        .map(|(p, n)| (p, stored.get(&p).map_or(n, |s| n.max(*s))))
        .collect();
    store.store(&mut tx, &next_offsets).await?;
    tx.commit().await?;
    Ok(Written {
        rows: statements.rows,
        dead: dead.len() as u64,
        fenced: (batch.len() - new.len()) as u64,
        next_offsets,
        retries: 0,
        db_seconds: 0.0,
    })
}
