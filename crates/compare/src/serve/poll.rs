//! The poller: reads what changed since the last tick and pushes it. Each tick's reads are one
//! consistent snapshot ([`Snapshot`]), so the stream rows, raw rows, late events and the
//! consumers' offsets it sees are of one moment.
//!
//! - `stream_agg` by `updated_at` (its index), from the database's clock at the previous tick's
//!   snapshot less a margin, so that a transaction that committed after a later one is not
//!   missed (and a row stamped ahead of the clock hides nothing); rows that did not change are
//!   dropped by [`Live`];
//! - `raw_coin_data` and `late_events` by id (primary key) with the same margin: each new row marks
//!   its pair's slide bucket, and the windows over marked buckets are recomputed by range scans;
//! - a stream window that changed and does not match its batch side is recomputed too;
//! - the groups' offsets, for the windows not settled yet ([`crate::settle`]);
//! - `service_stats` by id and the dead letters not replayed, for the pipeline panel, every
//!   second (outside the snapshot, and with no lock on the state held while reading).
//!
//! A failed read marks the database down (pushed to the page), and the poller retries with backoff.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDateTime};
use common::{backoff::Backoff, window::WindowSpec};
use sqlx::MySqlConnection;
use tokio_util::sync::CancellationToken;

use super::{live::Live, pipeline, Event, Shared};
use crate::{
    accuracy::{Key, Status},
    batch::{self, Scope, REREAD_MARGIN as MARGIN},
    queries::{self, Snapshot, StreamRow},
    settle::{self, Settlement},
};
/// New raw rows read per tick.
const RAW_BATCH: i64 = 50_000;
/// Views per `windows` event.
const EVENT_CHUNK: usize = 2_000;

/// Ids read so far, with what was read within the margin.
#[derive(Debug, Default)]
struct IdCursor {
    seen: i64,
    recent: BTreeSet<i64>,
    /// (when, `seen` then): the floor to read again from is `seen` as of [`MARGIN`] ago.
    history: VecDeque<(Instant, i64)>,
    floor: i64,
}

impl IdCursor {
    fn start(seen: i64) -> Self {
        IdCursor {
            seen,
            floor: seen,
            ..Default::default()
        }
    }

    /// Where this tick reads from.
    fn from(&mut self, now: Instant) -> i64 {
        while let Some((t, s)) = self.history.front() {
            if now.duration_since(*t) < MARGIN {
                break;
            }
            self.floor = *s;
            self.history.pop_front();
        }
        // At most this many (a bulk load does not make every tick read it all again).
        self.floor = self.floor.max(self.seen - batch::REREAD_IDS);
        let floor = self.floor;
        self.recent = self.recent.split_off(&(floor + 1));
        floor
    }

    /// How many rows above `from` were read before (read again in this tick).
    fn reread(&self, from: i64) -> i64 {
        self.recent.range(from + 1..).count() as i64
    }

    /// Whether `id` is new (not read before), recording it.
    fn fresh(&mut self, id: i64) -> bool {
        self.seen = self.seen.max(id);
        self.recent.insert(id)
    }

    fn tick_done(&mut self, now: Instant) {
        self.history.push_back((now, self.seen));
    }
}

/// The poller's own state beside [`Shared`].
#[derive(Debug)]
struct Poller {
    shared: Arc<Shared>,
    spec: Option<WindowSpec>,
    /// `stream_agg` rows are read from this `updated_at` on (µs, the database's clock).
    stream_from_us: i64,
    raw: IdCursor,
    late: IdCursor,
    last_pipeline: Option<Instant>,
    /// The last read of the dead letters failed (said once).
    dead_letters_failed: bool,
    pending: Pending,
}

