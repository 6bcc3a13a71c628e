//! Effectively-once ingestion from one Kafka topic into MySQL, shared by raw-consumer and
//! update-counter.
//!
//! Messages are gathered into batches bounded by size and time. One MySQL transaction per batch
//! holds the rows, the dead letters (messages that do not parse) and the partitions' next offsets
//! in `kafka_offsets`. MySQL's offsets are the truth: at the start of a write they are read
//! `FOR UPDATE`, and messages below them (already applied, e.g. re-delivered after a crash between
//! the database commit and the Kafka commit) are skipped. The Kafka group offset is committed after
//! the database commit and is only a hint for where to resume. So a crash at any point loses
//! nothing and applies nothing twice, even for writes that are not idempotent by themselves, and a
//! zombie instance that lost its partitions cannot double-apply: the row lock serializes it with
//! the new owner, and the offsets it then reads make it skip.
//!
//! A database error (unreachable, connection killed mid-batch, deadlock) rolls the transaction back
//! and the batch is retried with backoff; offsets are not committed meanwhile. Partitions revoked
//! in a rebalance have their messages dropped from the pending batch (abandoned cleanly: the new
//! owner resumes from the last committed offset).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use clap::Args;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList,
};
use sqlx::{MySqlConnection, MySqlPool};
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    config::{parse_duration, ConsumerArgs},
    stats::{Counters, StatsRecorder},
};

/// Batching, idling and statistics settings of an ingesting service.
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

/// What a service does with the messages: parse them, and write a batch of parsed rows in the
/// open transaction.
pub trait Sink {
    type Row: Sync;

    /// Parses one message; an error sends it to the dead-letter table with this text.
    fn parse(&self, meta: Meta, payload: &[u8]) -> Result<Self::Row, String>;

    /// Writes rows within the batch's transaction; returns how many rows were sent.
    fn write<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        rows: &'a [&'a Self::Row],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + 'a;
}

enum Content<R> {
    Row(R),
    Dead {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        error: String,
    },
}

struct Item<R> {
    meta: Meta,
    content: Content<R>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestTotals {
    pub messages: u64,
    pub rows_written: u64,
    pub dead_letters: u64,
    /// Messages skipped because MySQL's offsets show them applied already.
    pub already_applied: u64,
    pub batches: u64,
    pub db_retries: u64,
    /// Seconds from the first message received to the last batch committed.
    pub active_seconds: f64,
    /// Seconds spent writing batches to MySQL (successful attempts and retries).
    pub db_seconds: f64,
}

/// A rebalance seen by [`RebalanceLog`].
#[derive(Debug)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context that records rebalances for the ingest loop (callbacks run inside `recv`).
/// Also keeps the consumer lag librdkafka reports in its periodic statistics.
#[derive(Debug)]
pub struct RebalanceLog {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Sum of `consumer_lag` over the assigned partitions; -1 until known.
    lag: AtomicI64,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl Default for RebalanceLog {
    fn default() -> Self {
        RebalanceLog {
            events: Mutex::default(),
            lag: AtomicI64::new(-1),
        }
    }
}

impl ClientContext for RebalanceLog {
    fn stats(&self, statistics: Statistics) {
        let mut known = false;
        let mut lag = 0;
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    known = true;
                    lag += p.consumer_lag;
                }
            }
        }
        self.lag
            .store(if known { lag } else { -1 }, Ordering::Relaxed);
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps = partitions_of(tpl);
            tracing::info!(partitions = ?ps, "partitions revoked");
            self.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(RebalanceEvent::Revoked(ps));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let ps = partitions_of(tpl);
            tracing::info!(partitions = ?ps, "partitions assigned");
            self.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(RebalanceEvent::Assigned(ps));
        }
    }
}

