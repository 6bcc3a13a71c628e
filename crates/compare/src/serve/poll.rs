//! The poller: reads what changed since the last tick and pushes it, for every window spec shown.
//! Each tick's reads are one consistent snapshot ([`Snapshot`]), so the stream rows, raw rows,
//! late events and the consumers' offsets it sees are of one moment.
//!
//! - the group's specs (`stream_agg_specs`): a spec recorded later (the aggregator restarted with
//!   more) is read whole and shown from then on;
//! - `stream_agg` by `updated_at` (its index), from the database's clock at the previous tick's
//!   snapshot less a margin, so that a transaction that committed after a later one is not
//!   missed (and a row stamped ahead of the clock hides nothing); rows that did not change are
//!   dropped by [`Live`];
//! - `raw_coin_data` and `late_events` by id (primary key) with the same margin: each new row marks
//!   its pair's slide bucket (a raw row in every spec, a late event in its own), and the windows
//!   over marked buckets are recomputed by range scans (`changes`);
//! - a stream window that changed and does not match its batch side is recomputed too;
//! - the groups' offsets and each spec's watermark, for the windows not settled yet
//!   ([`crate::settle`]);
//! - `service_stats` by id and the dead letters not replayed, for the pipeline panel, every
//!   second (outside the snapshot, and with no lock on the state held while reading).
//!
//! A failed read marks the database down (pushed to the page), and the poller retries with backoff.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{backoff::Backoff, window::WindowSpec};
use serde_json::json;
use sqlx::MySqlConnection;
use tokio_util::sync::CancellationToken;

use super::{
    changes::{self, Dirty},
    cursor::IdCursor,
    live::Live,
    pipeline, Event, Resolution, Shared,
};
use crate::{
    accuracy::{Key, Status, StreamWindow},
    batch::{self, REREAD_MARGIN as MARGIN},
    queries::{self, RecordedSpec, Snapshot},
    settle,
};

/// Views per `windows` event.
const EVENT_CHUNK: usize = 2_000;

/// The poller's own state beside [`Shared`].
#[derive(Debug)]
struct Poller {
    shared: Arc<Shared>,
    /// The specs shown, as the group recorded them (their watermarks for the settlement).
    specs: BTreeMap<WindowSpec, RecordedSpec>,
    /// `stream_agg` rows are read from this `updated_at` on (µs, the database's clock); `None`
    /// until the first spec is shown.
    stream_from_us: Option<i64>,
    raw: IdCursor,
    late: IdCursor,
    last_pipeline: Option<Instant>,
    /// The last read of the dead letters failed (said once).
    dead_letters_failed: bool,
    pending: BTreeMap<WindowSpec, Pending>,
}