/// Read but not yet applied and pushed (kept across a failed tick).
#[derive(Debug, Default)]
struct Pending {
    stream: Vec<(Key, crate::accuracy::StreamWindow)>,
    /// Slide buckets whose windows need the batch side again.
    dirty: BTreeSet<Key>,
    /// Windows whose view changed, not yet pushed.
    changed: BTreeSet<Key>,
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let interval = shared.settings.poll_interval;
    let mut poller = Poller {
        shared: shared.clone(),
        spec: None,
        stream_from_us: 0,
        raw: IdCursor::default(),
        late: IdCursor::default(),
        last_pipeline: None,
        dead_letters_failed: false,
        pending: Pending::default(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match poller.tick().await {
            Ok(()) => {
                backoff.reset();
                poller.answered(&mut down).await;
            }
            Err(e) => {
                let error = format!("{e:#}");
                let delay = backoff.next_delay();
                tracing::warn!(error, retry_in = ?delay, "reading the tables failed");
                {
                    let mut health = poller.health();
                    health.up = false;
                    health.error = Some(error.clone());
                }
                {
                    let mut state = shared.state.write().await;
                    state.db.up = false;
                    state.db.error = Some(error);
                }
                down = true;
                poller.status().await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

impl Poller {
    fn health(&self) -> std::sync::MutexGuard<'_, super::Health> {
        self.shared.health()
    }

    /// A tick read the tables: healthy again (and said so when it had been down).
    async fn answered(&mut self, down: &mut bool) {
        let db_now_us = {
            let mut health = self.health();
            health.up = true;
            health.error = None;
            health.last_ok = Some(Instant::now());
            health.db_now_us()
        };
        let mut state = self.shared.state.write().await;
        state.db.last_ok_us = db_now_us;
        if *down {
            *down = false;
            state.db.up = true;
            state.db.error = None;
            tracing::info!("the database answers again");
            drop(state);
            self.status().await;
        }
    }

    fn send(&self, name: &'static str, data: String) {
        // No receiver (no page open) is fine.
        let _ = self.shared.events.send(Event { name, data });
    }

    /// Pushes the database status and what the dashboard waits for.
    async fn status(&self) {
        let state = self.shared.state.read().await;
        let data = serde_json::json!({ "db": state.db, "waiting": state.waiting }).to_string();
        drop(state);
        self.send("status", data);
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        let mut snap = Snapshot::begin(&self.shared.pool).await?;
        let db_now_us = queries::db_now_us(snap.conn()).await?;
        self.health().db_clock = Some((db_now_us, Instant::now()));
        if self.spec.is_none() {
            self.start(snap.conn(), db_now_us).await?;
        } else {
            self.changes(snap.conn(), db_now_us).await?;
        }
        snap.end().await?;
        self.push().await?;
        if self
            .last_pipeline
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_pipeline = Some(Instant::now());
            self.pipeline().await?;
        }
        Ok(())
    }

    async fn set_waiting(&self, waiting: String) {
        let mut state = self.shared.state.write().await;
        if state.waiting.as_deref() != Some(waiting.as_str()) {
            state.waiting = Some(waiting);
            drop(state);
            self.status().await;
        }
    }

    /// The window spec, then everything in scope read once (in the snapshot `conn`).
    async fn start(&mut self, conn: &mut MySqlConnection, db_now_us: i64) -> anyhow::Result<()> {
        let source = self.shared.settings.source.clone();
        let Some(spec) = source.spec(conn).await? else {
            let waiting = format!(
                "no window spec recorded for aggregator group {:?} yet: is the stream aggregator running with --group {:?}?",
                source.group, source.group
            );
            self.set_waiting(waiting).await;
            return Ok(());
        };
        self.set_waiting("computing the batch side".into()).await;
        let scope = source.scope();
        let (raw_max, late_max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM raw_coin_data), (SELECT MAX(id) FROM late_events)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let started = Instant::now();
        let batch = batch::compute(conn, spec, &source.group, &scope).await?;
        let stream = queries::stream(conn, &scope).await?;
        tracing::info!(
            windows = batch.windows.len(),
            raw_rows = batch.raw_rows,
            stream_windows = stream.len(),
            took = ?started.elapsed(),
            "both sides read"
        );
        let mut live = Live::new(spec, stream, batch.windows);
        let mut settlement = settle::read(conn, &source.raw_group, &source.group).await?;
        if settlement.aggregator_behind() {
            let candidates = live.failing(&settlement);
            settle::check_unread(conn, spec, &mut settlement, candidates).await?;
        }
        live.apply_settlement(settlement);
        self.raw = IdCursor::start(raw_max.unwrap_or(0));
        self.late = IdCursor::start(late_max.unwrap_or(0));
        self.stream_from_us = db_now_us - margin_us();
        self.spec = Some(spec);
        {
            let mut state = self.shared.state.write().await;
            state.accuracy = live.accuracy();
            state.live = Some(live);
            state.waiting = None;
            state.batch_seconds = batch.seconds;
            state.raw_rows = batch.raw_rows;
        }
        self.status().await;
        self.send("resync", "{}".into());
        Ok(())
    }

    /// One tick's changes, read in the snapshot `conn` and applied. What a tick has read is kept
    /// until it is applied and pushed: a tick that fails half-way (the database went away)
    /// leaves it for the next.
    async fn changes(&mut self, conn: &mut MySqlConnection, db_now_us: i64) -> anyhow::Result<()> {
        let Some(spec) = self.spec else {
            return Ok(());
        };
        let source = self.shared.settings.source.clone();
        let scope = source.scope();
        let now = Instant::now();
        let stream_rows = self.stream_changes(conn, &scope).await?;
        self.pending.stream.extend(stream_rows);
        let dirty = bucket_changes(conn, &mut self.raw, spec, now, None).await?;
        self.pending.dirty.extend(dirty);
        let group = Some(source.group.as_str());
        let dirty = bucket_changes(conn, &mut self.late, spec, now, group).await?;
        self.pending.dirty.extend(dirty);
        self.apply_stream(spec).await;
        let ranges = batch::dirty_ranges(spec, &scope, &self.pending.dirty);
        let mut recomputed = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let b = batch::compute(conn, spec, &source.group, range).await?;
            recomputed.push((range, b.windows));
        }
        self.pending.dirty.clear();
        let mut settlement = settle::read(conn, &source.raw_group, &source.group).await?;
        {
            let mut state = self.shared.state.write().await;
            if let Some(live) = state.live.as_mut() {
                for (range, windows) in recomputed {
                    self.pending
                        .changed
                        .extend(live.apply_batch(range, windows));
                }
            }
        }
        if settlement.aggregator_behind() {
            let candidates = {
                let state = self.shared.state.read().await;
                state.live.as_ref().map_or_else(Vec::new, |live| {
                    live.unread_candidates(&self.pending.changed, &settlement)
                })
            };
            settle::check_unread(conn, spec, &mut settlement, candidates).await?;
        }
        self.apply_settlement(settlement).await;
        self.stream_from_us = db_now_us - margin_us();
        Ok(())
    }

    /// Applies the stream rows read; a changed stream window that does not match is read again on
    /// the batch side.
    async fn apply_stream(&mut self, spec: WindowSpec) {
        let mut state = self.shared.state.write().await;
        let Some(live) = state.live.as_mut() else {
            return;
        };
        let changed = live.apply_stream(std::mem::take(&mut self.pending.stream));
        for k in &changed {
            if live.view(k).status != Status::Match {
                self.pending.dirty.insert((
                    k.0.clone(),
                    k.1.clone(),
                    k.2.div_euclid(spec.slide_us) + spec.windows_per_event() - 1,
                ));
            }
        }
        self.pending.changed.extend(changed);
    }

    async fn apply_settlement(&mut self, settlement: Settlement) {
        let mut state = self.shared.state.write().await;
        if let Some(live) = state.live.as_mut() {
            let changed = live.apply_settlement(settlement);
            self.pending.changed.extend(changed);
        }
    }

    /// Pushes the views of the windows that changed, and the verdict when it changed.
    async fn push(&mut self) -> anyhow::Result<()> {
        if self.pending.changed.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.state.write().await;
        let Some(live) = state.live.as_ref() else {
            return Ok(());
        };
        let changed = std::mem::take(&mut self.pending.changed);
        let views: Vec<_> = changed.iter().map(|k| live.view(k)).collect();
        let accuracy = live.accuracy();
        let summary_changed = state.accuracy != accuracy;
        state.accuracy = accuracy;
        let summary = serde_json::to_string(&state.accuracy)?;
        drop(state);
        for chunk in views.chunks(EVENT_CHUNK) {
            self.send("windows", serde_json::to_string(chunk)?);
        }
        if summary_changed {
            self.send("summary", summary);
        }
        Ok(())
    }

    /// `stream_agg` rows changed since the previous tick's snapshot less the margin, in scope.
    async fn stream_changes(
        &mut self,
        conn: &mut MySqlConnection,
        scope: &Scope,
    ) -> anyhow::Result<Vec<(Key, crate::accuracy::StreamWindow)>> {
        let from: NaiveDateTime = DateTime::from_timestamp_micros(self.stream_from_us)
            .unwrap_or_default()
            .naive_utc();
        let rows: Vec<StreamRow> = sqlx::query_as(&format!(
            "SELECT {} FROM stream_agg WHERE updated_at >= ?",
            queries::stream_columns()
        ))
        .bind(from)
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|r| scope.contains(&r.0, &r.1, r.2))
            .map(queries::stream_window)
            .collect())
    }