impl RebalanceLog {
    /// The consumer lag librdkafka last reported, summed over assigned partitions.
    pub fn lag(&self) -> Option<i64> {
        let lag = self.lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    /// The rebalances since the last call, in order.
    pub fn drain(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Identity of an ingesting service instance.
#[derive(Debug, Clone)]
pub struct IngestTarget {
    pub service: &'static str,
    pub topic: String,
    pub group: String,
    /// Consumer configuration for `group` (see `KafkaArgs::consumer_config`).
    pub client: ClientConfig,
}

/// Consumes `target.topic` into MySQL through `sink` until shutdown or `--exit-idle`.
pub async fn run<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    target: &IngestTarget,
    args: &IngestArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<IngestTotals> {
    let mut client = target.client.clone();
    args.consumer.apply(&mut client);
    let consumer: StreamConsumer<RebalanceLog> =
        client.create_with_context(RebalanceLog::default())?;
    consumer.subscribe(&[&target.topic])?;
    tracing::info!(topic = %target.topic, group = %target.group, batch_size = args.batch_size, batch_timeout = ?args.batch_timeout, "consuming");

    let mut ingest = Ingest {
        sink,
        pool,
        target,
        consumer: &consumer,
        stored: HashMap::new(),
        batch: Vec::with_capacity(args.batch_size as usize),
        totals: IngestTotals::default(),
        first_message: None,
        assigned_once: false,
        held: 0,
    };
    let recorder = StatsRecorder::new(pool.clone(), target.service);
    let batch_size = args.batch_size as usize;
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut batch_started: Option<Instant> = None;
    let mut last_activity = Instant::now();
    let mut stats_tick = tokio::time::interval(args.consumer.stats_interval);
    stats_tick.tick().await;
    // At most one batch is being written while the next one fills: the database write and the
    // broker fetches overlap.
    let mut in_flight: Option<WriteFuture<'_>> = None;

    loop {
        let batch_due = batch_started.map_or(far, |s| {
            (s + args.batch_timeout).saturating_duration_since(Instant::now())
        });
        let idle_due = match args.consumer.exit_idle {
            Some(d) => (last_activity + d).saturating_duration_since(Instant::now()),
            None => far,
        };
        let full = ingest.batch.len() >= batch_size;
        let idle_possible =
            args.consumer.exit_idle.is_some() && ingest.batch.is_empty() && in_flight.is_none();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                tracing::info!("stopping: writing the current batch");
                if let Some(write) = in_flight.take() {
                    ingest.complete(write.await, false);
                }
                ingest.apply_rebalances();
                if !ingest.batch.is_empty() {
                    let write = ingest.start_write();
                    ingest.complete(write.await, true);
                }
                break;
            }
            done = async { in_flight.as_mut().expect("guarded by is_some").await }, if in_flight.is_some() => {
                in_flight = None;
                ingest.complete(done, false);
                if ingest.batch.len() >= batch_size {
                    in_flight = Some(ingest.start_write());
                    batch_started = None;
                }
            }
            msg = consumer.recv(), if !full => {
                if ingest.apply_rebalances() {
                    last_activity = Instant::now();
                }
                match msg {
                    Ok(m) => {
                        last_activity = Instant::now();
                        let meta = Meta { partition: m.partition(), offset: m.offset() };
                        if ingest.accept(meta).await? {
                            ingest.push(meta, m.key(), m.payload().unwrap_or_default());
                            batch_started.get_or_insert_with(Instant::now);
                        }
                        if ingest.batch.len() >= batch_size && in_flight.is_none() {
                            in_flight = Some(ingest.start_write());
                            batch_started = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            _ = tokio::time::sleep(batch_due), if batch_started.is_some() && in_flight.is_none() => {
                if ingest.apply_rebalances() {
                    last_activity = Instant::now();
                }
                if !ingest.batch.is_empty() {
                    in_flight = Some(ingest.start_write());
                }
                batch_started = None;
            }
            _ = stats_tick.tick() => {
                ingest.report(&recorder).await;
            }
            _ = tokio::time::sleep(idle_due), if idle_possible => {
                // Idle counts from the last message or rebalance, and only once this instance
                // has been given its partitions: a new member waiting for a dead one's session to
                // expire is not caught up.
                let idle = last_activity.elapsed();
                let waited_empty = args.consumer.exit_idle.is_some_and(|d| idle >= d * 3);
                if ingest.apply_rebalances() || !ingest.assigned_once || (ingest.held == 0 && !waited_empty) {
                    // An empty assignment may only mean a dead instance still holds the
                    // partitions: wait for them a while longer before calling it caught up.
                    if ingest.held > 0 || !ingest.assigned_once {
                        last_activity = Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                tracing::info!(idle = ?args.consumer.exit_idle, "caught up and idle: exiting");
                break;
            }
        }
    }
    ingest.report(&recorder).await;
    Ok(ingest.totals)
}

/// A batch being written (with retries) while the next one fills.
type WriteFuture<'a> = Pin<Box<dyn Future<Output = Written> + 'a>>;

/// The result of writing one batch.
struct Written {
    outcome: WriteOutcome,
    retries: u64,
    db_seconds: f64,
}

/// Writes a batch, retrying database errors with backoff until it commits. Offsets are not
/// committed meanwhile; a second signal exits at once if the database never comes back.
async fn write_with_retry<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    target: &IngestTarget,
    batch: Vec<Item<S::Row>>,
) -> Written {
    let mut backoff = Backoff::database();
    let mut retries = 0;
    let mut db_seconds = 0.0;
    loop {
        let started = Instant::now();
        let result = write_batch(sink, pool, target, &batch).await;
        db_seconds += started.elapsed().as_secs_f64();
        match result {
            Ok(outcome) => {
                return Written {
                    outcome,
                    retries,
                    db_seconds,
                }
            }
            Err(e) => {
                retries += 1;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, rows = batch.len(), "writing the batch failed; retrying (offsets not committed)");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

struct Ingest<'a, S: Sink> {
    sink: &'a S,
    pool: &'a MySqlPool,
    target: &'a IngestTarget,
    consumer: &'a StreamConsumer<RebalanceLog>,
    /// MySQL's next offset per assigned partition, once loaded (`None`: no row yet).
    stored: HashMap<i32, Option<i64>>,
    batch: Vec<Item<S::Row>>,
    totals: IngestTotals,
    first_message: Option<Instant>,
    /// Whether this instance has been given partitions at least once (even an empty set).
    assigned_once: bool,
    /// Partitions held now.
    held: usize,
}

impl<'a, S: Sink> Ingest<'a, S> {
    /// Applies rebalances seen since the last call; returns whether there were any.
    fn apply_rebalances(&mut self) -> bool {
        let events = self.consumer.context().drain();
        let any = !events.is_empty();
        for event in events {
            match &event {
                RebalanceEvent::Assigned(ps) => {
                    self.assigned_once = true;
                    self.held = ps.len();
                }
                RebalanceEvent::Revoked(_) => self.held = 0,
            }
            let (RebalanceEvent::Assigned(ps) | RebalanceEvent::Revoked(ps)) = &event;
            for p in ps {
                self.stored.remove(p);
            }
            if let RebalanceEvent::Revoked(ps) = event {
                let before = self.batch.len();
                self.batch.retain(|i| !ps.contains(&i.meta.partition));
                if self.batch.len() < before {
                    tracing::info!(abandoned = before - self.batch.len(), "pending messages of revoked partitions abandoned; their new owner resumes from the committed offset");
                }
            }
        }
        any
    }

    /// Whether a message is new. Loads MySQL's offset for a partition on its first message after
    /// an assignment. Messages below it were applied already and are skipped (read through, not
    /// sought past: seeking a partition right after an assignment has stopped its fetching on
    /// the test broker). A first message beyond MySQL's offset means Kafka's offset was moved
    /// ahead by hand; that is logged loudly.
    async fn accept(&mut self, meta: Meta) -> anyhow::Result<bool> {
        let stored = match self.stored.get(&meta.partition) {
            Some(s) => *s,
            None => {
                let s = self.load_offset(meta.partition).await?;
                self.stored.insert(meta.partition, s);
                if let Some(next) = s {
                    if meta.offset > next {
                        tracing::error!(partition = meta.partition, kafka = meta.offset, mysql = next, "the group's Kafka offset is ahead of MySQL's: messages in between were not ingested by this group (was the offset reset by hand?)");
                    } else if meta.offset < next {
                        tracing::info!(partition = meta.partition, kafka = meta.offset, mysql = next, "skipping messages applied before (MySQL's offset is ahead of Kafka's hint)");
                    }
                }
                s
            }
        };
        if stored.is_some_and(|next| meta.offset < next) {
            self.totals.already_applied += 1;
            return Ok(false);
        }
        Ok(true)
    }

    async fn load_offset(&self, partition: i32) -> anyhow::Result<Option<i64>> {
        let mut backoff = Backoff::database();
        loop {
            let r: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
                "SELECT next_offset FROM kafka_offsets WHERE consumer_group = ? AND topic = ? AND kafka_partition = ?",
            )
            .bind(&self.target.group)
            .bind(&self.target.topic)
            .bind(partition)
            .fetch_optional(self.pool)
            .await;
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "reading stored offsets failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn push(&mut self, meta: Meta, key: Option<&[u8]>, payload: &[u8]) {
        self.totals.messages += 1;
        self.first_message.get_or_insert_with(Instant::now);
        let content = match self.sink.parse(meta, payload) {
            Ok(row) => Content::Row(row),
            Err(error) => {
                tracing::warn!(topic = %self.target.topic, partition = meta.partition, offset = meta.offset, %error, "malformed message: kept in dead_letters");
                Content::Dead {
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    error,
                }
            }
        };
        self.batch.push(Item { meta, content });
    }

    /// Hands the pending batch to a write; the next batch starts empty.
    fn start_write<'f>(&mut self) -> WriteFuture<'f>
    where
        'a: 'f,
    {
        let capacity = self.batch.capacity();
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(capacity));
        Box::pin(write_with_retry(self.sink, self.pool, self.target, batch))
    }

    /// Records a committed batch and commits its offsets to Kafka (a hint; MySQL's count).
    fn complete(&mut self, written: Written, stopping: bool) {
        let o = written.outcome;
        self.totals.batches += 1;
        self.totals.db_retries += written.retries;
        self.totals.db_seconds += written.db_seconds;
        self.totals.rows_written += o.rows;
        self.totals.dead_letters += o.dead;
        self.totals.already_applied += o.already_applied;
        if let Some(first) = self.first_message {
            self.totals.active_seconds = first.elapsed().as_secs_f64();
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &o.next_offsets {
            if self.stored.contains_key(p) {
                self.stored.insert(*p, Some(*next));
            }
            if let Err(e) = tpl.add_partition_offset(&self.target.topic, *p, Offset::Offset(*next))
            {
                tracing::debug!(error = %e, "building the offset commit");
            }
        }
        let mode = if stopping {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::debug!(error = %e, "committing Kafka offsets failed (MySQL holds the offsets that count)");
        }
    }

    async fn report(&self, recorder: &StatsRecorder) {
        let lag = self.lag();
        let mut details = serde_json::Map::new();
        details.insert("already_applied".into(), self.totals.already_applied.into());
        details.insert("batches".into(), self.totals.batches.into());
        details.insert("db_retries".into(), self.totals.db_retries.into());
        let counters = Counters {
            events_in: self.totals.messages,
            events_out: self.totals.rows_written,
            dead_letters: self.totals.dead_letters,
            consumer_lag: lag,
            details,
            ..Counters::default()
        };
        let usage = recorder.record_or_warn(&counters).await;
        tracing::info!(
            messages = self.totals.messages,
            rows_written = self.totals.rows_written,
            dead_letters = self.totals.dead_letters,
            already_applied = self.totals.already_applied,
            db_retries = self.totals.db_retries,
            lag = ?lag,
            active_seconds = self.totals.active_seconds,
            db_seconds = self.totals.db_seconds,
            rows_per_second = if self.totals.active_seconds > 0.0 { (self.totals.rows_written as f64 / self.totals.active_seconds).round() } else { 0.0 },
            cpu_seconds = usage.cpu_seconds,
            peak_rss_mb = usage.peak_rss_bytes as f64 / 1_048_576.0,
            "{} statistics", self.target.service
        );
    }

    /// Messages behind the high watermarks of the assigned partitions, as librdkafka last
    /// reported (its statistics run at the stats interval).
    fn lag(&self) -> Option<i64> {
        let lag = self.consumer.context().lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }
}

struct WriteOutcome {
    rows: u64,
    dead: u64,
    already_applied: u64,
    next_offsets: Vec<(i32, i64)>,
}

/// One transaction: lock the partitions' offsets, skip what they show applied, write rows and
/// dead letters, store the new offsets, commit.
async fn write_batch<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    target: &IngestTarget,
    batch: &[Item<S::Row>],
) -> Result<WriteOutcome, sqlx::Error> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for i in batch {
        let n = next.entry(i.meta.partition).or_insert(i.meta.offset + 1);
        *n = (*n).max(i.meta.offset + 1);
    }
    let mut tx = pool.begin().await?;
    let placeholders = vec!["?"; next.len()].join(",");
    let sql = format!(
        "SELECT kafka_partition, next_offset FROM kafka_offsets \
         WHERE consumer_group = ? AND topic = ? AND kafka_partition IN ({placeholders}) FOR UPDATE"
    );
    let mut q = sqlx::query_as::<_, (i32, i64)>(&sql)
        .bind(&target.group)
        .bind(&target.topic);
    for p in next.keys() {
        q = q.bind(*p);
    }
    let stored: HashMap<i32, i64> = q.fetch_all(&mut *tx).await?.into_iter().collect();
    let is_new = |m: &Meta| stored.get(&m.partition).is_none_or(|s| m.offset >= *s);

    let rows: Vec<&S::Row> = batch
        .iter()
        .filter(|i| is_new(&i.meta))
        .filter_map(|i| match &i.content {
            Content::Row(r) => Some(r),
            Content::Dead { .. } => None,
        })
        .collect();
    let dead: Vec<&Item<S::Row>> = batch
        .iter()
        .filter(|i| is_new(&i.meta) && matches!(i.content, Content::Dead { .. }))
        .collect();
    let already_applied = (batch.len() - rows.len() - dead.len()) as u64;
    let written = if rows.is_empty() {
        0
    } else {
        sink.write(&mut tx, &rows).await?
    };
    for item in &dead {
        let Content::Dead {
            key,
            payload,
            error,
        } = &item.content
        else {
            continue;
        };
        let meta = &item.meta;
        sqlx::query(
            "INSERT INTO dead_letters (service, topic, kafka_partition, kafka_offset, message_key, payload, error) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id",
        )
        .bind(target.service)
        .bind(&target.topic)
        .bind(meta.partition)
        .bind(meta.offset)
        .bind(key.as_deref())
        .bind(payload.as_slice())
        .bind(error.as_str())
        .execute(&mut *tx)
        .await?;
    }
    let next_offsets: Vec<(i32, i64)> = next
        .into_iter()
        .map(|(p, n)| (p, stored.get(&p).map_or(n, |s| n.max(*s))))
        .collect();
    let values = vec!["(?, ?, ?, ?, UTC_TIMESTAMP(6))"; next_offsets.len()].join(",");
    let sql = format!(
        "INSERT INTO kafka_offsets (consumer_group, topic, kafka_partition, next_offset, updated_at) VALUES {values} \
         ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = VALUES(updated_at)"
    );
    let mut q = sqlx::query(&sql);
    for (p, n) in &next_offsets {
        q = q.bind(&target.group).bind(&target.topic).bind(*p).bind(*n);
    }
    q.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(WriteOutcome {
        rows: written,
        dead: dead.len() as u64,
        already_applied,
        next_offsets,
    })
}
