//! `kafka_offsets`: the next offset to read per (consumer group, topic, partition), the one record
//! of what a group has applied. Every service writes it in the transaction that applies the
//! messages before it, so it is exact after any crash; Kafka's own group offsets are only a hint
//! for where to resume fetching. Every read and write of the table is here.

use std::collections::{BTreeMap, HashMap};

use sqlx::{MySql, MySqlConnection, MySqlPool, Transaction};

/// The write protocol every consumer's write follows, in one transaction: lock the partitions'
/// stored offsets (`FOR UPDATE`: a concurrent writer of the same partitions waits), write what is
/// new (the caller, on [`OffsetTx::conn`]), store the next offsets, commit. So a write is applied
/// once whatever happened before it: a former owner's write, an attempt whose COMMIT reply was
/// lost. Rows a writer must lock before the offsets (the aggregator's ownership rows) are locked
/// on [`OffsetTx::conn`] before [`OffsetTx::lock`], always in that order.
#[derive(Debug)]
pub struct OffsetTx<'a> {
    tx: Transaction<'static, MySql>,
    store: &'a OffsetStore,
    stored: HashMap<i32, i64>,
}

impl<'a> OffsetTx<'a> {
    pub async fn begin(pool: &MySqlPool, store: &'a OffsetStore) -> Result<Self, sqlx::Error> {
        Ok(OffsetTx {
            tx: pool.begin().await?,
            store,
            stored: HashMap::new(),
        })
    }

    /// The transaction's connection, for the writer's own statements.
    pub fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.tx
    }

    /// Locks the stored offsets of `partitions` and returns them (absent: never stored).
    pub async fn lock(&mut self, partitions: &[i32]) -> Result<&HashMap<i32, i64>, sqlx::Error> {
        self.stored = self.store.lock(&mut self.tx, partitions).await?;
        Ok(&self.stored)
    }

    /// Whether message `offset` of `partition` is new to the group (at or beyond the stored
    /// offset locked by [`OffsetTx::lock`]).
    pub fn is_new(&self, partition: i32, offset: i64) -> bool {
        self.stored.get(&partition).is_none_or(|s| offset >= *s)
    }

    /// The next offset to store for `partition` after applying up to `next`: never behind what
    /// is stored.
    pub fn next_offset(&self, partition: i32, next: i64) -> i64 {
        self.stored.get(&partition).map_or(next, |s| next.max(*s))
    }

    /// Stores the next offsets and commits.
    pub async fn commit(mut self, next: &[(i32, i64)]) -> Result<(), sqlx::Error> {
        self.store.store(&mut self.tx, next).await?;
        self.tx.commit().await
    }

    /// Ends the transaction without writing.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// The stored offsets of one consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetStore {
    group: String,
    topic: String,
}

impl OffsetStore {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        OffsetStore {
            group: group.into(),
            topic: topic.into(),
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Next offset of every partition the group has stored (partitions never written are absent).
    pub async fn load(&self, pool: &MySqlPool) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM kafka_offsets WHERE consumer_group = ? AND topic = ?",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Locks the rows of `partitions` in the open transaction of `conn` (`FOR UPDATE`: a
    /// concurrent writer of the same partitions waits) and returns their offsets.
    pub async fn lock(
        &self,
        conn: &mut MySqlConnection,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, sqlx::Error> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders = vec!["?"; partitions.len()].join(",");
        let sql = format!(
            "SELECT kafka_partition, next_offset FROM kafka_offsets \
             WHERE consumer_group = ? AND topic = ? AND kafka_partition IN ({placeholders}) FOR UPDATE"
        );
        let mut q = sqlx::query_as::<_, (i32, i64)>(&sql)
            .bind(&self.group)
            .bind(&self.topic);
        for p in partitions {
            q = q.bind(*p);
        }
        Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
    }

    /// Stores next offsets in the open transaction of `conn`.
    pub async fn store(
        &self,
        conn: &mut MySqlConnection,
        offsets: &[(i32, i64)],
    ) -> Result<(), sqlx::Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let values = vec!["(?, ?, ?, ?, UTC_TIMESTAMP(6))"; offsets.len()].join(",");
        let sql = format!(
            "INSERT INTO kafka_offsets (consumer_group, topic, kafka_partition, next_offset, updated_at) VALUES {values} \
             ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = VALUES(updated_at)"
        );
        let mut q = sqlx::query(&sql);
        for (p, n) in offsets {
            q = q.bind(&self.group).bind(&self.topic).bind(*p).bind(*n);
        }
        q.execute(&mut *conn).await?;
        Ok(())
    }

    /// Moves partition `partition` back from `from` to `to` (reading a refilled log again);
    /// false when its offset was no longer `from` (another instance moved it meanwhile).
    pub async fn reset(
        &self,
        pool: &MySqlPool,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE kafka_offsets SET next_offset = ?, updated_at = UTC_TIMESTAMP(6) \
             WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND next_offset = ?",
        )
        .bind(to)
        .bind(&self.group)
        .bind(&self.topic)
        .bind(partition)
        .bind(from)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