    /// The services' statistics and the dead letters, pushed as the panel. The state is locked
    /// only to take the cursor and to add what was read, never while reading.
    async fn pipeline(&mut self) -> anyhow::Result<()> {
        let cursor = self.shared.state.read().await.pipeline.cursor;
        let (rows, now_us) = pipeline::read(&self.shared.pool, cursor).await?;
        // Not fatal (a database whose dead_letters lacks the replay columns): said once.
        let dead = match pipeline::dead_letters(&self.shared.pool).await {
            Ok(d) => Some(d),
            Err(e) => {
                if !self.dead_letters_failed {
                    tracing::warn!(error = %format!("{e:#}"), "reading the dead letters failed: not shown");
                }
                None
            }
        };
        self.dead_letters_failed = dead.is_none();
        let mut state = self.shared.state.write().await;
        for r in rows {
            state.pipeline.add(r);
        }
        if let Some(dead) = dead {
            state.pipeline.dead_letters = dead;
        }
        let panel = state.pipeline.panel(now_us);
        let dead = state.pipeline.dead_letters.clone();
        drop(state);
        let data = serde_json::json!({ "now_us": now_us, "services": panel, "dead_letters": dead })
            .to_string();
        self.send("pipeline", data);
        Ok(())
    }
}

fn margin_us() -> i64 {
    i64::try_from(MARGIN.as_micros()).unwrap_or(i64::MAX)
}