/// Read but not yet applied and pushed, per spec (kept across a failed tick).
#[derive(Debug, Default)]
struct Pending {
    stream: Vec<(Key, StreamWindow)>,
    /// Windows whose view changed, not yet pushed.
    changed: BTreeSet<Key>,
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let interval = shared.settings.poll_interval;
    let mut poller = Poller {
        shared: shared.clone(),
        specs: BTreeMap::new(),
        stream_from_us: None,
        raw: IdCursor::default(),
        late: IdCursor::default(),
        last_pipeline: None,
        dead_letters_failed: false,
        pending: BTreeMap::new(),
    };
    // Slide buckets marked and not yet recomputed (kept across a failed tick).
    let mut dirty = Dirty::new();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match poller.tick(&mut dirty).await {
            Ok(()) => {
                backoff.reset();
                poller.answered(&mut down).await;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                poller.failed(format!("{e:#}"), delay).await;
                down = true;
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

    /// A tick failed: the database is down (said on the page), retried after `delay`.
    async fn failed(&mut self, error: String, delay: Duration) {
        tracing::warn!(error, retry_in = ?delay, "reading the tables failed");
        {
            let mut health = self.health();
            health.up = false;
            health.error = Some(error.clone());
        }
        {
            let mut state = self.shared.state.write().await;
            state.db.up = false;
            state.db.error = Some(error);
        }
        self.status().await;
    }

    fn send(&self, name: &'static str, data: String) {
        // No receiver (no page open) is fine.
        let _ = self.shared.events.send(Event { name, data });
    }

    /// Pushes the database status and what the dashboard waits for.
    async fn status(&self) {
        let state = self.shared.state.read().await;
        let data = json!({ "db": state.db, "waiting": state.waiting }).to_string();
        drop(state);
        self.send("status", data);
    }

    async fn tick(&mut self, dirty: &mut Dirty) -> anyhow::Result<()> {
        let mut snap = Snapshot::begin(&self.shared.pool).await?;
        let db_now_us = queries::db_now_us(snap.conn()).await?;
        self.health().db_clock = Some((db_now_us, Instant::now()));
        let new = self.new_specs(snap.conn()).await?;
        if self.stream_from_us.is_some() {
            self.changes(snap.conn(), db_now_us, dirty).await?;
        } else if !new.is_empty() {
            self.follow_from(snap.conn(), db_now_us).await?;
        }
        for recorded in &new {
            self.start(snap.conn(), *recorded).await?;
        }
        snap.end().await?;
        if !new.is_empty() {
            self.shared.state.write().await.waiting = None;
            self.status().await;
            self.send("resync", "{}".into());
        }
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

    /// The specs to show that are not shown yet (in the snapshot `conn`). Until there is one, the
    /// page says what it waits for.
    async fn new_specs(&mut self, conn: &mut MySqlConnection) -> anyhow::Result<Vec<RecordedSpec>> {
        let source = &self.shared.settings.source;
        let recorded = queries::recorded_specs(conn, &source.group).await?;
        let chosen = match source.choose(&recorded) {
            Ok(c) => c,
            Err(_) if !self.specs.is_empty() => return Ok(Vec::new()),
            Err(e) if recorded.is_empty() => {
                let waiting = format!(
                    "no window spec recorded for aggregator group {:?} yet: is the stream aggregator running with --group {:?}?",
                    source.group, source.group
                );
                tracing::debug!(error = %e, "waiting");
                self.set_waiting(waiting).await;
                return Ok(Vec::new());
            }
            Err(e) => {
                self.set_waiting(e.to_string()).await;
                return Ok(Vec::new());
            }
        };
        let new: Vec<RecordedSpec> = chosen
            .into_iter()
            .filter(|r| !self.specs.contains_key(&r.spec))
            .collect();
        if !new.is_empty() && self.specs.is_empty() {
            self.set_waiting("computing the batch side".into()).await;
        }
        Ok(new)
    }

    /// Where the cursors start, before the first spec is read whole in the same snapshot.
    async fn follow_from(
        &mut self,
        conn: &mut MySqlConnection,
        db_now_us: i64,
    ) -> anyhow::Result<()> {
        let (raw_max, late_max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM raw_coin_data), (SELECT MAX(id) FROM late_events)",
        )
        .fetch_one(conn)
        .await?;
        self.raw = IdCursor::start(raw_max.unwrap_or(0));
        self.late = IdCursor::start(late_max.unwrap_or(0));
        self.stream_from_us = Some(db_now_us - margin_us());
        Ok(())
    }

    /// One spec read whole (in the snapshot `conn`) and shown from now on.
    async fn start(
        &mut self,
        conn: &mut MySqlConnection,
        recorded: RecordedSpec,
    ) -> anyhow::Result<()> {
        let source = self.shared.settings.source.clone();
        let (spec, scope) = (recorded.spec, source.scope());
        let started = Instant::now();
        let batch = batch::compute(conn, spec, &source.group, &scope).await?;
        let stream = queries::stream(conn, &source.group, spec, &scope).await?;
        tracing::info!(
            window = %spec,
            windows = batch.windows.len(),
            raw_rows = batch.raw_rows,
            stream_windows = stream.len(),
            took = ?started.elapsed(),
            "both sides read"
        );
        let mut live = Live::new(spec, stream, batch.windows);
        let mut settlement = settle::read(conn, &source.raw_group, &source.group, recorded).await?;
        if settlement.aggregator_behind() {
            let candidates = live.failing(&settlement);
            settle::check_unread(conn, spec, &mut settlement, candidates).await?;
        }
        live.apply_settlement(settlement);
        let resolution = Resolution {
            accuracy: live.accuracy(),
            live,
            batch_seconds: batch.seconds,
            raw_rows: batch.raw_rows,
        };
        self.shared
            .state
            .write()
            .await
            .specs
            .insert(spec, resolution);
        self.specs.insert(spec, recorded);
        Ok(())
    }

    /// One tick's changes, read in the snapshot `conn` and applied to every spec shown. What a
    /// tick has read is kept until it is applied and pushed: a tick that fails half-way (the
    /// database went away) leaves it for the next.
    async fn changes(
        &mut self,
        conn: &mut MySqlConnection,
        db_now_us: i64,
        dirty: &mut Dirty,
    ) -> anyhow::Result<()> {
        let source = self.shared.settings.source.clone();
        let now = Instant::now();
        let shown: BTreeSet<WindowSpec> = self.specs.keys().copied().collect();
        let from_us = self.stream_from_us.unwrap_or(db_now_us - margin_us());
        let rows =
            changes::stream_rows(conn, &source.group, &shown, from_us, &source.scope()).await?;
        for (spec, key, w) in rows {
            self.pending.entry(spec).or_default().stream.push((key, w));
        }
        for spec in &shown {
            dirty.entry(*spec).or_default();
        }
        changes::raw_buckets(conn, &mut self.raw, now, dirty).await?;
        changes::late_buckets(conn, &mut self.late, now, &source.group, dirty).await?;
        for recorded in self.specs.values().copied().collect::<Vec<_>>() {
            let marked = dirty.entry(recorded.spec).or_default();
            self.spec_changes(conn, recorded, marked).await?;
        }
        self.stream_from_us = Some(db_now_us - margin_us());
        Ok(())
    }

    /// One spec's changes: its stream rows applied, the windows over its marked buckets
    /// recomputed, its settlement read again (in the snapshot `conn`).
    async fn spec_changes(
        &mut self,
        conn: &mut MySqlConnection,
        recorded: RecordedSpec,
        marked: &mut BTreeSet<Key>,
    ) -> anyhow::Result<()> {
        let source = self.shared.settings.source.clone();
        let spec = recorded.spec;
        self.apply_stream(spec, marked).await;
        let ranges = batch::dirty_ranges(spec, &source.scope(), marked);
        let mut recomputed = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let b = batch::compute(conn, spec, &source.group, range).await?;
            recomputed.push((range, b.windows));
        }
        marked.clear();
        let mut settlement = settle::read(conn, &source.raw_group, &source.group, recorded).await?;
        let pending = self.pending.entry(spec).or_default();
        let mut state = self.shared.state.write().await;
        let Some(r) = state.specs.get_mut(&spec) else {
            return Ok(());
        };
        for (range, windows) in recomputed {
            pending.changed.extend(r.live.apply_batch(range, windows));
        }
        let candidates = settlement
            .aggregator_behind()
            .then(|| r.live.unread_candidates(&pending.changed, &settlement));
        drop(state);
        if let Some(candidates) = candidates {
            settle::check_unread(conn, spec, &mut settlement, candidates).await?;
        }
        let mut state = self.shared.state.write().await;
        if let Some(r) = state.specs.get_mut(&spec) {
            let pending = self.pending.entry(spec).or_default();
            pending.changed.extend(r.live.apply_settlement(settlement));
        }
        Ok(())
    }

    /// Applies one spec's stream rows read; a changed stream window that does not match is
    /// marked for the batch side again.
    async fn apply_stream(&mut self, spec: WindowSpec, marked: &mut BTreeSet<Key>) {
        let pending = self.pending.entry(spec).or_default();
        let mut state = self.shared.state.write().await;
        let Some(r) = state.specs.get_mut(&spec) else {
            return;
        };
        let changed = r.live.apply_stream(std::mem::take(&mut pending.stream));
        for k in &changed {
            if r.live.view(k).status != Status::Match {
                marked.insert((
                    k.0.clone(),
                    k.1.clone(),
                    k.2.div_euclid(spec.slide_us) + spec.windows_per_event() - 1,
                ));
            }
        }
        pending.changed.extend(changed);
    }

    /// Pushes the views of the windows that changed, per spec, and each verdict that changed.
    async fn push(&mut self) -> anyhow::Result<()> {
        for (spec, pending) in &mut self.pending {
            if pending.changed.is_empty() {
                continue;
            }
            let mut state = self.shared.state.write().await;
            let Some(r) = state.specs.get_mut(spec) else {
                continue;
            };
            let changed = std::mem::take(&mut pending.changed);
            let views: Vec<_> = changed.iter().map(|k| r.live.view(k)).collect();
            let accuracy = r.live.accuracy();
            let summary_changed = r.accuracy != accuracy;
            r.accuracy = accuracy;
            let summary = json!({ "window": spec.label(), "accuracy": r.accuracy }).to_string();
            drop(state);
            let window = spec.label();
            for chunk in views.chunks(EVENT_CHUNK) {
                let data = json!({ "window": window, "views": chunk }).to_string();
                let _ = self.shared.events.send(Event {
                    name: "windows",
                    data,
                });
            }
            if summary_changed {
                let _ = self.shared.events.send(Event {
                    name: "summary",
                    data: summary,
                });
            }
        }
        Ok(())
    }

    /// The services' statistics and the dead letters, pushed as the panel. The state is locked
    /// only to take the cursor and to add what was read, never while reading.
    async fn pipeline(&mut self) -> anyhow::Result<()> {
        let cursor = self.shared.state.read().await.pipeline.cursor;
        let run = self.shared.settings.source.run();
        let (rows, now_us) = pipeline::read(&self.shared.pool, cursor, &run).await?;
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
        let panel = state.pipeline.panel(now_us, &run);
        let dead = state.pipeline.dead_letters.clone();
        drop(state);
        let data = json!({ "now_us": now_us, "services": panel, "dead_letters": dead }).to_string();
        self.send("pipeline", data);
        Ok(())
    }
}

fn margin_us() -> i64 {
    i64::try_from(MARGIN.as_micros()).unwrap_or(i64::MAX)
}
