//! Writing a batch: one transaction per attempt (lock offsets, skip what they show applied, write
//! rows and dead letters, store offsets, commit), and what happens when an attempt fails.
//!
//! - A transient database error retries the same messages with backoff. The retry locks the
//!   offsets again, so an attempt that did commit (its COMMIT reply lost) is found applied and
//!   skipped, never written twice.
//! - A batch the database refuses for its data is split in halves, each written on its own (in
//!   order, so each partition's offsets only move forward), until the refused messages are single:
//!   each becomes a dead letter (reason `rejected`, with the database's error and the message
//!   whole, read again from the broker: the batch keeps only parsed rows) written with its offset.
//!   So a refused row costs about 2 log2(batch) transactions, and the same refusal is never
//!   retried as it was.
//! - A dead letter alone that is refused cannot be kept: the write fails and the service stops
//!   (exit 1) rather than skip it.

use std::{collections::BTreeMap, ops::Range, time::Instant};

use sqlx::Executor;

use super::{Content, Item, Meta, Sink, Statements, Writer};
use crate::{
    dead_letters::{self, DeadLetter, Reason, Refusal, Source},
    offsets::{OffsetStore, OffsetTx},
};
use common::retry::{classify, Failure, Retrier};

/// What a batch's transactions did.
#[derive(Debug, Default)]
pub struct Written {
    pub(super) rows: u64,
    pub(super) dead: u64,
    /// Messages whose rows the database refused (kept as dead letters).
    pub(super) rejected: u64,
    /// Messages the locked offsets showed applied already.
    pub(super) fenced: u64,
    pub(super) next_offsets: Vec<(i32, i64)>,
    pub(super) retries: u64,
    pub(super) db_seconds: f64,
}

impl Written {
    fn add(&mut self, w: Written) {
        self.rows += w.rows;
        self.dead += w.dead;
        self.fenced += w.fenced;
        for (p, n) in w.next_offsets {
            match self.next_offsets.iter_mut().find(|(q, _)| *q == p) {
                Some((_, m)) => *m = (*m).max(n),
                None => self.next_offsets.push((p, n)),
            }
        }
    }
}

impl<S: Sink> Writer<S> {
    /// Writes every message of `batch`: rows, or dead letters for the ones refused.
    pub(super) async fn write_all(&self, mut batch: Vec<Item<S::Row>>) -> anyhow::Result<Written> {
        let mut total = Written::default();
        let mut retrier = Retrier::new(Some(self.health.clone()));
        // Ranges still to write, the next one last.
        let mut todo: Vec<Range<usize>> = Vec::new();
        todo.push(0..batch.len());
        while let Some(range) = todo.pop() {
            let started = Instant::now();
            let result = self.attempt(&batch[range.clone()]).await;
            total.db_seconds += started.elapsed().as_secs_f64();
            let e = match result {
                Ok(w) => {
                    retrier.succeeded();
                    total.add(w);
                    continue;
                }
                Err(e) => e,
            };
            match classify(&e) {
                Failure::Transient => {
                    retrier
                        .wait("writing the batch (offsets not committed)", &e)
                        .await;
                    todo.push(range);
                }
                Failure::Rejected => {
                    retrier.failed(Failure::Rejected, "writing the batch", &e);
                    if range.len() > 1 {
                        let mid = range.start + range.len() / 2;
                        tracing::warn!(error = %e, messages = range.len(), "the database refused the batch's data: splitting it to find the refused rows");
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                    } else {
                        self.refused(&mut batch[range.start], &e, &mut retrier)
                            .await?;
                        total.rejected += 1;
                        todo.push(range);
                    }
                }
            }
        }
        total.retries = retrier.failures;
        Ok(total)
    }

    /// `item` alone was refused: it becomes a dead letter holding its message whole, read again
    /// from the broker (retried while the broker does not answer); an error when it already is
    /// a dead letter.
    async fn refused(
        &self,
        item: &mut Item<S::Row>,
        e: &sqlx::Error,
        retrier: &mut Retrier,
    ) -> anyhow::Result<()> {
        let Meta {
            partition, offset, ..
        } = item.meta;
        if matches!(item.content, Content::Dead(_)) {
            anyhow::bail!(
                "the database refused the dead letter of partition {partition} offset {offset}: {e} (the dead_letters table must accept any message; check its columns and max_allowed_packet)"
            );
        }
        let message = loop {
            match self.fetcher.fetch(partition, offset).await {
                Ok(m) => break m,
                Err(fetch) => {
                    retrier
                        .wait(
                            "reading a refused row's message again from the broker",
                            &fetch,
                        )
                        .await
                }
            }
        };
        let letter = DeadLetter::found(
            Source {
                topic: self.store.topic(),
                partition,
                offset,
                key: message.key.as_deref(),
                payload: &message.payload,
                published_ms: message.published_ms.or(item.meta.published_ms),
            },
            Refusal::new(
                Reason::Rejected,
                format!("the database refused the row: {e}"),
            ),
        );
        item.content = Content::Dead(letter);
        Ok(())
    }

    /// One transaction: lock the partitions' offsets, skip what they show applied, write rows
    /// and dead letters, store the new offsets, commit.
    async fn attempt(&self, batch: &[Item<S::Row>]) -> Result<Written, sqlx::Error> {
        let store: &OffsetStore = &self.store;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for i in batch {
            let n = next.entry(i.meta.partition).or_insert(i.meta.offset + 1);
            *n = (*n).max(i.meta.offset + 1);
        }
        let mut tx = OffsetTx::begin(&self.pool, store).await?;
        let partitions: Vec<i32> = next.keys().copied().collect();
        tx.lock(&partitions).await?;
        let new: Vec<&Item<S::Row>> = batch
            .iter()
            .filter(|i| tx.is_new(i.meta.partition, i.meta.offset))
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
            self.sink.statements(&rows)
        };
        execute_all(tx.conn(), &statements).await?;
        dead_letters::insert(tx.conn(), self.service, store.group(), store.topic(), &dead).await?;
        let next_offsets: Vec<(i32, i64)> = next
            .into_iter()
            .map(|(p, n)| (p, tx.next_offset(p, n)))
            .collect();
        tx.commit(&next_offsets).await?;
        dead_letters::count(&dead);
        Ok(Written {
            rows: statements.rows,
            dead: dead.len() as u64,
            fenced: (batch.len() - new.len()) as u64,
            next_offsets,
            ..Written::default()
        })
    }
}

/// Runs `sql` statements for a replayed letter; shared with [`super::replay`].
pub(super) async fn execute_all(
    conn: &mut sqlx::MySqlConnection,
    statements: &Statements,
) -> Result<(), sqlx::Error> {
    for sql in &statements.sql {
        conn.execute(sqlx::raw_sql(sql)).await?;
    }
    Ok(())
}