/// Slide buckets of the rows new since the last tick: of `raw_coin_data`, or of `late_events` of
/// aggregator group `group`. No upper id bound (ids have gaps: every replayed duplicate and
/// rolled-back insert uses one up); the limit covers the rows read again in the margin and a batch
/// of new ones.
async fn bucket_changes(
    conn: &mut MySqlConnection,
    cursor: &mut IdCursor,
    spec: WindowSpec,
    now: Instant,
    group: Option<&str>,
) -> anyhow::Result<BTreeSet<Key>> {
    let from = cursor.from(now);
    let (table, condition) = match group {
        None => ("raw_coin_data", ""),
        Some(_) => ("late_events", " AND consumer_group = ?"),
    };
    let sql = format!(
        "SELECT id, asset_id_base, asset_id_quote, {} FROM {table} r \
         WHERE id > ?{condition} ORDER BY id LIMIT ?",
        batch::bucket_sql(spec),
    );
    let mut query = sqlx::query_as::<_, (i64, String, String, i64)>(&sql).bind(from);
    if let Some(group) = group {
        query = query.bind(group);
    }
    let rows = query
        .bind(cursor.reread(from) + RAW_BATCH)
        .fetch_all(conn)
        .await?;
    let mut dirty = BTreeSet::new();
    for (id, b, q, bucket) in rows {
        if cursor.fresh(id) {
            dirty.insert((b, q, bucket));
        }
    }
    cursor.tick_done(now);
    Ok(dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_cursor_reads_a_margin_again_and_reports_each_id_once() {
        let t0 = Instant::now();
        let mut c = IdCursor::start(100);
        assert_eq!(c.from(t0), 100);
        assert!(c.fresh(102) && !c.fresh(102));
        c.tick_done(t0);
        // Within the margin the floor stays: 101 commits late and is still found.
        assert_eq!(c.from(t0 + Duration::from_secs(1)), 100);
        assert!(c.fresh(101) && !c.fresh(102));
        c.tick_done(t0 + Duration::from_secs(1));
        // After the margin the floor moves up to what had been seen then.
        assert_eq!(c.from(t0 + MARGIN + Duration::from_secs(1)), 102);
        // A bulk load does not make every tick read it all again.
        assert!(c.fresh(1_000_000));
        c.tick_done(t0 + MARGIN + Duration::from_secs(2));
        assert_eq!(
            c.from(t0 + MARGIN + Duration::from_secs(3)),
            1_000_000 - batch::REREAD_IDS
        );
    }
}
